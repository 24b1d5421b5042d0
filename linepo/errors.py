"""The one exception type that the command line turns into a one-line message and exit 2."""


class InputError(ValueError):
    """Bad input from a user: a config key, a file, an argument.

    The message names the offending item first ("--matrix: ...", "config key
    runs.linepo.eta: ...", "prompts.jsonl: ...") so that one line is enough to fix it.
    """

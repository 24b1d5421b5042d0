"""The ``linepo`` command line: one sub-command per module in :mod:`linepo.commands`.

    linepo --help
    linepo game --algorithm linepo --json

Each command module defines ``register(subparsers)``, which adds its parser and sets
``func``. Command modules import heavy libraries (torch, transformers) inside ``func``
only, so that ``linepo game`` and the model-free workflow stages start fast.

Help texts come from docstrings, written in RST for the API docs; :func:`plain_text` turns
their markup into plain text before ``--help`` shows them (:func:`finish_parser`), every
sub-command gets a description (its one-line help when it gives none), and every command
that takes ``--judge-config`` lists the judge config keys in its epilog
(:func:`linepo.commands.judge.judge_config_keys`, built from the judges' settings only
when the help is printed).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
import sys
import textwrap

from linepo import commands
from linepo.errors import InputError, disk_full_message


#: width of the texts pre-wrapped for RawDescriptionHelpFormatter
HELP_WIDTH = 79

# :role:`target`, :py:role:`target`, :role:`~pkg.name` (shown as "name"), :role:`title <target>`
_ROLE = re.compile(r":(?:[a-z]+:)?[a-z]+:`(?P<text>[^`<]*?)\s*(?:<[^`>]*>)?`")
_LITERAL = re.compile(r"``(?P<text>[^`]+?)``")


def plain_text(text):
    """The RST markup of a docstring as plain text (None stays None).

    A role (mod, func, class, meth, data, ... with or without a domain) keeps its target:
    a "~" target keeps its last name and a relative one (".base") loses its dot, as Sphinx
    shows them; an explicit title ("the loss <a.loss>") is kept alone. Double-backquoted
    literals keep their text.
    """
    if not isinstance(text, str):
        return text

    def role(match):
        target = match.group("text")
        if target.startswith("~"):
            target = target[1:].rsplit(".", 1)[-1]
        return target.lstrip(".")

    return _LITERAL.sub(lambda m: m.group("text"), _ROLE.sub(role, text))


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a single line (no usage block) and exit 2.

    Its ``epilog`` may be a function returning the text: it is called when the help is
    formatted, so that building the parser stays cheap.
    """

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")

    def format_help(self) -> str:
        if callable(self.epilog):
            self.epilog = self.epilog()
        return super().format_help()


def finish_parser(parser: argparse.ArgumentParser) -> None:
    """Make ``parser`` and its sub-commands' help plain text, recursively.

    RST markup is removed from descriptions, epilogs, group texts and argument helps; a
    sub-command without a description gets ``"<prog>: <its help>."``; a command with a
    ``--judge-config`` option and no epilog gets the judge config keys as its epilog,
    shown as written (RawDescriptionHelpFormatter).
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for choice in action._choices_actions:
                choice.help = plain_text(choice.help)
            for name, sub in action.choices.items():
                if not sub.description and helps.get(name):
                    sub.description = f"{sub.prog}: {plain_text(helps[name]).rstrip('.')}."
                finish_parser(sub)
        elif isinstance(action.help, str):
            action.help = plain_text(action.help)
    for group in parser._action_groups:
        group.title, group.description = plain_text(group.title), plain_text(group.description)
    parser.description = plain_text(parser.description)
    if not callable(parser.epilog):
        parser.epilog = plain_text(parser.epilog)
    if any("--judge-config" in action.option_strings for action in parser._actions):
        if parser.epilog is None:
            from linepo.commands.judge import judge_config_keys

            parser.epilog = judge_config_keys
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        if parser.description and "\n" not in parser.description:  # no longer wrapped by argparse
            parser.description = textwrap.fill(parser.description, HELP_WIDTH)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="linepo", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=OneLineArgumentParser)
    for module_info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{module_info.name}")
        module.register(subparsers)
    finish_parser(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the console command: a local workflow's warm-job server may run it (linepo.warm)
        from linepo.warm.client import run_warm

        code = run_warm(sys.argv[1:])
        if code is not None:
            return code
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except InputError as err:
        print(f"linepo {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        full = disk_full_message(err)  # a full disk is one line, not a traceback
        if full is None:
            raise
        print(f"linepo {args.command}: error: {full}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())

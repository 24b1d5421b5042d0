"""The one exception type that the command line turns into a one-line message and exit 2."""


class InputError(ValueError):
    """Bad input from a user: a config key, a file, an argument.

    The message names the offending item first ("--matrix: ...", "config key
    runs.linepo.eta: ...", "prompts.jsonl: ...") so that one line is enough to fix it.
    """


#: errno values of a full disk or an exhausted quota
_DISK_FULL = ("ENOSPC", "EDQUOT")
#: how libraries that wrap the OSError (safetensors' Rust writer, torch's zip writer) spell it
_DISK_FULL_TEXT = ("no space left on device", "os error 28", "storagefull", "disk quota exceeded")


def disk_full_message(err: BaseException) -> str | None:
    """One line for an error caused by a full disk (ENOSPC, EDQUOT), anywhere in its chain; else None.

    A job that fails on a full disk is not a bug to trace back: say which file could not be
    written. The atomic writers (temp file or folder + rename) leave nothing half-written.
    """
    import errno

    codes = {getattr(errno, name) for name in _DISK_FULL if hasattr(errno, name)}
    seen, current = set(), err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in codes:
            where = f"while writing {current.filename}" if current.filename else f"({current.strerror or current})"
            return f"no space left on device {where}; free some space and rerun"
        text = str(current).lower()
        if any(phrase in text for phrase in _DISK_FULL_TEXT):
            first = str(current).strip().splitlines()[0]
            return f"no space left on device ({type(current).__name__}: {first}); free some space and rerun"
        current = current.__cause__ or current.__context__
    return None

"""Where a model, tokenizer or data set comes from: a local path, or a Hugging Face hub id.

One rule for every loader (policies, judges, tokenizers, prompt sets, config checks): text
that starts with ".", "/" or "~" (or a Windows drive), holds more than one "/", or is not a
legal hub id is a *local path*; "name" or "owner/name" in hub characters is a *hub id*
unless a local path of that name exists. So a mistyped path fails as "not found" instead of
becoming a hub lookup. With ``HF_HUB_OFFLINE=1`` a hub id must already be in the local cache.
A JSON argument (``--spec``, ``--pairs``) is inline JSON when it starts with "{" or "[", else a file.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from linepo.errors import InputError

#: The dtypes a policy or judge can be loaded in ("auto": the checkpoint's own).
DTYPES = ("auto", "float32", "bfloat16", "float16")

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_PATH_START = re.compile(r"^(\.|/|~|[A-Za-z]:[\\/])")


def json_object_argument(text: str, option: str) -> tuple[dict, str]:
    """``(object, source)`` of a JSON-object argument: inline JSON, or the path of a JSON file.

    ``source`` names it in later errors ("--spec" or "--spec FILE"). Raises InputError naming
    ``option`` for an unreadable file, text that is not JSON, or JSON that is not an object.
    """
    source = option
    if not text.lstrip().startswith(("{", "[")):
        try:
            text, source = Path(text).read_text(encoding="utf-8"), f"{option} {text}"
        except OSError as err:
            raise InputError(f"{option} {text}: neither inline JSON nor a readable file ({err.strerror})") from None
        except UnicodeDecodeError:
            raise InputError(f"{option} {text}: not UTF-8 text; save it as UTF-8") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{source}: not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise InputError(f"{source}: must be a JSON object")
    return value, source


def looks_local(text: str) -> bool:
    """Whether ``text`` can only mean a local path (see the module doc)."""
    text = str(text)
    return (bool(_PATH_START.match(text)) or text.count("/") > 1 or (os.sep != "/" and os.sep in text)
            or not _HUB_ID.match(text))


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def in_hub_cache(repo_id: str, filenames) -> bool:
    """Whether any of ``filenames`` of hub repository ``repo_id`` is in the local cache."""
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo_id, name), str) for name in filenames)


def resolve_model(path_or_name, *, what: str = "policy", needs=("config.json",)) -> str:
    """The local folder or hub id to load a model (or tokenizer) from, after the checks that need no loading.

    Args:
        what: names the thing in messages ("policy", "tokenizer", "judge model").
        needs: files a local folder must hold (any one of them); the hub cache is asked for
            the same files when offline.

    Raises:
        InputError: a path that does not exist and cannot be a hub id, a local file where a
            folder is meant, a folder without ``needs``, or (with HF_HUB_OFFLINE=1) a hub id
            that is not in the cache.
    """
    text = str(path_or_name)
    local = Path(text).expanduser()
    if local.exists():
        if not local.is_dir():
            raise InputError(f"{text}: not a folder (a {what} is a folder)")
        if needs and not any((local / name).exists() for name in needs):
            raise InputError(f"{text}: no {' or '.join(needs)}, not a saved {what} folder")
        return str(local)
    if looks_local(text):
        raise InputError(f"{text}: {what} folder not found")
    if offline() and not in_hub_cache(text, needs or ("config.json",)):
        raise InputError(f"{text}: not a local folder, and not in the Hugging Face cache (HF_HUB_OFFLINE=1)")
    return text

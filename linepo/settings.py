"""Typed settings: one dataclass field per setting, with its default, its one-line doc and its range.

Every stage's settings are a dataclass of :func:`setting` fields (CleanRL's ``Args`` style):
the command-line flags (:func:`add_arguments`), the checks of a mapping from a config or a
``--config-json`` (:func:`from_mapping`) and the help texts are derived from it, and the
config schema's defaults are tested equal to it (tests/test_settings.py). So a setting is
defined once.

    @dataclass(frozen=True)
    class SamplerSettings:
        n: int = setting(5, "samples per prompt", low=1)

    parser.add_argument_group(...); add_arguments(parser, SamplerSettings)
    settings = SamplerSettings(**given(args, SamplerSettings))
    settings = from_mapping(SamplerSettings, {"n": 4}, source="--config-json")
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing

from linepo.errors import InputError


def setting(default, doc: str, *, low=None, high=None, low_open: bool = False, high_open: bool = False,
            choices=None, flag: bool = True, nullable: bool = False):
    """A dataclass field with its doc and range (``low ≤ x ≤ high``; ``low_open``: ``low < x``).

    ``flag=False`` keeps it off the command line (settings that only configs or the API set).
    """
    metadata = {"doc": doc, "low": low, "high": high, "low_open": low_open, "high_open": high_open,
                "choices": tuple(choices) if choices is not None else None, "flag": flag, "nullable": nullable}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if "doc" in f.metadata]


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _kind(cls, field) -> type:
    """The base type of a field: bool, int, float, str, dict or list (Optional stripped)."""
    hints = typing.get_type_hints(cls)
    hint = hints[field.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if args and typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        hint = args[0]
    origin = typing.get_origin(hint) or hint
    return origin if origin in (bool, int, float, str, dict, list) else str


def check_value(cls, field, value, where: str):
    """``value`` for ``field`` after checking its type and range; raises InputError naming ``where``."""
    meta, kind = field.metadata, _kind(cls, field)
    if value is None:
        if meta["nullable"] or field.default is None:
            return None
        raise InputError(f"{where}: must be set, got null")
    if kind is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if not isinstance(value, bool):
            raise InputError(f"{where}: must be true or false, got {value!r}")
        return value
    if kind in (int, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is int and ok and int(value) != value:
            ok = False
        if not ok or not math.isfinite(value):
            raise InputError(f"{where}: must be {'an integer' if kind is int else 'a finite number'}, got {value!r}")
        value = int(value) if kind is int else value
        low, high = meta["low"], meta["high"]
        if low is not None and (value <= low if meta["low_open"] else value < low):
            raise InputError(f"{where}: must be {'>' if meta['low_open'] else '>='} {low}, got {value}")
        if high is not None and (value >= high if meta["high_open"] else value > high):
            raise InputError(f"{where}: must be {'<' if meta['high_open'] else '<='} {high}, got {value}")
    elif kind is str:
        if not isinstance(value, str):
            raise InputError(f"{where}: must be a string, got {value!r}")
    elif kind is dict and not isinstance(value, dict):
        raise InputError(f"{where}: must be a mapping, got {value!r}")
    elif kind is list and not isinstance(value, list):
        raise InputError(f"{where}: must be a list, got {value!r}")
    if meta["choices"] is not None and value not in meta["choices"]:
        raise InputError(f"{where}: must be one of {', '.join(map(str, meta['choices']))}, got {value!r}")
    return value


def from_mapping(cls, values: dict, *, source: str, base=None, key_format: str = "{source} key {key}"):
    """``cls`` from ``values`` (unknown keys are an error), every value checked; on top of ``base``.

    ``key_format`` names a bad key in messages: ``{source}``, ``{key}`` and ``{flag}`` (its
    command-line flag) are filled in.

    Raises:
        InputError: "<source> key <k>: <problem>" for an unknown key or a bad value.
    """
    if not isinstance(values, dict):
        raise InputError(f"{source}: must be a mapping of settings, got {values!r}")
    known = {f.name: f for f in fields(cls)}
    changes = {}
    for key, value in values.items():
        where = key_format.format(source=source, key=key, flag=flag_name(str(key)))
        if key not in known:
            raise InputError(f"{where}: unknown setting; known: {', '.join(sorted(known))}")
        changes[key] = check_value(cls, known[key], value, where)
    return dataclasses.replace(base, **changes) if base is not None else cls(**changes)


def fraction(text: str) -> float:
    """An argparse type: a number in [0, 1] (a share, a failure limit)."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}")
    return value


def json_mapping(text: str, option: str = "--config-json") -> dict:
    """A JSON object given on the command line (``--config-json``); raises InputError naming ``option``."""
    import json

    try:
        values = json.loads(text)
    except ValueError as err:
        raise InputError(f"{option}: not valid JSON ({err})") from err
    if not isinstance(values, dict):
        raise InputError(f"{option}: must be a JSON object of settings")
    return values


def check(instance) -> None:
    """Check every field of a settings instance (as flags name them); raises InputError."""
    for field in fields(type(instance)):
        check_value(type(instance), field, getattr(instance, field.name), flag_name(field.name))


def add_arguments(parser, cls, *, only=None, skip=()) -> None:
    """One ``--flag`` per field of ``cls`` (default None: only given flags override other sources)."""
    for field in fields(cls):
        if not field.metadata["flag"] or field.name in skip or (only is not None and field.name not in only):
            continue
        kind, meta = _kind(cls, field), field.metadata
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        help_text = f"{meta['doc']} (default {default})"
        if kind is bool:
            parser.add_argument(flag_name(field.name), action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        elif kind in (dict, list):
            continue  # structured settings come through --config-json
        else:
            parser.add_argument(flag_name(field.name), type=kind, default=None, metavar=field.name.upper(),
                                choices=meta["choices"], help=help_text)


def given(args, cls) -> dict:
    """The fields of ``cls`` that were given as flags in parsed ``args``."""
    return {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}


def defaults(cls) -> dict:
    """Every field's default: what the config schema's defaults are tested against."""
    out = {}
    for field in fields(cls):
        out[field.name] = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    return out


def docs(cls) -> dict[str, str]:
    return {f.name: f.metadata["doc"] for f in fields(cls)}


def value_range(low=None, high=None, *, low_open: bool = False, high_open: bool = False) -> str:
    """A range as help shows it: ``≥ 1``, ``> 0``, ``≤ 1`` or ``in [0, 1)``; "" when unbounded."""
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '≥'} {low}"
    if high is not None:
        return f"{'<' if high_open else '≤'} {high}"
    return ""


def shown_default(value, limit: int = 40) -> str:
    """A default as a config would spell it (JSON), a long one cut short with its length."""
    import json

    text = json.dumps(value, ensure_ascii=False)
    if len(text) <= limit:
        return text
    return f"{text[:limit - 8]}…{text[0] if isinstance(value, str) else ''} ({len(value)} " \
           f"{'characters' if isinstance(value, str) else 'items'})"


def describe(cls) -> list[tuple[str, str, str]]:
    """``(name, kind, doc)`` of every field, as help lists config keys.

    ``kind`` is the field's type, its range or choices and its default, e.g.
    ``int ≥ 1; default 8`` or ``str: first_word | length; default "first_word"``.
    """
    out = []
    for field in fields(cls):
        meta = field.metadata
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
        limits = value_range(meta["low"], meta["high"], low_open=meta["low_open"], high_open=meta["high_open"])
        if limits:
            kind += f" {limits}"
        if meta["choices"] is not None:
            kind += ": " + " | ".join(map(str, meta["choices"]))
        out.append((field.name, f"{kind}; default {shown_default(default)}", meta["doc"]))
    return out

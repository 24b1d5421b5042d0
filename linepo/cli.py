"""The ``linepo`` command line: one sub-command per module in :mod:`linepo.commands`.

    linepo --help
    linepo game --algorithm linepo --json

Each command module defines ``register(subparsers)``, which adds its parser and sets
``func``. Command modules import heavy libraries (torch, transformers) inside ``func``
only, so that ``linepo game`` and the model-free workflow stages start fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from linepo import commands
from linepo.errors import InputError


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a single line (no usage block) and exit 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="linepo", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=OneLineArgumentParser)
    for module_info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{module_info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except InputError as err:
        print(f"linepo {args.command}: error: {err}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())

"""`linepo <command> --help` is plain text, describes every command, and lists the judge config keys.

    HF_HUB_OFFLINE=1 python -m pytest tests/test_cli_help.py -q
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import sys

import pytest

from linepo.cli import build_parser, main, plain_text
from linepo.settings import fields, setting

RST = re.compile(r"``|:(?:mod|func|class|meth|data|attr|obj|exc|ref|py:[a-z]+):`?")


def commands(parser=None, path=()):
    """Every sub-command, nested ones (``embedded build``) too: [(argv prefix, parser)]."""
    parser = parser or build_parser()
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append(((*path, name), sub))
                found += commands(sub, (*path, name))
    return found


def help_text(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def flat(text: str) -> str:
    """Whitespace-normalised text: wrapped help lines read as one."""
    return " ".join(text.split())


def test_the_commands_are_found():
    names = {" ".join(argv) for argv, _ in commands()}
    assert {"judge", "compare", "run-steps", "train", "embedded build", "embedded prompts"} <= names


@pytest.mark.parametrize("argv", [argv for argv, _ in commands()], ids=" ".join)
def test_every_command_help_is_plain_text_with_a_description(argv, capsys):
    parser = dict(commands())[argv]
    text = help_text(capsys, argv)
    assert not RST.search(text), RST.search(text).group(0)
    assert parser.description and parser.description.strip()
    assert flat(parser.description) in flat(text)


def test_the_top_level_help_is_plain_text(capsys):
    text = help_text(capsys, [])
    assert not RST.search(text)
    assert "The linepo command line" in text


def test_plain_text_removes_roles_and_literals():
    assert plain_text("``linepo judge``: see :mod:`linepo.stages.parallel`") == "linepo judge: see linepo.stages.parallel"
    assert plain_text(":func:`~linepo.stages.models.load_policy` and :py:class:`Judge`") == "load_policy and Judge"
    assert plain_text(":meth:`the probabilities <Judge.probabilities>`, :mod:`.base`") == "the probabilities, base"
    assert plain_text("`linepo game --out` stays; P(a ≻ b)") == "`linepo game --out` stays; P(a ≻ b)"
    assert plain_text(None) is None


def _settings_classes():
    from linepo.stages.judges import JUDGE_TYPES, judge_settings

    return {judge_type: judge_settings(judge_type) for judge_type in JUDGE_TYPES}


@pytest.mark.parametrize("command", ["judge", "compare"])
def test_judge_config_keys_are_listed_by_type(command, capsys):
    from linepo.stages.judges.base import FACTORY_KEYS

    text = help_text(capsys, [command])
    epilog = text[text.index("judge config keys"):]
    assert "min_answer_mass" in epilog and "max_failed_fraction" in epilog
    for key in FACTORY_KEYS:
        assert re.search(rf"^  {key} \(", epilog, re.M), key
    positions = []
    for judge_type, cls in _settings_classes().items():
        start = epilog.index(f"type {judge_type} ({cls.__name__}):")
        positions.append(start)
        section = epilog[start:].split("\n\n")[0]
        for field in fields(cls):
            assert re.search(rf"^  {field.name} \(", section, re.M), (judge_type, field.name)
            assert flat(field.metadata["doc"]) in flat(section), (judge_type, field.name)
    assert positions == sorted(positions)
    assert "max_failed_fraction (float in [0, 1]; default 0.05)" in flat(epilog)
    assert "batch_size (int ≥ 1; default 8): sequences per forward pass" in flat(epilog)
    assert max(len(line) for line in epilog.splitlines()) <= 79  # pre-wrapped, shown as written


def test_the_two_commands_list_the_same_keys(capsys):
    judge, compare = help_text(capsys, ["judge"]), help_text(capsys, ["compare"])
    assert judge[judge.index("judge config keys"):] == compare[compare.index("judge config keys"):]


def test_exploitability_lists_only_the_synthetic_keys(capsys):
    text = help_text(capsys, ["exploitability"])
    assert "type synthetic (SyntheticSettings):" in text and "pairwise_lm (" not in text


def test_a_new_judge_setting_is_listed_without_editing_the_help(monkeypatch):
    import linepo.stages.judges as judges
    from linepo.commands.judge import judge_config_keys
    from linepo.stages.judges.synthetic import SyntheticSettings

    @dataclasses.dataclass(frozen=True)
    class Extended(SyntheticSettings):
        temperature_of_doubt: float = setting(0.25, "a brand-new setting", low=0.0, low_open=True)

    original = judges.judge_settings
    monkeypatch.setattr(judges, "judge_settings", lambda t: Extended if t == "synthetic" else original(t))
    text = flat(judge_config_keys())
    assert "temperature_of_doubt (float > 0.0; default 0.25): a brand-new setting" in text


def test_judge_help_stays_model_free():
    code = ("import sys\nfrom linepo.cli import build_parser\n"
            "parser = build_parser()\n"
            "for name in ('judge', 'compare', 'exploitability'):\n"
            "    parser._subparsers._group_actions[0].choices[name].format_help()\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"

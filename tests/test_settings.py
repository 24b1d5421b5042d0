"""One source per setting: the settings dataclasses give the flags and checks, and the config
schema's defaults equal theirs."""

from __future__ import annotations

import dataclasses

import pytest

from linepo import settings as s
from linepo.errors import InputError
from linepo.games.runs import GameSettings
from linepo.stages.sampling import SamplerSettings
from linepo.stages.scoring import ScoringSettings
from linepo.stages.sft import SFTSettings
from linepo.stages.training import TrainSettings
from linepo.workflow.config import _schema

SCHEMA = _schema()


def schema_defaults(section: dict) -> dict:
    return {k: v["default"] for k, v in section["properties"].items() if "default" in v}


def resolve(ref: str) -> dict:
    node = SCHEMA
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return node


@pytest.mark.parametrize("section, cls, skip", [
    (SCHEMA["properties"]["sampling"], SamplerSettings, ()),
    (resolve(SCHEMA["properties"]["training"]["$ref"]), TrainSettings, ()),
    (SCHEMA["properties"]["scoring"], ScoringSettings, ()),
    (SCHEMA["properties"]["policy"]["properties"]["build"], SFTSettings, ("base", "data", "split", "messages_column")),
    (SCHEMA["properties"]["synthetic"]["properties"]["settings"]["additionalProperties"], GameSettings, ()),
])
def test_the_schema_defaults_are_the_settings_defaults(section, cls, skip):
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    schema = {k: v for k, v in schema_defaults(section).items() if k not in skip}
    assert schema, "nothing compared"
    for key, value in schema.items():
        assert key in defaults, f"schema key {key} is no field of {cls.__name__}"
        assert defaults[key] == value, f"{cls.__name__}.{key}: {defaults[key]!r} in the dataclass, {value!r} in the schema"


def test_validation_selection_defaults_are_the_trainers():
    section = SCHEMA["properties"]["validation"]
    trainer = TrainSettings()
    assert schema_defaults(section)["eval_steps"] == trainer.eval_steps
    assert schema_defaults(section)["select_best"] == trainer.select_best


def test_commands_take_one_flag_per_setting_with_its_doc():
    from linepo.cli import build_parser

    parser = build_parser()
    actions = {name: choice for name, choice in parser._subparsers._group_actions[0].choices.items()}
    for command, cls in (("sample", SamplerSettings), ("train", TrainSettings), ("score", ScoringSettings)):
        flags = {a.option_strings[0]: a for a in actions[command]._actions if a.option_strings}
        for field in s.fields(cls):
            if not field.metadata["flag"] or field.type in ("dict | None", "list"):
                continue
            action = flags[s.flag_name(field.name)]
            assert field.metadata["doc"] in action.help


def test_mappings_are_checked_by_type_range_and_name():
    assert s.from_mapping(SamplerSettings, {"n": 3}, source="x").n == 3
    with pytest.raises(InputError, match="^x key top_p: must be <= 1, got 2"):
        s.from_mapping(SamplerSettings, {"top_p": 2}, source="x")
    with pytest.raises(InputError, match="^x key colour: unknown setting"):
        s.from_mapping(SamplerSettings, {"colour": 1}, source="x")
    with pytest.raises(InputError, match="^--max-new-tokens: must be an integer"):
        s.from_mapping(SamplerSettings, {"max_new_tokens": 1.5}, source="flags", key_format="{flag}")
    with pytest.raises(InputError, match="^--temperature: must be a finite number"):
        SamplerSettings(temperature=float("nan")).validate()

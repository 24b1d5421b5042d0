"""Load and validate a workflow config against ``linepo/schema/config.schema.yaml``.

Validation fills in the schema's defaults and then checks what a schema cannot (a
preference matrix's P + Pᵀ = 1, a start policy's length). Errors are one line naming
the config key:

    python -m linepo.workflow.config config.yaml      # prints the validated config with defaults
"""

from __future__ import annotations

import copy
import sys
from importlib import resources

import jsonschema
import yaml

from linepo.errors import InputError


def _schema() -> dict:
    text = resources.files("linepo").joinpath("schema/config.schema.yaml").read_text()
    return yaml.safe_load(text)


def _with_defaults(validator_class):
    """A validator that also writes each property's ``default`` into the instance."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_DefaultingValidator = _with_defaults(jsonschema.Draft202012Validator)


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def validate_config(config: dict) -> dict:
    """Return a validated deep copy of ``config`` with defaults filled in.

    Raises:
        InputError: "config key a.b.c: <reason>" for the first problem found.
    """
    config = copy.deepcopy(dict(config))
    errors = sorted(_DefaultingValidator(_schema()).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        error = errors[0]
        raise InputError(f"config key {_key(error.absolute_path)}: {error.message}")
    _check_synthetic(config["synthetic"])
    _check_policy(config["policy"])
    _check_judge(config["judge"])
    for name, run in config["runs"].items():
        _check_run(f"runs.{name}", run)
    _check_validation(config)
    _check_evaluation(config)
    _check_resources(config)
    _check_execution(config)
    return config


def _check_synthetic(section: dict) -> None:
    from linepo.games import game as games

    for name, setting in section["settings"].items():
        key = f"synthetic.settings.{name}"
        try:
            matrix = games.validate_preference_matrix(setting.get("matrix", games.PAPER_MATRIX.tolist()))
        except games.InvalidGameError as err:
            raise InputError(f"config key {key}.matrix: {err}") from None
        n = matrix.shape[0]
        setting["matrix"] = matrix.tolist()
        if "init" not in setting:  # the paper's start on its game, uniform elsewhere
            setting["init"] = games.PAPER_INIT.tolist() if n == 3 else [1.0 / n] * n
        try:
            games.validate_policy(setting["init"], n)
        except games.InvalidGameError as err:
            raise InputError(f"config key {key}.init: {err}") from None


def _looks_like_path(text: str) -> bool:
    return text.startswith((".", "/", "~")) or text.count("/") > 1


def _check_policy(section: dict) -> None:
    from pathlib import Path

    sft = section["sft"]
    if sft == "build" and not section["build"].get("base"):
        raise InputError("config key policy.build.base: required for sft: build (the model to fine-tune)")
    if sft != "embedded" and _looks_like_path(sft):
        if not (Path(sft).expanduser() / "config.json").exists():
            raise InputError(f"config key policy.sft: {sft}: no model folder (config.json) there")
    tokenizer = section.get("tokenizer")
    if tokenizer is not None:
        if sft == "embedded":
            raise InputError("config key policy.tokenizer: the embedded policy builds its own tokenizer")
        if _looks_like_path(tokenizer) and not Path(tokenizer).expanduser().is_dir():
            raise InputError(f"config key policy.tokenizer: {tokenizer}: no such folder")


def _check_judge(section: dict) -> None:
    """The synthetic oracle is cheap to build: build it now so a bad matrix fails before planning."""
    if section.get("type") == "synthetic":
        from linepo.stages.judges import make_judge
        from linepo.stages.parallel import recipe_view  # data_parallel: how many workers judge, not what a judge is

        make_judge(recipe_view(section), source="config key judge")


def _check_validation(config: dict) -> None:
    """Held-out pairs must be held out: not the training prompts themselves."""
    section = config["validation"]
    if not section["enabled"]:
        return
    held_out, train = section["prompts"], config["prompts"]
    same_split = (held_out.get("split") or "train") == (train.get("split") or "train")
    if held_out["source"] == train["source"] and same_split and held_out.get("name") == train.get("name"):
        raise InputError("config key validation.prompts: the same source and split as prompts; "
                         "validation needs held-out prompts (another split or file)")


def _check_evaluation(config: dict) -> None:
    """Fill in the eval judge (default: ``judge``) and check the named checkpoints exist."""
    from linepo.workflow.evalplan import resolve_evaluation

    config["evaluation"] = resolve_evaluation(config)


def _check_run(key: str, run: dict) -> None:
    """What the schema cannot say: per-algorithm requirements and round ranges."""
    algorithm, rounds = run["algorithm"], run["rounds"]
    if algorithm in ("inpo", "linepo") and "eta_tau" not in run:
        raise InputError(f"config key {key}.eta_tau: required for algorithm {algorithm} (ητ ∈ (0, 1])")
    if algorithm in ("dpo", "ipo") and rounds != 1:
        raise InputError(f"config key {key}.rounds: {algorithm} is one pass over all prompts; rounds must be 1")
    moves = run["reference_moves"]
    if isinstance(moves, list):
        if algorithm != "linepo":
            raise InputError(f"config key {key}.reference_moves: only linepo moves its reference")
        late = [r for r in moves if r > rounds]
        if late:
            raise InputError(f"config key {key}.reference_moves: round {late[0]} is beyond the last round ({rounds})")
    for round_key in run["round_overrides"]:
        if int(round_key.rstrip("+")) > rounds:
            raise InputError(f"config key {key}.round_overrides.{round_key}: beyond the last round ({rounds})")


def _check_resources(config: dict) -> None:
    from linepo.workflow.cluster import check_resources

    check_resources(config)


def _check_execution(config: dict) -> None:
    from linepo.stages.parallel import check_config

    check_config(config)


def load_config(path: str) -> dict:
    """Read a YAML file and validate it."""
    try:
        with open(path) as handle:
            raw = yaml.safe_load(handle) or {}
    except FileNotFoundError:
        raise InputError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML ({err.__class__.__name__})") from None
    return validate_config(raw)


if __name__ == "__main__":
    try:
        print(yaml.safe_dump(load_config(sys.argv[1]), sort_keys=False))
    except InputError as err:
        sys.exit(f"error: {err}")

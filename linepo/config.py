"""Load and validate a workflow config against ``linepo/schema/config.schema.yaml``.

Validation fills in the schema's defaults and then checks what a schema cannot (a
preference matrix's P + Pᵀ = 1, a start policy's length). Errors are one line naming
the config key:

    python -m linepo.config config.yaml      # prints the validated config with defaults
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
    return config


def _check_synthetic(section: dict) -> None:
    from linepo import games

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

"""Config validation: defaults filled in, and one clear line naming the key for bad input."""

import copy

import pytest
import yaml

from linepo.workflow.config import load_config, validate_config
from linepo.errors import InputError
from workflow_utils import REPO

BASE = yaml.safe_load((REPO / "config.yaml").read_text())


def validated(edit):
    config = copy.deepcopy(BASE)
    edit(config)
    return validate_config(config)


def test_the_default_config_is_valid_and_gets_defaults():
    config = load_config(str(REPO / "config.yaml"))
    assert config["training"]["lr_scheduler_type"] == "linear"
    assert config["runs"]["linepo"]["round_overrides"] == {}
    assert isinstance(config["training"]["learning_rate"], float)


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda c: c["runs"]["inpo"].update(algorithm="nash_md"), "runs.inpo.algorithm"),
        (lambda c: c["runs"]["inpo"].update(eta=0), "runs.inpo.eta"),
        (lambda c: c["runs"]["inpo"].update(eta=-1.0), "runs.inpo.eta"),
        (lambda c: c["runs"]["inpo"].update(eta_tau=1.5), "runs.inpo.eta_tau"),
        (lambda c: c["runs"]["inpo"].update(eta_tau=0), "runs.inpo.eta_tau"),
        (lambda c: c["runs"]["inpo"].pop("eta_tau"), "runs.inpo.eta_tau"),
        (lambda c: c["runs"]["inpo"].update(rounds=0), "runs.inpo.rounds"),
        (lambda c: c["training"].update(learning_rate="1e-5"), "training.learning_rate"),
        (lambda c: c["runs"]["linepo"].update(reference_moves=[5]), "runs.linepo.reference_moves"),
        (lambda c: c["runs"]["linepo"].update(round_overrides={"7": {"eta": 1.0}}), "runs.linepo.round_overrides.7"),
        (lambda c: c["policy"].update(sft="./no/such/model"), "policy.sft"),
        (lambda c: c["judge"].update(matrix=[[0.5, 0.3, 0.8], [0.9, 0.5, 0.1], [0.2, 0.9, 0.5]]), "judge"),
        (lambda c: c["sampling"].update(n=1), "sampling.n"),
        (lambda c: c["preferences"].update(selection="best_of_n"), "preferences.selection"),
    ],
)
def test_bad_config_names_the_key(edit, key):
    with pytest.raises(InputError) as info:
        validated(edit)
    message = str(info.value)
    assert key in message and "\n" not in message


def test_missing_and_malformed_config_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_config(str(tmp_path / "absent.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("runs: [unclosed")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(str(bad))

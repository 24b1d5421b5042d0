"""The algorithm registry is the one definition: the plan, the config check and schema, the
evaluation labels and the tabular games all read it, and agree with it."""

from __future__ import annotations

import copy

import pytest
import yaml

from linepo.algorithms import ALGORITHMS, LOSS_NAMES, REGISTRY, TABLE_ORDER, sampled_dynamics
from linepo.errors import InputError
from linepo.games.runs import ALGORITHMS as GAME_ALGORITHMS
from linepo.games.sampled import SAMPLED_ALGORITHMS
from linepo.workflow.config import _schema, validate_config
from linepo.workflow.evalplan import build_eval_plan
from linepo.workflow.plan import build_plan
from workflow_utils import REPO

BASE = yaml.safe_load((REPO / "config.yaml").read_text())


def every_algorithm_config() -> dict:
    config = copy.deepcopy(BASE)
    config["runs"] = {}
    for a in REGISTRY:
        run = {"algorithm": a.name, "eta": 4.0, "rounds": 1 if a.one_pass else 2}
        if "eta_tau" in a.params:
            run["eta_tau"] = 0.6
        if "window" in a.params:
            run["window"] = 2
        config["runs"][a.name] = run
    config["evaluation"]["checkpoints"] = {}
    return validate_config(config)


def test_the_schema_the_games_and_the_losses_read_the_registry():
    schema = _schema()
    assert schema["properties"]["runs"]["additionalProperties"]["properties"]["algorithm"]["enum"] == list(ALGORITHMS)
    assert SAMPLED_ALGORITHMS == sampled_dynamics()
    for a in REGISTRY:
        assert a.sampled is None or a.sampled in GAME_ALGORITHMS
        assert a.exact is None or a.exact in GAME_ALGORITHMS
    from linepo.losses import LOSSES

    assert set(LOSS_NAMES) == set(LOSSES)


def test_the_plan_schedules_each_algorithm_as_its_record_says():
    config = every_algorithm_config()
    plan = build_plan(config)
    splits = config["prompts"]["num_splits"]
    for a in REGISTRY:
        steps = plan.runs[a.name]
        assert len(steps) == (1 if a.one_pass else 2 * splits)
        for k, step in enumerate(steps):
            node = plan.policies[step.policy]
            assert node.train["loss"] == a.loss
            previous = plan.sft if k == 0 else steps[k - 1].policy
            if a.schedule == "omd":  # ONPO: against the auxiliary sequence π′ (tests/test_llm_peers.py)
                assert step.reference == step.half.policy and step.half.reference == (
                    plan.sft if k == 0 else steps[k - 1].half.policy)
            elif a.reference == "current":
                assert step.reference == previous
            elif a.reference == "fixed":
                assert step.reference == plan.sft
            else:  # moving, every round: π_ref is the policy at the start of the round
                assert step.reference == (plan.sft if step.round == 1 else steps[splits - 1].policy)


def test_evaluation_labels_and_table_order_come_from_the_registry():
    config = every_algorithm_config()
    eplan = build_eval_plan(config, build_plan(config))
    assert [c.label for c in eplan.checkpoints] == ["SFT"] + [a.label for a in REGISTRY]
    assert [c.name for c in eplan.checkpoints][1:] == list(TABLE_ORDER)


@pytest.mark.parametrize("run, key", [
    ({"algorithm": "inpo", "eta": 4.0, "rounds": 2}, "runs.r.eta_tau: required"),
    ({"algorithm": "ipo", "eta": 4.0, "eta_tau": 0.5}, "runs.r.eta_tau: algorithm ipo takes no eta_tau"),
    ({"algorithm": "iter_ipo", "eta": 4.0, "rounds": 2, "round_overrides": {"2": {"eta_tau": 0.5}}},
     "runs.r.round_overrides.2.eta_tau: algorithm iter_ipo takes no eta_tau"),
    ({"algorithm": "dpo", "eta": 4.0, "rounds": 2}, "runs.r.rounds: dpo is one pass"),
    ({"algorithm": "iter_ipo", "eta": 4.0, "rounds": 3, "reference_moves": [2]},
     "runs.r.reference_moves: algorithm iter_ipo does not move its reference"),
    ({"algorithm": "inpo", "eta": 4.0, "eta_tau": 0.5, "rounds": 3, "reference_moves": [4]},
     "runs.r.reference_moves: round 4 is beyond the last round"),
    ({"algorithm": "telepathy", "eta": 4.0}, "runs.r.algorithm"),
])
def test_a_run_is_checked_against_its_algorithm_record(run, key):
    config = copy.deepcopy(BASE)
    config["runs"] = {"r": run}
    config["evaluation"]["checkpoints"] = {}
    with pytest.raises(InputError, match=f"^config key {key}"):
        validate_config(config)

"""The LLM schedules of Mirror-Prox and OMWU (paper Appendix H; linepo.workflow.schedules): on a
2-round × 2-split config the plan gives every step the sampler, anchor, reference and parent
its tabular dynamics names, the plan's DAG evaluated with exact Prox targets *is* the tabular
trajectory, methods share nodes wherever their recipes agree, and a bad run fails at config time."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from linepo.errors import InputError
from linepo.evaluation import prox_fidelity as pf
from linepo.games import game as games
from linepo.workflow.plan import build_plan, describe
from linepo.workflow.schedules import training_steps
from linepo.workflow.wiring import Wiring
from workflow_utils import REPO, TWO_BY_TWO_POSITIONS, step_nodes, tiny_config, two_split_plan, validated_tiny

ETA = 4.0
RUNS = {
    "iter_ipo": {"algorithm": "iter_ipo", "eta": ETA, "rounds": 2},
    "mp": {"algorithm": "mirror_prox", "eta": ETA, "rounds": 2},
    "omwu": {"algorithm": "omwu", "eta": ETA, "rounds": 2},
}
POSITIONS = TWO_BY_TWO_POSITIONS  # step t = 0..3: (round, split s_t)


def config(runs=None, **edits) -> dict:
    return validated_tiny(RUNS if runs is None else runs, **edits)


@pytest.fixture(scope="module")
def plan():
    return two_split_plan(RUNS)


def recipe(plan, step) -> dict:
    """What a training step's nodes say: its sampler (the scored node's anchor, which is the policy
    that drew its samples), reference, parent, and where its pairs come from."""
    node, scored, pref_id, sample = step_nodes(plan, step)
    assert sample.policy == scored.anchor  # the anchor is the policy that sampled the pairs
    assert (node.parent, node.reference, scored.reference) == (step.parent, step.reference, step.reference)
    assert scored.anchor == step.sampler
    return {"sampler": scored.anchor, "reference": node.reference, "parent": node.parent,
            "pairs": pref_id, "pairs_split": sample.split, "round": node.round, "split": node.split}


def test_mirror_prox_samples_twice_from_the_prox_centre_and_the_half_step(plan):
    """π^{t+½} = Prox(π^t, η P(·≻π^t)), π^{t+1} = Prox(π^t, η P(·≻π^{t+½})), one split per step."""
    steps = plan.runs["mp"]
    assert len(steps) == 4 and len(training_steps(steps)) == 8
    pi = [plan.sft] + [s.policy for s in steps]  # π^0 .. π^4: the run's iterates are the full steps
    for t, (step, (round_, split)) in enumerate(zip(steps, POSITIONS)):
        half = step.half
        assert half.is_half and not step.is_half and (step.round, step.split) == (round_, split)
        assert {k: v for k, v in recipe(plan, half).items() if k != "pairs"} == {
            "sampler": pi[t], "reference": pi[t], "parent": pi[t], "pairs_split": split, "round": round_,
            "split": split}
        assert {k: v for k, v in recipe(plan, step).items() if k != "pairs"} == {
            "sampler": half.policy, "reference": pi[t], "parent": half.policy, "pairs_split": split,
            "round": round_, "split": split}
        assert not step.reference_moved and not half.reference_moved


def test_omwu_reuses_the_previous_half_steps_pairs_for_its_half_step(plan):
    """π^{t+½} = Prox(π^t, η P(·≻π^{t−½})) on the previous step's pairs, π^{−½} = π^0;
    π^{t+1} = Prox(π^t, η P(·≻π^{t+½})) on new pairs from π^{t+½}."""
    steps = plan.runs["omwu"]
    pi = [plan.sft] + [s.policy for s in steps]
    halves = [s.half.policy for s in steps]
    for t, (step, (round_, split)) in enumerate(zip(steps, POSITIONS)):
        half, full = recipe(plan, step.half), recipe(plan, step)
        assert step.half.is_half
        if t == 0:  # π^{−½} = π^0: the half step samples π^0 on s_0
            assert (half["sampler"], half["pairs_split"]) == (plan.sft, split)
        else:  # the pairs of π^{t−½}, exactly the previous full step's, on s_{t−1}
            previous = recipe(plan, steps[t - 1])
            assert half["sampler"] == halves[t - 1] == previous["sampler"]
            assert half["pairs"] == previous["pairs"] and half["pairs_split"] == POSITIONS[t - 1][1]
        assert (half["reference"], half["parent"], half["round"], half["split"]) == (pi[t], pi[t], round_, split)
        assert {k: full[k] for k in ("sampler", "reference", "parent", "pairs_split")} == {
            "sampler": halves[t], "reference": pi[t], "parent": halves[t], "pairs_split": split}
    # one new sampling per step after the first
    samplers = {plan.samples[plan.prefs[recipe(plan, s)["pairs"]].sample].id for s in training_steps(steps)}
    assert len(samplers) == len(steps) + 1


def exact_values(plan, run: str, matrix, init) -> dict:
    """The plan's DAG computed exactly: every trained policy = Prox(its reference, η P(·≻its scored
    node's anchor)), the IPO loss's exact minimiser, read off the nodes alone."""
    values = {plan.sft: np.asarray(init, dtype=float)}
    for step in training_steps(plan.runs[run]):
        node = plan.policies[step.policy]
        scored = plan.scored[node.scored[0]]
        assert node.train["loss"] == "ipo"
        values[step.policy] = games.prox(values[scored.reference],
                                         node.train["eta"] * games.win_rates_against(matrix, values[scored.anchor]))
    return values


def test_the_plans_dag_with_exact_steps_is_the_tabular_dynamics(plan):
    matrix, init = games.PAPER_MATRIX, games.PAPER_INIT
    iterations = len(POSITIONS)

    values = exact_values(plan, "iter_ipo", matrix, init)
    md = games.mirror_descent(matrix, init, eta=ETA, iterations=iterations).policies
    np.testing.assert_allclose([values[s.policy] for s in plan.runs["iter_ipo"]], md[1:], atol=1e-12)

    values = exact_values(plan, "mp", matrix, init)
    exact = games.mirror_prox(matrix, init, eta=ETA, iterations=iterations).policies
    np.testing.assert_allclose([values[s.policy] for s in plan.runs["mp"]], exact[1:], atol=1e-12)

    # OMWU: the tabular single-sequence iterates are the two-sequence half steps, with π^{−½} = π^0.
    values = exact_values(plan, "omwu", matrix, init)
    tabular = games.optimistic_mwu(matrix, init, eta=ETA, iterations=iterations).policies
    np.testing.assert_allclose([values[s.half.policy] for s in plan.runs["omwu"]], tabular[1:], atol=1e-12)
    pi, previous_half, full = np.asarray(init), np.asarray(init), []
    for _ in range(iterations):  # the formulas of Appendix H, written out
        half = games.prox(pi, ETA * matrix @ previous_half)
        pi, previous_half = games.prox(pi, ETA * matrix @ half), half
        full.append(pi)
    np.testing.assert_allclose([values[s.policy] for s in plan.runs["omwu"]], full, atol=1e-12)


def test_methods_share_every_node_whose_recipe_agrees(plan):
    ipo, mp, omwu = plan.runs["iter_ipo"], plan.runs["mp"], plan.runs["omwu"]
    # "sample from SFT, IPO against SFT": iterative IPO's first step is both half steps at t = 0
    assert mp[0].half.policy == ipo[0].policy == omwu[0].half.policy
    assert omwu[0].policy == mp[0].policy  # with π^{−½} = π^0, OMWU's first step is Mirror-Prox's
    assert recipe(plan, omwu[1].half)["pairs"] == recipe(plan, mp[0])["pairs"]  # and it reuses those pairs
    later = lambda steps: {p.policy for p in training_steps(steps)[2:]}  # noqa: E731
    assert not later(mp) & later(omwu) and not later(mp) & {s.policy for s in ipo[1:]}
    # iter_ipo 4 + Mirror-Prox 8 − 1 shared + OMWU 8 − 2 shared; samples 4 + (8 − 1) + (5 − 2)
    assert plan.counts()["policies"] == 4 + 7 + 6 and plan.counts()["samples"] == 4 + 7 + 3


def test_adding_the_new_runs_changes_no_node_of_the_others():
    alone = build_plan(config({"iter_ipo": RUNS["iter_ipo"]}))
    both = build_plan(config())
    assert [s.policy for s in alone.runs["iter_ipo"]] == [s.policy for s in both.runs["iter_ipo"]]
    assert set(alone.policies) <= set(both.policies) and set(alone.samples) <= set(both.samples)


def test_round_overrides_apply_to_both_fits_of_a_step():
    runs = {"mp": {**RUNS["mp"], "round_overrides": {"2": {"eta": 2.0}}}}
    built = build_plan(config(runs))
    etas = [(s.round, s.is_half, built.policies[s.policy].train["eta"]) for s in training_steps(built.runs["mp"])]
    assert etas == [(r, h, ETA if r == 1 else 2.0) for r in (1, 1, 2, 2) for h in (True, False)]


@pytest.mark.parametrize("run, key", [
    ({"algorithm": "mirror_prox", "rounds": 2}, "runs.r: 'eta' is a required property"),
    ({"algorithm": "omwu", "rounds": 2}, "runs.r: 'eta' is a required property"),
    ({"algorithm": "mirror_prox", "eta": ETA, "rounds": 0}, "runs.r.rounds"),
    ({"algorithm": "omwu", "eta": ETA, "rounds": 0}, "runs.r.rounds"),
    ({"algorithm": "omwu", "eta": 0, "rounds": 2}, "runs.r.eta"),
    ({"algorithm": "mirror_prox", "eta": ETA, "eta_tau": 0.5}, "runs.r.eta_tau: algorithm mirror_prox takes no eta_tau"),
    ({"algorithm": "omwu", "eta": ETA, "rounds": 3, "reference_moves": [2]},
     "runs.r.reference_moves: algorithm omwu does not move its reference"),
])
def test_a_bad_run_fails_at_config_time_naming_the_key(run, key):
    with pytest.raises(InputError, match=f"^config key {key}"):
        config({"r": run})


def test_steps_tsv_and_the_prox_fidelity_spec_name_the_sampler(tmp_path):
    wiring = Wiring(config())
    plan = wiring.plan
    rows = json.loads(wiring.steps_json("mp"))
    assert [r["half"] for r in rows] == [True, False] * 4
    assert rows[1]["sampler"] == rows[0]["policy"] == plan.policy_dir(plan.runs["mp"][0].half.policy)
    assert "half" not in json.loads(wiring.steps_json("iter_ipo"))[0]  # other runs' params: unchanged
    spec = json.loads(wiring.prox_fidelity_spec("mp"))
    assert len(spec["iterates"]) == 9 and "sampler" not in json.loads(wiring.prox_fidelity_spec("iter_ipo"))["steps"][0]
    assert [(s["sampler"], s["reference"]) for s in spec["steps"][:4]] == [(0, 0), (1, 0), (2, 2), (3, 2)]
    omwu = json.loads(wiring.prox_fidelity_spec("omwu"))["steps"]
    assert [s["sampler"] for s in omwu] == [0, 1, 1, 3, 3, 5, 5, 7]  # a half step's sampler: the previous half
    # the exact analogue of each spec is the tabular trajectory (per prompt)
    start = np.tile(games.PAPER_INIT, (2, 1))
    analogue = pf.analogue_trajectory(games.PAPER_MATRIX, start, pf.steps_from_spec(spec["steps"]))
    exact = games.mirror_prox(games.PAPER_MATRIX, games.PAPER_INIT, eta=ETA, iterations=4).policies
    np.testing.assert_allclose(np.array(analogue[2::2])[:, 0], exact[1:], atol=1e-9)
    analogue = pf.analogue_trajectory(games.PAPER_MATRIX, start, pf.steps_from_spec(omwu))
    exact = games.optimistic_mwu(games.PAPER_MATRIX, games.PAPER_INIT, eta=ETA, iterations=4).policies
    np.testing.assert_allclose(np.array(analogue[1::2])[:, 1], exact[1:], atol=1e-9)
    with pytest.raises(InputError, match="sampler 1 is not an earlier iterate"):
        pf.steps_from_spec([{**spec["steps"][0], "sampler": 1}])

    from linepo.commands.evaluate import run_steps

    out = tmp_path / "steps.tsv"
    run_steps(argparse.Namespace(steps=wiring.steps_json("omwu"), out=str(out)))
    lines = out.read_text().splitlines()
    assert lines[0].split("\t")[-2:] == ["half", "sampler"] and len(lines) == 1 + 8


def test_describe_and_linepo_plan_show_the_schedule(tmp_path):
    assert "run mp: 4 steps (extragradient schedule" in describe(build_plan(config()))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config(runs=RUNS)))
    result = subprocess.run([sys.executable, "-m", "linepo.cli", "plan", str(path)], capture_output=True, text=True,
                            cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "run omwu: 4 steps (optimistic schedule: a half step before each, 8 trained policies)" in result.stdout
    assert "run iter_ipo: 4 steps, final" in result.stdout


def test_held_out_pairs_come_from_each_steps_sampler():
    """Checkpoint selection's held-out loss is the step's own objective: pairs of its sampler
    (OMWU's half step: π^{t−½}, not its parent π^t), scored against its reference."""
    built = build_plan(config(validation={"enabled": True,
                                          "prompts": {"source": "embedded", "split": "eval", "max_prompts": 8}}))
    for run in ("mp", "omwu", "iter_ipo"):
        for step in training_steps(built.runs[run]):
            (held_out,) = built.policies[step.policy].validation
            scored = built.scored[held_out]
            (pref_id,) = scored.prefs
            assert (scored.anchor, scored.reference) == (step.sampler, step.reference)
            assert built.samples[built.prefs[pref_id].sample].policy == step.sampler
    omwu = built.runs["omwu"]
    assert omwu[1].half.sampler != omwu[1].half.parent  # the case where sampler and parent differ


@pytest.mark.slow
def test_mirror_prox_and_omwu_run_end_to_end_through_snakemake(tmp_path):
    """One round on 2 splits: 4 fits for Mirror-Prox, 2 more for OMWU (its step 0 is Mirror-Prox's),
    steps.tsv with the half steps, exploitability of both, a Prox-fidelity row per fit."""
    import csv

    from workflow_utils import dry_run, snakemake, workflow_with_config

    runs = {"mp": {"algorithm": "mirror_prox", "eta": ETA, "rounds": 1},
            "omwu": {"algorithm": "omwu", "eta": ETA, "rounds": 1}}
    directory = workflow_with_config(tmp_path / "wf", tiny_config(runs=runs, evaluation={"enabled": False}))
    planned = [rule for rule, _ in dry_run(directory)]
    assert planned.count("train") == 6 and planned.count("sample") == 5 and planned.count("score") == 6
    result = snakemake(directory, "--cores", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for run in runs:
        with open(directory / f"results/runs/{run}/replicate-0/steps.tsv") as handle:
            steps = list(csv.DictReader(handle, delimiter="\t"))
        assert [row["half"] for row in steps] == ["True", "False"] * 2
        assert steps[1]["sampler"] == steps[0]["policy"]
        with open(directory / f"results/runs/{run}/replicate-0/prox_fidelity.tsv") as handle:
            assert len(list(csv.DictReader(handle, delimiter="\t"))) == 4
    table = (directory / "results/summary/exploitability.tsv").read_text()
    assert {line.split("\t")[0] for line in table.splitlines()[1:]} == {"sft", "mp", "omwu"}
    assert dry_run(directory) == []


def test_the_registry_records_the_schedules_and_their_exact_twins():
    from linepo.algorithms import ALGORITHMS, SCHEDULES
    from linepo.games.runs import EXACT_ALGORITHMS
    from linepo.workflow import schedules

    assert SCHEDULES == schedules.SCHEDULES
    for name, kind in (("mirror_prox", "extragradient"), ("omwu", "optimistic")):
        a = ALGORITHMS[name]
        assert (a.schedule, a.loss, a.reference, a.one_pass, a.exact) == (kind, "ipo", "current", False, name)
        assert a.exact in EXACT_ALGORITHMS
    assert {ALGORITHMS[a].schedule for a in ("iter_dpo", "iter_ipo", "sppo", "inpo", "linepo")} == {"single"}

"""The LLM schedules of MNPO, ONPO and EGPO, and ``reference_moves`` for every solver with a
fixed reference: each step's sampler, anchor, reference and parent are what the tabular
dynamics (:mod:`linepo.games.peers`) define, the plan's DAG with exact steps *is* their
trajectory, methods share nodes wherever their recipes agree, and a bad run fails at config
time naming its key."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from linepo.errors import InputError
from linepo.evaluation import prox_fidelity as pf
from linepo.games import game as games
from linepo.games import peers
from linepo.workflow.plan import build_plan, describe
from linepo.workflow.schedules import training_steps
from linepo.workflow.wiring import Wiring
from workflow_utils import TWO_BY_TWO_POSITIONS, step_nodes, tiny_config, two_split_plan, validated_tiny

ETA, ETA_TAU = 4.0, 0.5
TAU = ETA_TAU / ETA  # the tabular τ of a run's ητ
WEIGHTS = [0.5, 0.3, 0.2]
RUNS = {
    "iter_ipo": {"algorithm": "iter_ipo", "eta": ETA, "rounds": 2},
    "mp": {"algorithm": "mirror_prox", "eta": ETA, "rounds": 2},
    "inpo": {"algorithm": "inpo", "eta": ETA, "eta_tau": ETA_TAU, "rounds": 2},
    "inpo_moves": {"algorithm": "inpo", "eta": ETA, "eta_tau": ETA_TAU, "rounds": 2, "reference_moves": "every_round"},
    "linepo": {"algorithm": "linepo", "eta": ETA, "eta_tau": ETA_TAU, "rounds": 2},
    "mnpo": {"algorithm": "mnpo", "eta": ETA, "eta_tau": ETA_TAU, "rounds": 2, "window": 3, "weights": WEIGHTS},
    "mnpo_1": {"algorithm": "mnpo", "eta": ETA, "eta_tau": ETA_TAU, "rounds": 2, "window": 1},
    "mnpo_old": {"algorithm": "mnpo", "eta": ETA, "eta_tau": ETA_TAU, "rounds": 2, "window": 2, "weights": [0, 1]},
    "egpo": {"algorithm": "egpo", "eta": ETA, "eta_tau": ETA_TAU, "rounds": 2},
    "onpo": {"algorithm": "onpo", "eta": ETA, "rounds": 2},
}
POSITIONS = TWO_BY_TWO_POSITIONS  # step t = 0..3: (round, split s_t)


def config(runs=None, **edits) -> dict:
    return validated_tiny(RUNS if runs is None else runs, **edits)


@pytest.fixture(scope="module")
def plan():
    return two_split_plan(RUNS)


def recipe(plan, step) -> dict:
    """What a training step's nodes say: the policy that sampled its pairs, its scored node's
    reference and anchor (or mixture), its parent and where its pairs come from."""
    node, scored, pref_id, sample = step_nodes(plan, step)
    assert (node.parent, node.reference, scored.reference) == (step.parent, step.reference, step.reference)
    assert sample.policy == step.sampler and scored.anchor == step.anchor_policy
    assert scored.mixture == step.mixture
    return {"sampler": sample.policy, "reference": node.reference, "anchor": scored.anchor,
            "mixture": scored.mixture, "parent": node.parent, "pairs": pref_id, "pairs_split": sample.split,
            "round": node.round, "split": node.split, "loss": node.train["loss"]}


def without(d: dict, *keys) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


# -- (a) each step as the tabular dynamics define it ---------------------------------------


def test_egpo_extrapolates_and_updates_from_the_prox_centre_against_the_fixed_reference(plan):
    """π^{t+½} ∝ (π^t)^{1−ητ} π_ref^{ητ} e^{ηP(·≻π^t)}, π^{t+1} ∝ (π^t)^{1−ητ} π_ref^{ητ} e^{ηP(·≻π^{t+½})}."""
    steps = plan.runs["egpo"]
    assert len(steps) == 4 and len(training_steps(steps)) == 8
    pi = [plan.sft] + [s.policy for s in steps]
    for t, (step, (round_, split)) in enumerate(zip(steps, POSITIONS)):
        half = step.half
        assert half.is_half and not step.is_half
        assert without(recipe(plan, half), "pairs") == {
            "sampler": pi[t], "reference": plan.sft, "anchor": pi[t], "mixture": (), "parent": pi[t],
            "pairs_split": split, "round": round_, "split": split, "loss": "inpo"}
        assert without(recipe(plan, step), "pairs") == {
            "sampler": half.policy, "reference": plan.sft, "anchor": pi[t], "mixture": (), "parent": half.policy,
            "pairs_split": split, "round": round_, "split": split, "loss": "inpo"}


def test_mnpo_anchors_on_the_weighted_mixture_of_past_iterates(plan):
    """Anchor Σ_j λ_j log π_{t−j}, λ renormalised over the iterates that exist (peers.history_weights)."""
    pi = [plan.sft] + [s.policy for s in plan.runs["mnpo"]]
    expected = [(), ((pi[1], 0.625), (pi[0], 0.375)), ((pi[2], 0.5), (pi[1], 0.3), (pi[0], 0.2)),
                ((pi[3], 0.5), (pi[2], 0.3), (pi[1], 0.2))]
    for t, (step, (round_, split)) in enumerate(zip(plan.runs["mnpo"], POSITIONS)):
        r = recipe(plan, step)
        assert without(r, "pairs", "mixture") == {"sampler": pi[t], "reference": plan.sft, "anchor": pi[t],
                                                  "parent": pi[t], "pairs_split": split, "round": round_,
                                                  "split": split, "loss": "inpo"}
        assert [p for p, _ in r["mixture"]] == [p for p, _ in expected[t]]
        np.testing.assert_allclose([w for _, w in r["mixture"]], [w for _, w in expected[t]], atol=1e-15)
    # weights [0, 1]: at t = 0 all weight on π_0 (the stand-in for older ones), then on π_{t−1} alone
    old = plan.runs["mnpo_old"]
    pi = [plan.sft] + [s.policy for s in old]
    for t, step in enumerate(old):
        r = recipe(plan, step)
        assert (r["sampler"], r["anchor"], r["mixture"]) == (pi[t], pi[max(t - 1, 0)], ())


def test_onpo_fits_twice_on_one_sampling_of_the_iterate(plan):
    """π′_{t+1} = Prox(π′_t, ηP(·≻π_t)), π_{t+1} = Prox(π′_{t+1}, ηP(·≻π_t)) on the same D_t; π′_0 = π_0."""
    steps = plan.runs["onpo"]
    pi = [plan.sft] + [s.policy for s in steps]
    aux = [plan.sft] + [s.half.policy for s in steps]  # π′_0, π′_1, ...
    for t, (step, (round_, split)) in enumerate(zip(steps, POSITIONS)):
        half, full = recipe(plan, step.half), recipe(plan, step)
        assert without(half, "pairs") == {"sampler": pi[t], "reference": aux[t], "anchor": pi[t], "mixture": (),
                                          "parent": pi[t], "pairs_split": split, "round": round_, "split": split,
                                          "loss": "ipo"}
        assert without(full, "pairs") == {"sampler": pi[t], "reference": aux[t + 1], "anchor": pi[t],
                                          "mixture": (), "parent": aux[t + 1], "pairs_split": split,
                                          "round": round_, "split": split, "loss": "ipo"}
        assert half["pairs"] == full["pairs"]  # both fits on D_t
    assert len({plan.prefs[recipe(plan, s)["pairs"]].sample for s in training_steps(steps)}) == 4


def test_a_fixed_reference_moves_where_reference_moves_says(plan):
    steps = plan.runs["inpo_moves"]
    assert [s.reference for s in steps] == [plan.sft, plan.sft, steps[1].policy, steps[1].policy]
    assert [s.reference_moved for s in steps] == [False, False, True, False]
    assert all(s.reference == plan.sft for s in plan.runs["inpo"])  # without moves: never
    moved = build_plan(config({"egpo": {**RUNS["egpo"], "reference_moves": [2]},
                               "mnpo": {**RUNS["mnpo"], "reference_moves": [2]}}))
    for run in ("egpo", "mnpo"):
        after_round_1 = moved.policy_after_round(run, 1)
        assert [s.reference for s in training_steps(moved.runs[run]) if s.round == 2] == \
            [after_round_1] * (4 if run == "egpo" else 2)


# -- (b) the plan's DAG with exact steps is the tabular trajectory --------------------------


def exact_values(plan, run: str, matrix, init) -> dict:
    """Every trained policy as its loss's exact minimiser, read off the nodes alone: IPO,
    Prox(π_ref, ηP(·≻μ)); INPO, ∝ π_ref^{ητ} a^{1−ητ} e^{ηP(·≻μ)} with a the scored node's anchor
    (or Π_j π_j^{w_j}, its mixture) and μ the policy that sampled its pairs."""
    values = {plan.sft: np.asarray(init, dtype=float)}
    for step in training_steps(plan.runs[run]):
        node = plan.policies[step.policy]
        scored = plan.scored[node.scored[0]]
        mu = values[plan.samples[plan.prefs[scored.prefs[0]].sample].policy]
        gradient = node.train["eta"] * games.win_rates_against(matrix, mu)
        if node.train["loss"] == "ipo":
            values[step.policy] = games.prox(values[scored.reference], gradient)
            continue
        assert node.train["loss"] == "inpo"
        eta_tau = node.train["eta_tau"]
        mixture = scored.mixture or ((scored.anchor, 1.0),)
        log_anchor = sum(w * np.log(values[p]) for p, w in mixture)
        centre = eta_tau * np.log(values[scored.reference]) + (1 - eta_tau) * log_anchor
        values[step.policy] = games.prox(np.exp(centre - centre.max()), gradient)
    return values


def iterates(plan, run, matrix=games.PAPER_MATRIX, init=games.PAPER_INIT):
    values = exact_values(plan, run, matrix, init)
    return np.array([values[s.policy] for s in plan.runs[run]])


def test_the_plans_dag_with_exact_steps_is_the_peers_dynamics(plan):
    matrix, init, n = games.PAPER_MATRIX, games.PAPER_INIT, len(POSITIONS)
    tabular = {
        "mnpo": peers.mnpo(matrix, init, eta=ETA, tau=TAU, iterations=n, window=3, weights=WEIGHTS),
        "mnpo_1": peers.mnpo(matrix, init, eta=ETA, tau=TAU, iterations=n, window=1),
        "mnpo_old": peers.mnpo(matrix, init, eta=ETA, tau=TAU, iterations=n, window=2, weights=[0, 1]),
        "egpo": peers.egpo(matrix, init, eta=ETA, tau=TAU, iterations=n),
        "onpo": peers.onpo(matrix, init, eta=ETA, iterations=n),
        "inpo": games.inpo(matrix, init, eta=ETA, tau=TAU, iterations=n),
        # LINE-PO's tabular form moves the reference after every inner_steps = splits steps
        "inpo_moves": games.linepo(matrix, init, eta=ETA, tau=TAU, inner_steps=2, iterations=n),
    }
    for run, trajectory in tabular.items():
        np.testing.assert_allclose(iterates(plan, run), trajectory.policies[1:], atol=1e-12, err_msg=run)
    # and on a 5×5 game from a non-uniform start
    rng = np.random.default_rng(3)
    a = rng.normal(size=(5, 5))
    matrix5 = 0.5 + 0.4 * np.tanh(a - a.T)
    init5 = rng.dirichlet(np.ones(5) * 3)
    np.testing.assert_allclose(
        iterates(plan, "mnpo", matrix5, init5),
        peers.mnpo(matrix5, init5, eta=ETA, tau=TAU, iterations=n, window=3, weights=WEIGHTS).policies[1:],
        atol=1e-12)
    np.testing.assert_allclose(iterates(plan, "egpo", matrix5, init5),
                               peers.egpo(matrix5, init5, eta=ETA, tau=TAU, iterations=n).policies[1:], atol=1e-12)
    np.testing.assert_allclose(iterates(plan, "onpo", matrix5, init5),
                               peers.onpo(matrix5, init5, eta=ETA, iterations=n).policies[1:], atol=1e-12)


# -- (c) shared nodes ---------------------------------------------------------------------


def test_methods_share_every_node_whose_recipe_agrees(plan):
    runs = plan.runs
    ids = lambda run: [s.policy for s in training_steps(runs[run])]  # noqa: E731
    # INPO + moves every round is LINE-PO's computation: the same nodes
    assert ids("inpo_moves") == ids("linepo")
    assert [recipe(plan, s) for s in runs["inpo_moves"]] == [recipe(plan, s) for s in runs["linepo"]]
    # MNPO window 1 is INPO; MNPO's step 0 (one iterate: anchor π_0) is INPO's; later ones differ
    assert ids("mnpo_1") == ids("inpo")
    assert ids("mnpo")[0] == ids("inpo")[0] and not set(ids("mnpo")[1:]) & set(ids("inpo"))
    # EGPO's half steps are INPO steps from π^t: its first is INPO's first step
    assert runs["egpo"][0].half.policy == runs["inpo"][0].policy
    assert runs["egpo"][0].policy not in ids("inpo")
    # ONPO's first half step (π′_0 = π_0) is iterative IPO's first step and Mirror-Prox's first half step
    assert runs["onpo"][0].half.policy == runs["iter_ipo"][0].policy == runs["mp"][0].half.policy
    assert recipe(plan, runs["onpo"][0])["pairs"] == recipe(plan, runs["iter_ipo"][0])["pairs"]


def test_adding_the_new_runs_changes_no_node_of_the_others():
    old = {k: RUNS[k] for k in ("iter_ipo", "mp", "inpo", "linepo")}
    alone, both = build_plan(config(old)), build_plan(config())
    for run in old:
        assert [s.policy for s in alone.runs[run]] == [s.policy for s in both.runs[run]]
    assert set(alone.scored) <= set(both.scored) and set(alone.samples) <= set(both.samples)
    assert not any(node.mixture for node in alone.scored.values())


# -- (d) bad config -------------------------------------------------------------------------


MNPO = {"algorithm": "mnpo", "eta": ETA, "eta_tau": ETA_TAU, "rounds": 2, "window": 2}


@pytest.mark.parametrize("run, key", [
    ({**MNPO, "window": None}, "runs.r.window"),
    ({k: v for k, v in MNPO.items() if k != "window"}, "runs.r.window: required for algorithm mnpo"),
    ({k: v for k, v in MNPO.items() if k != "eta_tau"}, "runs.r.eta_tau: required for algorithm mnpo"),
    ({**MNPO, "window": 0}, "runs.r.window: must be an integer ≥ 1"),
    ({**MNPO, "window": 5}, "runs.r.window: 5 past iterates, but the run has only 4 steps"),
    ({**MNPO, "weights": [0.5, 0.4]}, "runs.r.weights: must sum to 1"),
    ({**MNPO, "weights": [1.0]}, "runs.r.weights: needs one weight per past iterate"),
    ({**MNPO, "weights": [1.5, -0.5]}, "runs.r.weights: must be finite and non-negative"),
    ({**MNPO, "round_overrides": {"2": {"window": 1}}}, "runs.r.round_overrides.2"),
    ({"algorithm": "inpo", "eta": ETA, "eta_tau": ETA_TAU, "rounds": 2, "window": 2},
     "runs.r.window: algorithm inpo takes no window"),
    ({"algorithm": "egpo", "eta": ETA, "rounds": 2}, "runs.r.eta_tau: required for algorithm egpo"),
    ({"algorithm": "onpo", "eta": ETA, "eta_tau": 0.5}, "runs.r.eta_tau: algorithm onpo takes no eta_tau"),
    ({"algorithm": "onpo", "eta": ETA, "rounds": 0}, "runs.r.rounds"),
    ({"algorithm": "egpo", "eta": ETA, "eta_tau": ETA_TAU, "rounds": 2, "reference_moves": [3]},
     "runs.r.reference_moves: round 3 is beyond the last round"),
    ({"algorithm": "onpo", "eta": ETA, "rounds": 2, "reference_moves": [2]},
     "runs.r.reference_moves: algorithm onpo does not move its reference: its reference already is the current"),
    ({"algorithm": "iter_ipo", "eta": ETA, "rounds": 2, "reference_moves": "every_round"},
     "runs.r.reference_moves: algorithm iter_ipo does not move its reference"),
    ({"algorithm": "sppo", "eta": ETA, "rounds": 2, "reference_moves": [2]},
     "runs.r.reference_moves: algorithm sppo does not move"),
    ({"algorithm": "mirror_prox", "eta": ETA, "rounds": 2, "reference_moves": [2]},
     "runs.r.reference_moves: algorithm mirror_prox does not move"),
    ({"algorithm": "ipo", "eta": ETA, "reference_moves": "every_round"},
     "runs.r.reference_moves: algorithm ipo does not move its reference: one pass"),
])
def test_a_bad_run_fails_at_config_time_naming_the_key(run, key):
    with pytest.raises(InputError, match=f"^config key {key}") as info:
        config({"r": run})
    assert "\n" not in str(info.value)


def test_reference_moves_defaults():
    validated = config({"l": RUNS["linepo"], "i": RUNS["inpo"], "e": RUNS["egpo"]})
    assert validated["runs"]["l"]["reference_moves"] == "every_round"
    assert "reference_moves" not in validated["runs"]["i"] and "reference_moves" not in validated["runs"]["e"]


# -- what the workflow shows: steps.tsv, the Prox-fidelity spec, the score rule's flags ------


def test_steps_tsv_and_the_prox_fidelity_spec_name_sampler_and_anchor(tmp_path):
    from linepo.commands.evaluate import run_steps

    wiring = Wiring(config())
    plan = wiring.plan
    rows = json.loads(wiring.steps_json("egpo"))
    assert [r["half"] for r in rows] == [True, False] * 4
    assert rows[1]["sampler"] == rows[0]["policy"] and rows[1]["anchor"] == plan.policy_dir(plan.sft)
    mnpo = json.loads(wiring.steps_json("mnpo"))
    assert mnpo[2]["anchor"].startswith("0.5*results/policies/r1/s1/") and " + 0.2*results/sft/" in mnpo[2]["anchor"]
    for run in ("mnpo", "egpo", "onpo"):
        out = tmp_path / f"{run}.tsv"
        run_steps(argparse.Namespace(steps=wiring.steps_json(run), out=str(out)))
        lines = out.read_text().splitlines()
        assert lines[0].split("\t")[-3:] == ["half", "sampler", "anchor"]
        assert len(lines) == 1 + len(plan.training_steps(run))
    # the older runs' files are as they were
    assert "anchor" not in json.loads(wiring.steps_json("mp"))[0]
    assert "sampler" not in json.loads(wiring.steps_json("inpo_moves"))[0]
    assert "anchor" not in json.loads(wiring.prox_fidelity_spec("mp"))["steps"][0]

    # the spec's exact analogue is the tabular trajectory (per prompt)
    start = np.tile(games.PAPER_INIT, (2, 1))
    n = len(POSITIONS)
    expected = {
        "mnpo": peers.mnpo(games.PAPER_MATRIX, games.PAPER_INIT, eta=ETA, tau=TAU, iterations=n, window=3,
                           weights=WEIGHTS).policies[1:],
        "mnpo_old": peers.mnpo(games.PAPER_MATRIX, games.PAPER_INIT, eta=ETA, tau=TAU, iterations=n, window=2,
                               weights=[0, 1]).policies[1:],
        "egpo": peers.egpo(games.PAPER_MATRIX, games.PAPER_INIT, eta=ETA, tau=TAU, iterations=n).policies[1:],
        "onpo": peers.onpo(games.PAPER_MATRIX, games.PAPER_INIT, eta=ETA, iterations=n).policies[1:],
        "inpo_moves": games.linepo(games.PAPER_MATRIX, games.PAPER_INIT, eta=ETA, tau=TAU, inner_steps=2,
                                   iterations=n).policies[1:],
    }
    for run, exact in expected.items():
        spec = json.loads(wiring.prox_fidelity_spec(run))
        steps = pf.steps_from_spec(spec["steps"])
        analogue = np.array(pf.analogue_trajectory(games.PAPER_MATRIX, start, steps))
        full = [k for k, s in enumerate(steps, start=1) if not spec["steps"][k - 1].get("half")]
        np.testing.assert_allclose(analogue[full][:, 0], exact, atol=1e-9, err_msg=run)
        # measured = the analogue itself: every step lands on its target
        rows = pf.fidelity_rows(games.PAPER_MATRIX, list(analogue), steps, run=run)
        assert max(r["kl_to_target"] for r in rows) < 1e-9
    with pytest.raises(InputError, match="anchor"):
        pf.steps_from_spec([{**json.loads(wiring.prox_fidelity_spec("egpo"))["steps"][0], "anchor": [[1, 1.0]]}])


def test_mnpo_scored_nodes_have_their_own_files_and_flags(plan):
    mixed = [node for node in plan.scored.values() if node.mixture]
    assert mixed and all(plan.scored_path(n.id).endswith(f"/{n.id}-mixture.parquet") for n in mixed)
    plain = next(n for n in plan.scored.values() if not n.mixture)
    assert plan.scored_path(plain.id).endswith(f"/{plain.id}.parquet")
    node = mixed[0]
    flags = plan.mixture_flags(node.id)
    assert flags.startswith("--mixture ") and flags.count("=") == len(node.mixture)
    from linepo.commands.score import parse_mixture

    assert parse_mixture(flags.split()[1:]) == [(plan.policy_dir(p), w) for p, w in node.mixture]
    with pytest.raises(InputError, match="WEIGHT=FOLDER"):
        parse_mixture(["results/x"])


def test_describe_shows_the_schedules(plan):
    text = describe(plan)
    assert "run egpo: 4 steps (extragradient schedule" in text and "run onpo: 4 steps (omd schedule" in text
    assert "run mnpo: 4 steps, final" in text


def test_the_registry_records_the_peers():
    from linepo.algorithms import ALGORITHMS
    from linepo.games.runs import EXACT_ALGORITHMS

    expected = {"mnpo": ("inpo", "fixed", "mixture", True), "egpo": ("inpo", "fixed", "extragradient", True),
                "onpo": ("ipo", "current", "omd", False)}
    for name, (loss, reference, schedule, movable) in expected.items():
        a = ALGORITHMS[name]
        assert (a.loss, a.reference, a.schedule, a.movable, a.exact, a.one_pass) == (
            loss, reference, schedule, movable, name, False)
        assert a.exact in EXACT_ALGORITHMS
    assert {a.name for a in ALGORITHMS.values() if a.movable} == {"inpo", "linepo", "mnpo", "egpo"}


def test_score_preferences_with_a_mixture_sums_the_weighted_log_probs(tmp_path):
    pytest.importorskip("torch")
    from helpers import build_tiny_policy, preference_rows

    from linepo.schemas import read_metadata, read_table, write_table
    from linepo.stages.scoring import score_preferences

    tokenizer = build_tiny_policy(tmp_path / "ref", seed=0)
    build_tiny_policy(tmp_path / "a", seed=1, tokenizer=tokenizer)
    write_table(preference_rows(3), tmp_path / "p.parquet", "preferences")
    ref, a = tmp_path / "ref", tmp_path / "a"
    common = dict(batch_size=4, max_length=128, dtype="float32")
    score_preferences(tmp_path / "p.parquet", tmp_path / "one.parquet", reference=ref, anchor=a, **common)
    stats = score_preferences(tmp_path / "p.parquet", tmp_path / "mix.parquet", reference=ref, anchor=a,
                              mixture=[(a, 0.75), (ref, 0.25)], **common)
    assert stats["models_run"] == 2  # the reference is not run twice
    one = read_table(tmp_path / "one.parquet", "scored").to_pylist()
    mix = read_table(tmp_path / "mix.parquet", "scored").to_pylist()
    for o, m in zip(one, mix):
        for side in ("chosen", "rejected"):
            assert m[f"anchor_{side}_logp"] == pytest.approx(
                0.75 * o[f"anchor_{side}_logp"] + 0.25 * o[f"reference_{side}_logp"], abs=1e-5)
            assert m[f"reference_{side}_logp"] == o[f"reference_{side}_logp"]
    assert read_metadata(tmp_path / "mix.parquet")["scoring"]["mixture"][1] == [str(ref), 0.25]


@pytest.mark.slow
def test_the_peers_run_end_to_end_through_snakemake(tmp_path):
    """One round on 2 splits. MNPO, window 2: step 1's pairs are scored against the mixture of
    π_1 and π_0 (rule score_mixture); EGPO: 4 fits, its first INPO's; ONPO: 4 fits, 2
    samplings. steps.tsv names the anchors, a Prox-fidelity row per fit."""
    import csv

    from workflow_utils import dry_run, snakemake, workflow_with_config

    runs = {"mnpo": {"algorithm": "mnpo", "eta": ETA, "eta_tau": ETA_TAU, "rounds": 1, "window": 2},
            "egpo": {"algorithm": "egpo", "eta": ETA, "eta_tau": ETA_TAU, "rounds": 1},
            "onpo": {"algorithm": "onpo", "eta": ETA, "rounds": 1}}
    directory = workflow_with_config(tmp_path / "wf", tiny_config(runs=runs, evaluation={"enabled": False}))
    planned = [rule for rule, _ in dry_run(directory)]
    # trains: MNPO 2 + EGPO 4 − 1 shared + ONPO 4; samples: MNPO 2 + EGPO 4 − 1 + ONPO 2 − 1 (π_0 on s_0)
    assert planned.count("train") == 9 and planned.count("score_mixture") == 1 and planned.count("sample") == 6
    result = snakemake(directory, "--cores", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    def table(run, name):
        with open(directory / f"results/runs/{run}/replicate-0/{name}.tsv") as handle:
            return list(csv.DictReader(handle, delimiter="\t"))

    steps = table("mnpo", "steps")
    assert steps[1]["anchor"].startswith("0.5*results/policies/r1/s0/") and "0.5*results/sft/" in steps[1]["anchor"]
    assert [len(table(run, "prox_fidelity")) for run in runs] == [2, 4, 4]
    assert [row["half"] for row in table("onpo", "steps")] == ["True", "False"] * 2
    assert dry_run(directory) == []


def test_held_out_pairs_are_scored_as_each_steps_training_pairs():
    """Checkpoint selection's loss is the step's own objective: pairs of its sampler, scored
    against its reference and anchor (EGPO's full step: π^t; MNPO: the mixture)."""
    built = build_plan(config({k: RUNS[k] for k in ("mnpo", "egpo", "onpo")},
                              validation={"enabled": True,
                                          "prompts": {"source": "embedded", "split": "eval", "max_prompts": 8}}))
    for run in ("mnpo", "egpo", "onpo"):
        for step in training_steps(built.runs[run]):
            (held_out,) = built.policies[step.policy].validation
            scored = built.scored[held_out]
            assert (scored.reference, scored.anchor, scored.mixture) == (step.reference, step.anchor_policy,
                                                                         step.mixture)
            assert built.samples[built.prefs[scored.prefs[0]].sample].policy == step.sampler
    assert any(s.anchor for s in training_steps(built.runs["egpo"]))
    assert any(s.mixture for s in built.runs["mnpo"])

"""Prox fidelity (linepo.evaluation.prox_fidelity): each loss's exact target, the KL direction,
the exact analogue against the tabular dynamics of linepo.games.game, the per-run command on
fixed-distribution policies, and the plan's wiring.

    HF_HUB_OFFLINE=1 python -m pytest -q tests/test_prox_fidelity.py
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import yaml

from linepo.errors import InputError
from linepo.evaluation import prox_fidelity as pf
from linepo.games import game
from linepo.games.game import PAPER_INIT, PAPER_MATRIX
from linepo.workflow.config import validate_config
from linepo.workflow.wiring import Wiring
from workflow_utils import REPO

BASE = yaml.safe_load((REPO / "config.yaml").read_text())


def augmented(matrix=PAPER_MATRIX) -> np.ndarray:
    """The synthetic oracle's game with its ``unmatched`` category (loses to everything)."""
    from linepo.stages.judges import SyntheticJudge

    return SyntheticJudge(matrix=matrix).augmented_matrix


def wiring(edit=None) -> Wiring:
    config = copy.deepcopy(BASE)
    if edit:
        edit(config)
    return Wiring(validate_config(config))


def spec_steps(w: Wiring, run: str) -> list[pf.StepSpec]:
    return pf.steps_from_spec(json.loads(w.prox_fidelity_spec(run))["steps"])


MU = np.array([0.2, 0.5, 0.29, 0.01])
REF = np.array([0.3, 0.3, 0.3, 0.1])


def expected_counts(mu):
    """Expected (i beat j) counts and appearances of pairs drawn from μ ⊗ μ, scaled past 1."""
    scale = 1.0 / mu.min()
    return 2 * scale * np.outer(mu, mu) * augmented(), 2 * scale * mu


# ----------------------------------------------------------------------------- KL and TV


def test_kl_and_tv_per_prompt_are_the_definitions():
    p = np.array([[0.2, 0.8], [0.5, 0.5], [1.0, 0.0]])
    q = np.array([[0.5, 0.5], [0.5, 0.5], [0.9, 0.1]])
    assert np.allclose(pf.kl_per_prompt(p, q), [game.kl(a, b) for a, b in zip(p, q)])
    assert pf.kl_per_prompt(p, q)[1] == 0 and pf.kl_per_prompt(p, p).max() == 0
    assert np.allclose(pf.tv_per_prompt(p, q), [0.3, 0.0, 0.1])
    assert pf.kl_per_prompt([[0.5, 0.5]], [[1.0, 0.0]])[0] == math.inf


def test_kl_trained_to_target_is_the_prox_objective_given_up():
    """F(z) = ⟨g, z⟩ − KL(z ‖ μ) is maximised by T = μ e^g / Z, and F(T) − F(z) = KL(z ‖ T):
    the direction KL(trained ‖ target), not the reverse."""
    rng = np.random.default_rng(0)
    g = 4.0 * (augmented() @ MU)
    target = game.prox(MU, g)

    def objective(z):
        return float(g @ z) - game.kl(z, MU)

    for _ in range(5):
        z = rng.dirichlet(np.ones(4))
        gap = objective(target) - objective(z)
        assert gap == pytest.approx(pf.kl_per_prompt([z], [target])[0], abs=1e-12)
        assert gap != pytest.approx(pf.kl_per_prompt([target], [z])[0], abs=1e-3)


# ----------------------------------------------------------------------------- targets per loss


def test_the_inpo_target_is_the_regularised_step_and_the_inpo_loss_minimiser():
    from linepo.games.sampled import fit_policy

    target = pf.prox_target("inpo", augmented(), MU, REF, eta=4.0, eta_tau=0.6)
    closed = REF ** 0.6 * MU ** 0.4 * np.exp(4.0 * augmented() @ MU)
    assert np.allclose(target, closed / closed.sum(), atol=1e-12)
    assert np.allclose(target, game.regularized_step(augmented(), MU, REF, eta=4.0, tau=0.15), atol=1e-15)
    # The loss the LLM trainer minimises, on pairs from μ ⊗ μ labelled by P: the same policy.
    fitted = fit_policy("inpo", *expected_counts(MU), current=MU, reference=REF, eta=4.0, tau=0.15)
    assert np.allclose(fitted, target, atol=1e-6)


def test_the_ipo_target_is_prox_of_the_reference_and_the_ipo_loss_minimiser():
    from linepo.games.sampled import fit_policy

    target = pf.prox_target("ipo", augmented(), MU, REF, eta=4.0)
    assert np.allclose(target, game.prox(REF, 4.0 * augmented() @ MU), atol=1e-15)
    fitted = fit_policy("ipo", *expected_counts(MU), current=MU, reference=REF, eta=4.0, tau=0.0)
    assert np.allclose(fitted, target, atol=1e-6)
    # Iterative IPO and SPPO (π_ref = μ_k): one mirror-descent step.
    md = game.mirror_descent(augmented(), MU, eta=4.0, iterations=1).policies[1]
    for loss in ("ipo", "sppo"):
        assert np.allclose(pf.prox_target(loss, augmented(), MU, MU, eta=4.0), md, atol=1e-15)


def test_the_sppo_loss_minimiser_is_near_but_not_its_prox_target():
    """SPPO fixes the log-partition at η/2: over normalised policies its loss's minimiser is
    not exactly the Prox step it approximates (that gap counts as infidelity)."""
    from linepo.games.sampled import fit_policy

    fitted = fit_policy("sppo", *expected_counts(MU), current=MU, reference=MU, eta=4.0, tau=0.0)
    target = pf.prox_target("sppo", augmented(), MU, MU, eta=4.0)
    assert 1e-4 < pf.kl_per_prompt([fitted], [target])[0] < 0.01


def test_the_dpo_target_is_the_expected_loss_fit_and_a_prox_step_only_for_bradley_terry():
    # A Bradley–Terry matrix P[i, j] = σ(s_i − s_j): DPO's fit is the Prox step ref·e^{η s}.
    s = np.array([0.0, 0.7, -0.4])
    bt = 1 / (1 + np.exp(-(s[:, None] - s[None, :])))
    mu, ref = np.array([0.2, 0.5, 0.3]), np.array([0.4, 0.4, 0.2])
    target = pf.prox_target("dpo", bt, mu, ref, eta=2.0)
    assert np.allclose(target, game.prox(ref, 2.0 * s), atol=1e-8)
    # The paper's intransitive game: no Prox step; the fit moves most mass to "detailed" and
    # drives the surely-losing "unmatched" category's mass towards 0 (an infimum).
    target = pf.prox_target("dpo", augmented(), MU, MU, eta=4.0)
    assert target[2] > 0.85 and target[3] < 1e-9
    assert not np.allclose(target, pf.prox_target("ipo", augmented(), MU, MU, eta=4.0), atol=0.05)


def test_the_dpo_fit_is_the_tabular_twins_fit_of_the_dpo_loss():
    """The batched Newton fit minimises what the trainer's DPO loss (through the tabular twin's
    torch fit, on expected counts) minimises; all prompts at once, each as if alone."""
    from linepo.games.sampled import fit_policy

    mus = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3], [0.05, 0.05, 0.9]])
    refs = np.array([[0.4, 0.4, 0.2], [0.6, 0.1, 0.3], [0.3, 0.3, 0.4]])
    batch = pf.prox_targets("dpo", PAPER_MATRIX, mus, refs, eta=4.0)
    for mu, ref, target in zip(mus, refs, batch):
        scale = 1.0 / mu.min()
        fitted = fit_policy("dpo", 2 * scale * np.outer(mu, mu) * PAPER_MATRIX, 2 * scale * mu, current=mu,
                            reference=ref, eta=4.0, tau=0.0)
        assert np.allclose(target, fitted, atol=1e-6)
        assert np.allclose(target, pf.prox_target("dpo", PAPER_MATRIX, mu, ref, eta=4.0), atol=1e-12)


def test_exploitability_is_the_reports():
    from linepo.evaluation.exploitability import exploitability_of
    from linepo.stages.judges import SyntheticJudge

    judge = SyntheticJudge()
    dists = np.array([MU, REF, [4 / 11, 3 / 11, 4 / 11, 0.0]])
    assert pf.exploitability(judge.augmented_matrix, dists) == pytest.approx(
        np.mean([exploitability_of(judge, d) for d in dists]), abs=1e-15)
    assert pf.exploitability(judge.augmented_matrix, dists[2]) < 1e-12


# ----------------------------------------------------------------------------- the exact analogue


@pytest.mark.parametrize("run, dynamics", [
    ("inpo", lambda: game.inpo(PAPER_MATRIX, PAPER_INIT, eta=4.0, tau=0.15, iterations=12)),
    ("linepo", lambda: game.linepo(PAPER_MATRIX, PAPER_INIT, eta=4.0, tau=0.15, inner_steps=4, iterations=12)),
    ("iter_ipo", lambda: game.mirror_descent(PAPER_MATRIX, PAPER_INIT, eta=4.0, iterations=12)),
])
def test_the_analogue_of_the_planned_schedule_is_the_tabular_dynamics(run, dynamics):
    """The default's 3 rounds × 4 splits, η = 4, ητ = 0.6, read off the plan: iterate for iterate."""
    steps = spec_steps(wiring(), run)
    analogue = pf.analogue_trajectory(PAPER_MATRIX, PAPER_INIT[None, :], steps)
    assert np.array_equal(np.vstack(analogue), dynamics().policies)


def test_the_analogue_follows_a_reference_moved_at_chosen_rounds_and_round_overrides():
    def edit(config):
        config["runs"]["linepo"].update(reference_moves=[3], round_overrides={"3": {"eta": 2.0}})

    steps = spec_steps(wiring(edit), "linepo")
    assert [s.reference for s in steps] == [0] * 8 + [8] * 4 and [s.eta for s in steps] == [4.0] * 8 + [2.0] * 4
    policies, reference = [PAPER_INIT], PAPER_INIT
    for k in range(1, 13):
        eta = 4.0 if k <= 8 else 2.0
        reference = policies[8] if k == 9 else reference
        policies.append(game.regularized_step(PAPER_MATRIX, policies[-1], reference, eta=eta, tau=0.6 / eta))
    analogue = pf.analogue_trajectory(PAPER_MATRIX, PAPER_INIT[None, :], steps)
    assert np.allclose(np.vstack(analogue), np.vstack(policies), atol=1e-15)


def test_a_run_whose_steps_land_on_their_targets_has_kl_0_and_the_analogues_exploitability():
    rng = np.random.default_rng(1)
    start = rng.dirichlet(np.ones(4) * 3, size=5)  # 5 prompts
    for run in ("inpo", "linepo", "iter_ipo", "dpo", "ipo"):
        steps = spec_steps(wiring(), run)
        exact = pf.analogue_trajectory(augmented(), start, steps)
        rows = pf.fidelity_rows(augmented(), exact, steps, run=run, algorithm=run)
        assert [r["step"] for r in rows] == list(range(1, len(steps) + 1))
        for row in rows:
            assert row["kl_to_target"] < 1e-9 and row["tv_to_target"] < 1e-9 and row["kl_to_analogue"] < 1e-9
            assert row["measured_exploitability"] == pytest.approx(row["analogue_exploitability"], abs=1e-9)
            assert row["target_exploitability"] == pytest.approx(row["analogue_exploitability"], abs=1e-9)
        summary = pf.run_summary(rows)
        assert summary["median_kl_to_target"] < 1e-9 and abs(summary["analogue_gap"]) < 1e-9


def test_a_step_that_misses_its_target_is_measured_against_the_measured_sampler():
    """Target k is from the measured μ_k, the analogue from its own iterate: one bad step
    shows in its own KL only, and in every later step's distance to the analogue."""
    steps = spec_steps(wiring(), "inpo")
    start = np.vstack([MU, REF])
    measured = pf.analogue_trajectory(augmented(), start, steps[:1])
    measured.append(np.vstack([MU, MU]))  # step 2 did nothing: μ_2 = μ_1's start
    for spec in steps[2:]:
        measured.append(pf.prox_targets(spec.loss, augmented(), measured[-1], measured[spec.reference],
                                        eta=spec.eta, eta_tau=spec.eta_tau))
    rows = pf.fidelity_rows(augmented(), measured, steps)
    kls = [r["kl_to_target"] for r in rows]
    assert kls[1] > 0.01 and max(kls[:1] + kls[2:]) < 1e-9
    assert rows[0]["kl_to_analogue"] < 1e-9 and min(r["kl_to_analogue"] for r in rows[1:]) > 1e-6


def test_a_category_the_policy_never_plays_is_floored_not_degenerate():
    dists = pf.distributions([[0.5, 0.5, 0.0, 0.0]], 4)
    assert dists.min() == pytest.approx(pf.FLOOR) and dists.sum() == pytest.approx(1.0)
    target = pf.prox_targets("inpo", augmented(), dists, dists, eta=4.0, eta_tau=0.6)
    assert np.all(np.isfinite(pf.kl_per_prompt(dists, target)))


# ----------------------------------------------------------------------------- bad inputs


GOOD = {"step": 1, "round": 1, "split": "0", "loss": "inpo", "eta": 4.0, "eta_tau": 0.6, "reference": 0}


@pytest.mark.parametrize("steps, message", [
    ([], "steps: a non-empty list"),
    ([{**GOOD, "loss": "kto"}], "steps[0]: unknown loss 'kto'"),
    ([{**GOOD, "eta": 0}], "steps[0]: eta must be a positive number"),
    ([{**GOOD, "eta_tau": None}], "steps[0]: an inpo step needs eta_tau in (0, 1]"),
    ([{**GOOD, "eta_tau": 1.5}], "steps[0]: an inpo step needs eta_tau"),
    ([{**GOOD, "reference": 1}], "steps[0]: reference 1 is not an earlier iterate (0..0)"),
    ([GOOD, {**GOOD, "step": 3}], "steps[1]: step 3, expected 2"),
    ([{"step": 1}], "steps[0]: needs step, round, split, loss, eta and reference"),
])
def test_bad_steps_are_one_line_naming_the_step(steps, message):
    with pytest.raises(InputError) as err:
        pf.steps_from_spec(steps)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


@pytest.mark.parametrize("probs, message", [
    ([[0.5, 0.5]], "x: needs (prompts, 4) probabilities"),
    ([[0.5, 0.5, -0.1, 0.1]], "x: probabilities must be finite and non-negative"),
    ([[0.5, 0.5, 0.1, 0.1]], "x: row 0 sums to 1.2, not 1"),
])
def test_bad_distributions_are_one_line(probs, message):
    with pytest.raises(InputError, match=f"^{message.replace('(', '.').replace(')', '.')}"):
        pf.distributions(probs, 4, "x")


def test_fidelity_rows_need_one_iterate_per_step_and_a_square_matrix():
    steps = pf.steps_from_spec([GOOD])
    with pytest.raises(InputError, match="^measured: needs 2 iterates"):
        pf.fidelity_rows(augmented(), [MU[None]], steps)
    with pytest.raises(InputError, match="^matrix: must be square"):
        pf.fidelity_rows(np.ones((2, 3)), [MU[None], MU[None]], steps)
    with pytest.raises(InputError, match="^measured: iterates over different numbers of prompts"):
        pf.fidelity_rows(augmented(), [MU[None], np.vstack([MU, MU])], steps)


# ----------------------------------------------------------------------------- the plan's wiring


def test_every_run_of_the_synthetic_default_is_diagnosed_with_its_references():
    w = wiring()
    assert w.prox_fidelity_runs == list(BASE["runs"]) and "results/summary/prox_fidelity.tsv" in w.llm_targets()
    refs = {run: [s.reference for s in spec_steps(w, run)] for run in w.prox_fidelity_runs}
    assert refs["dpo"] == refs["ipo"] == [0]  # one pass from SFT: sampler and reference are SFT
    assert refs["inpo"] == [0] * 12  # π_ref = SFT throughout
    assert refs["iter_ipo"] == list(range(12))  # π_ref = μ_k
    assert refs["linepo"] == [0] * 4 + [4] * 4 + [8] * 4  # the reference moves every round
    spec = json.loads(w.prox_fidelity_spec("linepo"))
    assert spec["iterates"][0] == w.plan.policy_dir(w.plan.sft) and len(spec["iterates"]) == 13
    assert {s["loss"] for s in spec["steps"]} == {"inpo"}
    assert {json.loads(w.prox_fidelity_spec(r))["steps"][0]["loss"] for r in ("dpo", "ipo", "iter_ipo")} == {
        "dpo", "ipo"}


@pytest.mark.parametrize("judge", [
    {"type": "synthetic", "rule": "length", "length_thresholds": [3, 6]},
    {"type": "synthetic", "case_sensitive": False},
    {"type": "pairwise_lm", "model": "NCSOFT/Llama-3-OffsetBias-8B"},
])
def test_a_judge_without_exact_category_mixes_plans_no_prox_fidelity(judge, monkeypatch):
    monkeypatch.setenv("LINEPO_SKIP_ENV_CHECKS", "1")
    w = wiring(lambda c: c.update(judge=judge))
    assert w.prox_fidelity_runs == [] and not any("prox_fidelity" in t for t in w.llm_targets())
    assert w.prox_fidelity_outputs(str) == {}


def test_the_paper_config_plans_no_prox_fidelity():
    from linepo.workflow.config import load_config

    w = Wiring(load_config(str(REPO / "configs/paper.yaml")))
    assert w.prox_fidelity_runs == [] and w.prox_fidelity_outputs(str) == {}


# ----------------------------------------------------------------------------- the commands


@pytest.fixture(scope="module")
def policies(tmp_path_factory):
    """Fixed-distribution policies on the embedded tokenizer: SFT plays [0.2, 0.5, 0.3] on every
    prompt; "exact" steps play the INPO targets of a LINE-PO schedule, "off" a wrong mix."""
    pytest.importorskip("torch")
    from linepo import toy
    from linepo.stages.models import save_policy
    from linepo.testing import fixed_distribution_lm

    root = tmp_path_factory.mktemp("prox")
    _, tokenizer = toy.build_random(root / "random")
    tokens = toy.style_token_ids(tokenizer)  # {style: token id}, in the oracle's category order

    def policy(name, mix):
        folder = root / name
        save_policy(fixed_distribution_lm(tokenizer, {tokens[s]: math.log(p) for s, p in zip(toy.STYLES, mix)}),
                    tokenizer, folder)
        return str(folder)

    sft = np.array([0.2, 0.5, 0.3, 0.0])
    steps = [{**GOOD, "step": 1}, {**GOOD, "step": 2, "round": 2, "reference": 1}]
    exact = pf.analogue_trajectory(augmented(), pf.distributions(sft, 4), pf.steps_from_spec(steps))
    folders = [policy("sft", sft[:3])] + [policy(f"step{k}", exact[k][0, :3]) for k in (1, 2)]
    return {"folders": folders, "steps": steps, "exact": exact, "off": policy("off", [0.6, 0.2, 0.2]),
            "root": root}


@pytest.fixture(scope="module")
def eval_prompts(tmp_path_factory):
    from linepo import toy
    from linepo.schemas import write_table

    path = tmp_path_factory.mktemp("prompts") / "eval.parquet"
    write_table(toy.prompt_rows("eval", 6), path, "prompts")
    return path


def fidelity(policies, eval_prompts, tmp_path, iterates, *extra):
    from linepo.cli import main

    spec = json.dumps({"run": "lp", "algorithm": "linepo", "iterates": iterates, "steps": policies["steps"]})
    tsv, probs = tmp_path / "lp.tsv", tmp_path / "lp.json"
    code = main(["prox-fidelity", "--spec", spec, "--prompts", str(eval_prompts), "--tsv", str(tsv),
                 "--probs", str(probs), *extra])
    return code, tsv, probs


def test_policies_that_play_their_targets_have_kl_0_through_the_command(policies, eval_prompts, tmp_path):
    from linepo.cli import main

    code, tsv, probs = fidelity(policies, eval_prompts, tmp_path, policies["folders"])
    assert code == 0
    rows = pf.read_tsv(tsv)
    assert [(r["step"], r["round"], r["method"]) for r in rows] == [("1", "1", "exact"), ("2", "2", "exact")]
    for row in rows:
        assert float(row["kl_to_target"]) < 1e-6 and float(row["tv_to_target"]) < 1e-4
        assert float(row["measured_exploitability"]) == pytest.approx(float(row["analogue_exploitability"]), abs=1e-4)
    saved = json.loads(probs.read_text())
    assert saved["categories"] == ["brief", "plain", "detailed", "unmatched"] and saved["prompts"] == 6
    assert np.allclose(saved["iterates"][2]["probs"], policies["exact"][2][0], atol=1e-5)
    # A policy that misses its step, then the collected table, summary and figure.
    wrong = [policies["folders"][0], policies["off"], policies["folders"][2]]
    off_dir = tmp_path / "off"
    off_dir.mkdir()
    assert fidelity(policies, eval_prompts, off_dir, wrong)[0] == 0
    off = pf.read_tsv(off_dir / "lp.tsv")
    assert float(off[0]["kl_to_target"]) > 0.05
    out = tmp_path / "summary"
    assert main(["prox-fidelity-table", "--run", f"exact={tsv}", "--run", f"off={off_dir / 'lp.tsv'}",
                 "--tsv", str(out / "t.tsv"), "--runs-tsv", str(out / "r.tsv"), "--figure", str(out / "f.png")]) == 0
    assert len(pf.read_tsv(out / "t.tsv")) == 4
    summary = (out / "r.tsv").read_text().splitlines()
    assert summary[0].split("\t") == list(pf.RUN_COLUMNS) and len(summary) == 3
    assert (out / "f.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("change, message", [
    (lambda a: a.update(spec="{not json"), "--spec: not JSON"),
    (lambda a: a.update(spec=json.dumps({"iterates": ["a"], "steps": [GOOD]})), "--spec: 1 steps need 2 iterates"),
    (lambda a: a.update(judge='{"type": "pairwise_lm", "model": "x"}'), "prox fidelity needs the synthetic oracle"),
    (lambda a: a.update(spec=json.dumps({"iterates": ["nowhere/a", "nowhere/b"], "steps": [GOOD]})), "nowhere/a"),
])
def test_bad_command_input_is_one_line_and_exit_2(change, message, policies, eval_prompts, tmp_path, capsys):
    from linepo.cli import main

    args = {"spec": json.dumps({"run": "lp", "iterates": policies["folders"][:2], "steps": policies["steps"][:1]}),
            "judge": '{"type": "synthetic"}'}
    change(args)
    code = main(["prox-fidelity", "--spec", args["spec"], "--prompts", str(eval_prompts), "--judge-config",
                 args["judge"], "--tsv", str(tmp_path / "t.tsv"), "--probs", str(tmp_path / "p.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "t.tsv").exists()


def test_a_missing_or_foreign_table_is_one_line(tmp_path, capsys):
    from linepo.cli import main

    (tmp_path / "steps.tsv").write_text("round\tsplit\n1\t0\n")
    for item, message in [(f"a={tmp_path / 'none.tsv'}", "file not found"), (f"a={tmp_path / 'steps.tsv'}",
                          "not a prox-fidelity table"), ("nofile", "expected NAME=FILE")]:
        code = main(["prox-fidelity-table", "--run", item, "--tsv", str(tmp_path / "t.tsv"),
                     "--runs-tsv", str(tmp_path / "r.tsv")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], err


def test_policies_whose_first_words_are_not_one_token_give_nan_rows_and_a_warning(policies, eval_prompts, tmp_path,
                                                                                  monkeypatch, capsys):
    from linepo.cli import main
    from linepo.evaluation import exploitability

    monkeypatch.setattr(exploitability, "exact_category_probs", lambda *a, **k: None)
    code, tsv, probs = fidelity(policies, eval_prompts, tmp_path, policies["folders"])
    assert code == 0 and "warning: lp: unavailable" in capsys.readouterr().err
    rows = pf.read_tsv(tsv)
    assert [r["method"] for r in rows] == ["unavailable"] * 2 and math.isnan(float(rows[0]["kl_to_target"]))
    assert json.loads(probs.read_text())["iterates"][0]["probs"] is None
    assert main(["prox-fidelity-table", "--run", f"lp={tsv}", "--tsv", str(tmp_path / "t.tsv"),
                 "--runs-tsv", str(tmp_path / "r.tsv"), "--figure", str(tmp_path / "f.png")]) == 0
    assert "nan" in (tmp_path / "r.tsv").read_text()

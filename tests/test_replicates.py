"""Replicates as configuration (issue 15, item 1), without Snakemake: the config section, the
plan's ids (replicate 0's are the config's without replicates; a new replicate adds only its own
nodes; what no varied stage reaches is shared), the seeds that make each varied stage differ,
and the pooled tables (mean ± standard error of the per-replicate ones).

    HF_HUB_OFFLINE=1 python -m pytest -q tests/test_replicates.py
"""

from __future__ import annotations

import copy
import csv
import json
import math
import statistics

import pytest
import yaml

from linepo.cli import main
from linepo.errors import InputError
from linepo.workflow.config import validate_config
from linepo.workflow.evalplan import build_eval_plan
from linepo.workflow.evalplan import describe as describe_evaluation
from linepo.workflow.plan import build_plan, describe
from linepo.workflow.preflight import fixed_outputs
from linepo.workflow.wiring import Wiring, node_seed
from workflow_utils import REPO, default_config_with, default_realisation

DEFAULT = yaml.safe_load((REPO / "config.yaml").read_text())
BASE = default_realisation()  # each test sets its own replicates
IMPORTED = {"sft": "Qwen/Qwen2-1.5B", "tokenizer": "Qwen/Qwen2-1.5B"}  # a hub id: nothing is loaded


def test_the_default_runs_at_least_two_independent_replicates():
    """The replicates issue: the default reports mean ± SE, so it needs n ≥ 2 that vary every seed."""
    section = validate_config(copy.deepcopy(DEFAULT))["replicates"]
    assert section["count"] >= 2
    assert set(section["vary"]) == {"sft", "sampling", "judging"}


config_with = default_config_with


def plan_with(replicates=None, edit=None):
    return build_plan(config_with(replicates, edit))


def node_ids(plan) -> set[str]:
    return {*plan.policies, *plan.samples, *plan.prefs, *plan.scored}


def replicate_ids(plan, replicate: int) -> set[str]:
    """Every node one replicate's runs reach: its SFT, its steps' policies and their data."""
    found = {plan.sfts[replicate]}
    for steps in plan.replicates[replicate].values():
        for step in steps:
            node = plan.policies[step.policy]
            found |= {step.policy, *node.scored, *node.validation}
            for scored in (*node.scored, *node.validation):
                for pref in plan.scored[scored].prefs:
                    found |= {pref, plan.prefs[pref].sample}
    return found


# ----------------------------------------------------------------------------- the config


@pytest.mark.parametrize("given, expected", [
    (None, {"count": 1, "vary": ["sft", "sampling", "judging"]}),
    (3, {"count": 3, "vary": ["sft", "sampling", "judging"]}),
    ({"count": 2}, {"count": 2, "vary": ["sft", "sampling", "judging"]}),
    ({"count": 2, "vary": ["judging", "sampling"]}, {"count": 2, "vary": ["judging", "sampling"]}),
])
def test_the_section_and_its_shorthand(given, expected):
    assert config_with(given)["replicates"] == expected


def test_unset_or_null_is_one_replicate_and_an_imported_sft_does_not_vary_by_default():
    config = copy.deepcopy(BASE)
    config["replicates"] = None
    assert validate_config(config)["replicates"]["count"] == 1
    imported = config_with(2, lambda c: c["policy"].update(IMPORTED))["replicates"]
    assert imported == {"count": 2, "vary": ["sampling", "judging"]}
    assert config_with({"count": 2, "vary": ["sft"]}, lambda c: c["policy"].update(sft="build",
                                                                                 build={"base": "Qwen/Qwen2-1.5B"}))


@pytest.mark.parametrize("given, key, words", [
    (0, "replicates.count", "minimum"),
    (-2, "replicates.count", "minimum"),
    (True, "replicates", "positive integer"),
    ("3", "replicates", "positive integer"),
    (2.5, "replicates", "positive integer"),
    ({"count": 2.0}, "replicates.count", "whole number"),
    ({"count": True}, "replicates.count", "integer"),
    ({"count": 2, "vary": []}, "replicates.vary", "non-empty"),
    ({"count": 2, "vary": ["sampling", "sampling"]}, "replicates.vary", "non-unique"),
    ({"count": 2, "vary": ["samplng"]}, "replicates.vary.0", "did you mean sampling?"),
    ({"count": 2, "vary": ["sampling", "training"]}, "replicates.vary.1", "known: sft, sampling, judging"),
    ({"cont": 2}, "replicates.cont", "did you mean count?"),
])
def test_a_bad_section_is_one_line_naming_the_key(given, key, words):
    with pytest.raises(InputError) as info:
        config_with(given)
    message = str(info.value)
    assert message.startswith(f"config key {key}:") and words in message and "\n" not in message, message


def test_varying_an_imported_sft_is_refused():
    with pytest.raises(InputError, match=r"^config key replicates.vary: sft: policy.sft Qwen/Qwen2-1.5B is imported"):
        config_with({"count": 2, "vary": ["sft", "sampling"]}, lambda c: c["policy"].update(IMPORTED))


# ----------------------------------------------------------------------------- the plan


@pytest.mark.parametrize("vary", [None, ["judging"], ["sampling"], ["sft"]])
def test_replicate_0_has_the_ids_of_the_config_without_replicates(vary):
    alone = plan_with()
    three = plan_with({"count": 3, **({"vary": vary} if vary else {})})
    assert three.sft == alone.sft and three.sfts[0] == alone.sft and three.runs == alone.runs
    assert three.replicates[0] is three.runs
    assert node_ids(alone) == replicate_ids(three, 0) | {alone.sft}
    for kind in ("policies", "samples", "prefs", "scored"):
        assert set(getattr(alone, kind)) <= set(getattr(three, kind))
    assert plan_with(1).runs == alone.runs  # count 1 given is the default


def test_a_third_replicate_adds_only_its_own_nodes():
    two, three = plan_with(2), plan_with(3)
    assert node_ids(two) <= node_ids(three)
    new = node_ids(three) - node_ids(two)
    assert new == replicate_ids(three, 2) and not new & (replicate_ids(three, 0) | replicate_ids(three, 1))
    assert {r: three.replicates[r] for r in (0, 1)} == two.replicates
    assert three.prompts == two.prompts and three.eval_prompts == two.eval_prompts


def test_every_varied_stage_has_new_ids_and_what_none_reaches_is_shared():
    everything = plan_with(2)
    assert len(set(everything.sfts.values())) == 2
    assert not replicate_ids(everything, 0) & replicate_ids(everything, 1)  # nothing shared but the prompts

    sampling = plan_with({"count": 2, "vary": ["sampling"]})  # one SFT policy for both
    assert sampling.sfts == {0: sampling.sft, 1: sampling.sft}
    assert not (replicate_ids(sampling, 0) - {sampling.sft}) & replicate_ids(sampling, 1)
    assert sampling.counts()["policies"] == 2 * plan_with().counts()["policies"]

    judging = plan_with({"count": 2, "vary": ["judging"]})
    from_sft = {s for s, node in judging.samples.items() if node.policy == judging.sft}
    assert len(from_sft) == BASE["prompts"]["num_splits"]  # the SFT's samples: computed once
    judged = [{p for p, node in judging.prefs.items() if node.sample == s} for s in from_sft]
    assert all(len(prefs) == 2 for prefs in judged)  # each judged once per replicate
    later = (replicate_ids(judging, 1) & set(judging.samples)) - from_sft  # sampled by replicate 1's policies
    assert later and not later & replicate_ids(judging, 0)


def test_each_varied_stage_gets_its_own_seed_and_replicate_0_keeps_its_params():
    config = config_with(2)
    wiring = Wiring(config)
    plan = wiring.plan
    embedded = config["policy"]["embedded"]
    # Replicate 0: the rule's params exactly as before replicates existed (so nothing reruns).
    assert wiring.sft_embedded(plan.sfts[0]) == embedded and repr(wiring.sft_embedded(plan.sfts[0])) == repr(embedded)
    assert wiring.sft_embedded(plan.sfts[1])["seed"] == node_seed(plan.sfts[1]) != embedded["seed"]
    # Sample and judge jobs are seeded by their ids: every replicate-1 seed is new.
    seeds = [{node_seed(n) for n in replicate_ids(plan, r) if n in table} for r in (0, 1)
             for table in (plan.samples, plan.prefs)]
    assert not seeds[0] & seeds[2] and not seeds[1] & seeds[3]

    build = config_with(2, lambda c: c["policy"].update(sft="build", build={"base": "Qwen/Qwen2-1.5B", "seed": 7}))
    built = Wiring(build)
    before = json.dumps({k: v for k, v in build["policy"]["build"].items()
                         if k not in ("base", "data", "split", "messages_column")}, sort_keys=True)
    assert built.sft_build_settings(built.plan.sfts[0]) == before  # the rule's params as before
    assert json.loads(built.sft_build_settings(built.plan.sfts[1]))["seed"] == node_seed(built.plan.sfts[1])


def test_paths_targets_and_fixed_outputs_name_every_replicate():
    wiring = Wiring(config_with(2))
    assert wiring.plan.path("steps", run="inpo", replicate=1) == "results/runs/inpo/replicate-1/steps.tsv"
    targets = wiring.llm_targets()
    assert {f"results/runs/{run}/replicate-{r}/steps.tsv" for run in BASE["runs"] for r in (0, 1)} <= set(targets)
    assert {"results/summary/exploitability.tsv", "results/summary/prox_fidelity.tsv"} <= set(targets)
    outputs = fixed_outputs(wiring)
    assert {"results/runs/inpo/replicate-1/steps.tsv", "results/runs/inpo/replicate-1/prox_fidelity.tsv",
            "results/summary/replicates/prox_fidelity-1.tsv", "results/summary/prox_fidelity.tsv"} <= set(outputs)
    one = fixed_outputs(Wiring(config_with()))
    assert not any("replicate-1" in path for path in one)
    assert one["results/runs/inpo/replicate-0/steps.tsv"] == outputs["results/runs/inpo/replicate-0/steps.tsv"]
    assert one["results/summary/"] != outputs["results/summary/"]  # another replicate's reports in it
    flags = wiring.exploitability_table_flags(1)
    assert f"--report sft={wiring.plan.exploitability_path(wiring.plan.sfts[1])}" in flags


def test_evaluation_covers_every_replicate_and_describe_shows_the_replicates():
    alone, two = config_with(), config_with(2)
    plan = build_plan(two)
    eplan = build_eval_plan(two, plan)
    assert eplan.checkpoints == build_eval_plan(alone, build_plan(alone)).checkpoints  # replicate 0's: as before
    assert list(eplan.replicates) == [0, 1] and eplan.view(1).checkpoints[0].policy == plan.sfts[1]
    assert "per replicate, 2 replicates" in describe_evaluation(eplan)  # more in tests/test_replicate_eval.py
    text = describe(plan)
    assert "replicates: 2, varying sft, sampling, judging" in text and "run inpo (replicate 1): 12 steps" in text
    assert "replicates: 1" in describe(build_plan(alone)) and "(replicate 0)" not in describe(build_plan(alone))


# ----------------------------------------------------------------------------- the varied stages' bytes


def test_a_replicates_sft_differs_and_is_reproducible(tmp_path):
    pytest.importorskip("torch")
    from linepo import toy

    plan = plan_with(2)
    seeds = [Wiring(config_with(2)).sft_embedded(plan.sfts[r])["seed"] for r in (0, 1)]
    tiny = {"steps": 2, "num_prompts": 12, "hidden_size": 32, "num_hidden_layers": 1, "intermediate_size": 64}
    for name, seed in (("r0", seeds[0]), ("r1", seeds[1]), ("r1-again", seeds[1])):
        toy.build(tmp_path / name, seed=seed, **tiny)
    weights = {name: (tmp_path / name / "model.safetensors").read_bytes() for name in ("r0", "r1", "r1-again")}
    assert weights["r0"] != weights["r1"] and weights["r1"] == weights["r1-again"]


def test_a_judging_replicate_draws_other_coins_on_the_same_samples():
    from linepo.stages.judges import make_judge

    plan = plan_with({"count": 2, "vary": ["judging"]})
    sample = next(s for s, node in plan.samples.items() if node.policy == plan.sft and node.split == "0")
    seeds = [node_seed(p) for p, node in plan.prefs.items() if node.sample == sample]
    judge = make_judge({"type": "synthetic"})
    words = ["Briefly", "Sure", "Certainly"]
    prompts = [f"prompt {i}" for i in range(60)]
    a = [f"{words[i % 3]} answer {i}" for i in range(60)]
    b = [f"{words[(i + 1) % 3]} reply {i}" for i in range(60)]
    (p0, o0, _), (p1, o1, _) = (judge.judge(prompts, a, b, seed=s) for s in seeds)
    assert len(seeds) == 2 and list(p0) == list(p1) and list(o0) != list(o1)


# ----------------------------------------------------------------------------- pooled tables


def read(path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def mean_and_se(values):
    values = [float(v) for v in values]
    return statistics.mean(values), statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan


def test_mean_se_is_the_sample_standard_error_and_nan_for_one():
    from linepo.evaluation.pooled import mean_se

    assert mean_se([1.0, 2.0, 4.0]) == pytest.approx((7 / 3, statistics.stdev([1, 2, 4]) / math.sqrt(3)))
    mean, se = mean_se([0.25])
    assert mean == 0.25 and math.isnan(se)
    assert all(math.isnan(x) for x in mean_se([0.1, float("nan")]))


def exploitability_tables(tmp_path, replicates: int):
    """Per-replicate tables written by linepo exploitability-table from JSON reports."""
    paths = []
    for r in range(replicates):
        reports = []
        for k, run in enumerate(("sft", "inpo", "linepo")):
            mix = [0.2 + 0.01 * r * k, 0.5 - 0.02 * r, 0.3 + 0.01 * r * (2 - k)]
            report = {"exploitability": 0.1 / (k + 1) + 0.0137 * r * r, "exploitability_stderr": 0.0, "method": "exact",
                      "category_distribution": dict(zip(("brief", "plain", "detailed", "unmatched"),
                                                        [*mix, 1 - sum(mix)])), "policy": f"p{r}{k}"}
            path = tmp_path / f"{run}-{r}.json"
            path.write_text(json.dumps(report))
            reports += ["--report", f"{run}={path}"]
        paths.append(tmp_path / f"exploitability-{r}.tsv")
        assert main(["exploitability-table", *reports, "--out", str(paths[-1])]) == 0
    return paths


@pytest.mark.parametrize("replicates", [1, 3])
def test_the_pooled_exploitability_table_is_the_mean_of_the_per_replicate_tables(tmp_path, replicates, capsys):
    from linepo.evaluation.pooled import parse_mix

    paths = exploitability_tables(tmp_path, replicates)
    capsys.readouterr()
    out = tmp_path / "pooled.tsv"
    assert main(["exploitability-pooled", *[f"--table={r}={p}" for r, p in enumerate(paths)], "--out", str(out)]) == 0
    pooled = {row["run"]: row for row in read(out)}
    tables = [{row["run"]: row for row in read(p)} for p in paths]
    assert list(pooled) == ["sft", "inpo", "linepo"]
    for run, row in pooled.items():
        mean, se = mean_and_se(t[run]["exploitability"] for t in tables)
        assert float(row["exploitability"]) == pytest.approx(mean, abs=5.1e-5) and row["replicates"] == str(replicates)
        assert math.isnan(float(row["exploitability_se"])) if replicates == 1 else \
            float(row["exploitability_se"]) == pytest.approx(se, abs=5.1e-5)
        mixes = [parse_mix(t[run]["category_distribution"]) for t in tables]
        for item in row["category_distribution"].split(", "):
            name, value, *rest = item.split(" ")
            mean, se = mean_and_se(m[name] for m in mixes)
            assert float(value) == pytest.approx(mean, abs=5e-4)
            assert rest == ([] if replicates == 1 else ["±", f"{se:.3f}"])
        assert row["per_replicate"] == ",".join(f"{r}:{t[run]['exploitability']}" for r, t in enumerate(tables))
    assert capsys.readouterr().out == out.read_text()


def prox_tables(tmp_path, replicates: int):
    """Per-replicate Prox-fidelity tables from linepo prox-fidelity-table on per-run tables."""
    import numpy as np

    from linepo.evaluation import prox_fidelity as pf
    from linepo.stages.judges import make_judge

    matrix = make_judge({"type": "synthetic"}).augmented_matrix
    spec = pf.steps_from_spec([{"step": 1, "round": 1, "split": "0", "loss": "inpo", "eta": 4.0, "eta_tau": 0.6,
                                "reference": 0},
                               {"step": 2, "round": 2, "split": "0", "loss": "inpo", "eta": 4.0, "eta_tau": 0.6,
                                "reference": 1}])
    rng = np.random.default_rng(0)
    steps, runs = [], []
    for r in range(replicates):
        flags = []
        for run in ("inpo", "linepo"):
            measured = [rng.dirichlet([4, 8, 5, 0.5], size=5) for _ in range(3)]
            rows = pf.fidelity_rows(matrix, measured, spec, run=run, algorithm=run, policies=["a", f"b{r}", f"c{r}"])
            path = tmp_path / f"{run}-{r}.tsv"
            path.write_text(pf.format_tsv(rows, pf.COLUMNS))
            flags += ["--run", f"{run}={path}"]
        steps.append(tmp_path / f"prox-{r}.tsv")
        runs.append(tmp_path / f"prox_runs-{r}.tsv")
        assert main(["prox-fidelity-table", *flags, "--tsv", str(steps[-1]), "--runs-tsv", str(runs[-1])]) == 0
    return steps, runs


def test_the_pooled_prox_fidelity_tables_are_the_means_of_the_per_replicate_ones(tmp_path, capsys):
    from linepo.evaluation.pooled import RUN_NUMBERS, RUN_SE, STEP_NUMBERS

    steps, runs = prox_tables(tmp_path, 3)
    args = [item for r in range(3) for item in (f"--steps={r}={steps[r]}", f"--runs={r}={runs[r]}")]
    pooled_steps, pooled_runs, figure = tmp_path / "steps.tsv", tmp_path / "runs.tsv", tmp_path / "f.png"
    assert main(["prox-fidelity-pooled", *args, "--tsv", str(pooled_steps), "--runs-tsv", str(pooled_runs),
                 "--figure", str(figure)]) == 0
    capsys.readouterr()
    per_step = [{(row["run"], row["step"]): row for row in read(p)} for p in steps]
    rows = read(pooled_steps)
    assert [(row["run"], row["step"]) for row in rows] == list(per_step[0]) and "policy" not in rows[0]
    for row in rows:
        key = (row["run"], row["step"])
        assert row["replicates"] == "3" and row["loss"] == "inpo" and row["split"] == "0"
        for number in STEP_NUMBERS:
            mean, se = mean_and_se(t[key][number] for t in per_step)
            assert float(row[number]) == pytest.approx(mean, rel=1e-5)
            assert float(row[f"{number}_se"]) == pytest.approx(se, rel=1e-5, abs=1e-12)
    per_run = [{row["run"]: row for row in read(p)} for p in runs]
    for row in read(pooled_runs):
        assert row["steps"] == "2" and row["replicates"] == "3"
        assert {"median_kl_to_target", "final_measured_exploitability", "final_analogue_exploitability"} <= set(RUN_SE)
        for number in RUN_NUMBERS:
            mean, se = mean_and_se(t[row["run"]][number] for t in per_run)
            assert float(row[number]) == pytest.approx(mean, rel=1e-5)
            assert number not in RUN_SE or float(row[f"{number}_se"]) == pytest.approx(se, rel=1e-5, abs=1e-12)
        kls = [float(k) for k in row["kl_per_step"].split(",")]
        assert kls == pytest.approx([float(r["kl_to_target"]) for r in rows if r["run"] == row["run"]], rel=0.05)
    assert figure.read_bytes()[:4] == b"\x89PNG"


def test_replicates_whose_rows_differ_or_a_bad_flag_are_one_line(tmp_path, capsys):
    paths = exploitability_tables(tmp_path, 2)
    paths[1].write_text("\n".join(paths[1].read_text().splitlines()[:-1]) + "\n")  # replicate 1 lost a run
    out = tmp_path / "pooled.tsv"
    for flags, message in [([f"--table=0={paths[0]}", f"--table=1={paths[1]}"], "replicate 1: its rows are not"),
                           ([f"--table=0={paths[0]}", f"--table=0={paths[0]}"], "replicate 0 given twice"),
                           ([f"--table=x={paths[0]}"], "expected R=FILE"),
                           ([f"--table=0={tmp_path / 'none.tsv'}"], "none.tsv: file not found")]:
        assert main(["exploitability-pooled", *flags, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    assert not out.exists()

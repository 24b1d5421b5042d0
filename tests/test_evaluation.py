"""Evaluation: the eval plan's ids and checkpoints, comparisons in both orders, win-rate
matrices with bootstrap SEs, the AlpacaEval export, and one-line errors for bad input.

    HF_HUB_OFFLINE=1 python -m pytest -q tests/test_evaluation.py
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from linepo.evaluation import winrates as ev
from linepo.workflow.config import validate_config
from linepo.errors import InputError
from linepo.workflow.evalplan import build_eval_plan
from linepo.stages.judges import Judge, SyntheticJudge
from linepo.workflow.plan import build_plan
from linepo.schemas import read_metadata, read_table, write_table
from workflow_utils import REPO, default_realisation

BASE = default_realisation()  # one realisation of the default: the tests set replicates themselves
ALPACA_EVAL_SET = REPO.parent / "shared" / "data" / "alpaca_eval" / "eval_set.json"


def plans(edit=None):
    config = copy.deepcopy(BASE)
    if edit:
        edit(config)
    config = validate_config(config)
    plan = build_plan(config)
    return plan, build_eval_plan(config, plan)


# ----------------------------------------------------------------------------- the plan


def test_checkpoints_follow_table_2_and_name_intermediate_rounds():
    plan, eplan = plans()
    assert [c.label for c in eplan.checkpoints] == ["SFT", "DPO", "IPO", "Iter-IPO", "INPO-R2", "INPO-R3", "LINE-PO"]
    assert eplan.checkpoint("inpo_r2").policy == plan.runs["inpo"][7].policy  # after round 2 of 4 splits
    assert eplan.checkpoint("inpo").policy == plan.final_policy("inpo")
    assert eplan.checkpoint("sft").policy == plan.sft
    assert len(eplan.matrix_comparisons()) == 7 * 6 // 2
    # Figure 3: every step of the three iterative runs, each against SFT.
    assert {run: len(points) for run, points in eplan.curves.items()} == {"iter_ipo": 13, "inpo": 13, "linepo": 13}
    assert eplan.checkpoint("inpo_r2").generation == eplan.curves["inpo"][8].generation  # shared, generated once


def test_adding_a_run_adds_only_its_generations_and_its_row_and_column():
    _, before = plans()
    _, after = plans(lambda c: c["runs"].update(sppo={"algorithm": "sppo", "eta": 4.0, "rounds": 1}))
    assert set(before.generations) < set(after.generations)
    new_generations = set(after.generations) - set(before.generations)
    sppo = after.checkpoint("sppo").generation
    assert sppo in new_generations and len(new_generations) == 4  # its 4 steps (curve), the last is the final
    new_matrix = set(after.matrix_comparisons()) - set(before.matrix_comparisons())
    assert new_matrix == {after.comparison_between(sppo, c.generation) for c in before.checkpoints}
    assert set(before.comparisons) <= set(after.comparisons)


def test_the_eval_judge_changes_comparisons_only_and_defaults_to_the_judge():
    _, base = plans()
    _, same = plans(lambda c: c["evaluation"].update(judge={"type": "synthetic"}))
    assert same.comparisons == base.comparisons  # explicit default = the same ids
    matrix = [[0.5, 0.2, 0.8], [0.8, 0.5, 0.2], [0.2, 0.8, 0.5]]
    _, other = plans(lambda c: c["evaluation"].update(judge={"type": "synthetic", "matrix": matrix}))
    assert other.generations == base.generations
    assert not set(other.comparisons) & set(base.comparisons)
    _, workers = plans(lambda c: c["evaluation"].update(judge={"type": "synthetic", "data_parallel": 2}))
    assert workers.comparisons == base.comparisons  # how many workers judge is not what is judged
    _, decoding = plans(lambda c: c["evaluation"]["decoding"].update(temperature=0.5))
    assert not set(decoding.generations) & set(base.generations)


def test_unset_decoding_settings_follow_the_sampling_section():
    _, eplan = plans(lambda c: c["evaluation"].update(decoding={"n": 2}))
    sampling = validate_config(copy.deepcopy(BASE))["sampling"]
    assert eplan.decoding == {"n": 2, "seed": 0, **{k: sampling[k] for k in
                              ("temperature", "top_p", "max_new_tokens", "batch_size", "backend")}}
    _, explicit = plans(lambda c: c["evaluation"].update(decoding={"n": 2, "temperature": sampling["temperature"]}))
    assert explicit.generations == eplan.generations  # the same settings, spelt out: the same ids


def test_an_evaluation_change_touches_no_training_node():
    before, _ = plans()
    after, _ = plans(lambda c: c["evaluation"].update(checkpoints={}, curve_every=4))
    for kind in ("policies", "samples", "prefs", "scored"):
        assert set(getattr(before, kind)) == set(getattr(after, kind))
    assert before.eval_prompts == after.eval_prompts


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda c: c["evaluation"].update(checkpoints={"ghost": {"run": "sppo", "round": 1}}),
         "evaluation.checkpoints.ghost.run: no run 'sppo' produces this checkpoint"),
        (lambda c: c["evaluation"].update(checkpoints={"late": {"run": "inpo", "round": 5}}),
         "evaluation.checkpoints.late.round"),
        (lambda c: c["evaluation"].update(checkpoints={"last": {"run": "inpo", "round": 3}}),
         "evaluation.checkpoints.last.round"),
        (lambda c: c["evaluation"].update(checkpoints={"dpo": {"run": "inpo", "round": 1}}),
         "evaluation.checkpoints.dpo"),
        (lambda c: c["evaluation"].update(labels={"inpo": "DPO"}), "same label 'DPO'"),
        (lambda c: c["evaluation"].update(labels={"nope": "X"}), "evaluation.labels.nope"),
        (lambda c: c["evaluation"].update(judge={"type": "synthetic", "matrix": [[0.5, 1.3], [-0.3, 0.5]],
                                                 "categories": ["x", "y"], "first_words": {"A": "x"}}),
         "evaluation.judge"),
        (lambda c: c["evaluation"]["decoding"].update(n=0), "evaluation.decoding.n"),
    ],
)
def test_bad_evaluation_config_names_the_key_in_one_line(edit, key):
    with pytest.raises(InputError) as info:
        plans(edit)
    assert key in str(info.value) and "\n" not in str(info.value)


# ----------------------------------------------------------------------------- comparisons


def generation(responses: dict, n: int = 1) -> dict:
    """{(prompt_id, sample_index): samples row} from {prompt_id: [response per sample]}."""
    return {(pid, k): {"prompt_id": pid, "prompt": f"prompt {pid}", "sample_index": k, "response": r,
                       "num_tokens": len(r.split()), "finish_reason": "stop", "sampler_settings": "{}"}
            for pid, texts in responses.items() for k, r in enumerate(texts)}


class PositionBiased(Judge):
    """Prefers whatever is shown first by 0.05, on top of the synthetic oracle."""

    name = "biased"

    def __init__(self):
        self.oracle = SyntheticJudge()

    def _probabilities(self, prompts, a, b):
        p, failed = self.oracle.probabilities(prompts, a, b)
        return p + 0.05, failed


def test_both_orders_cancel_a_position_bias():
    a = generation({"p1": ["Briefly, yes."], "p2": ["Sure, here."]})
    b = generation({"p1": ["Sure, here."], "p2": ["Sure, again."]})
    rows = ev.compare(a, b, PositionBiased())
    # brief vs plain: the paper's game gives P(a ≻ b) = 0.1; same category: ½.
    assert [r["prob_a_first"] for r in rows] == pytest.approx([0.15, 0.55])
    assert [r["prob_b_first"] for r in rows] == pytest.approx([0.95, 0.55])
    assert [r["prob_a_wins"] for r in rows] == pytest.approx([0.1, 0.5])


class OutOfRange(Judge):
    name = "broken"

    def _probabilities(self, prompts, a, b):
        return np.where(np.arange(len(prompts)) == 3, 1.5, 0.5), np.zeros(len(prompts), dtype=bool)


def test_a_judge_outside_0_1_fails_naming_the_prompt_and_writes_nothing(tmp_path, monkeypatch, capsys):
    a = generation({"p1": ["Sure, a."], "p2": ["Sure, b."]})
    b = generation({"p1": ["Sure, c."], "p2": ["Sure, d."]})
    with pytest.raises(InputError, match=r"prompt p2 sample 0 \(b shown first\)"):
        ev.compare(a, b, OutOfRange(), name_a="a", name_b="b")
    # The command: one line, exit 2, no comparisons file.
    for name, rows in (("a", a), ("b", b)):
        write_table(list(rows.values()), tmp_path / f"{name}.parquet", "samples")
    monkeypatch.setattr("linepo.stages.judges.make_judge", lambda config, source="": OutOfRange())
    from linepo.cli import main

    out = tmp_path / "ab.parquet"
    code = main(["compare", "--a", str(tmp_path / "a.parquet"), "--b", str(tmp_path / "b.parquet"),
                 "--judge-config", '{"type": "pairwise_lm"}', "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "outside [0, 1]" in err and "prompt p2" in err
    assert not out.exists() and not list(tmp_path.glob(".ab.parquet*"))


def test_generations_of_different_prompts_are_refused():
    with pytest.raises(InputError, match="different prompts"):
        ev.compare(generation({"p1": ["Sure."]}), generation({"p9": ["Sure."]}), SyntheticJudge())


def comparison_table(values):
    """A comparisons table whose prob_a_wins per prompt are ``values`` (one sample each)."""
    import pyarrow as pa

    n = len(values)
    return pa.table({"prompt_id": [f"p{i:03d}" for i in range(n)], "sample_index": [0] * n,
                     "prob_a_first": values, "prob_b_first": [1 - v for v in values],
                     "prob_a_wins": values, "failed": [False] * n})


def test_the_matrix_is_consistent_with_standard_errors(tmp_path):
    rng = np.random.default_rng(0)
    gens = ["g0", "g1", "g2"]
    checkpoints = [{"name": f"c{i}", "label": f"C{i}", "generation": g} for i, g in enumerate(gens)]
    comparisons = {f"x{i}{j}": {"a": gens[i], "b": gens[j], "table": comparison_table(rng.uniform(0, 1, 50).tolist())}
                   for i in range(3) for j in range(i + 1, 3)}
    labels, m, se, pairs = ev.win_rate_matrix(checkpoints, comparisons, resamples=500, seed=1)
    assert labels == ["C0", "C1", "C2"]
    assert np.allclose(np.diag(m), 0.5) and np.allclose(np.diag(se), 0)
    assert np.allclose(m + m.T, 1.0) and np.allclose(se, se.T)
    off = ~np.eye(3, dtype=bool)
    # SE of a mean of 50 uniforms: ≈ 0.289 / √50 ≈ 0.041.
    assert np.all((se[off] > 0.025) & (se[off] < 0.06))
    (tmp_path / "m.csv").write_text(ev.matrix_csv(labels, m))
    labels2, values = ev.read_matrix_csv(tmp_path / "m.csv")
    assert labels2 == labels and np.allclose(values + values.T, 100, atol=0.011)
    row0 = ev.matrix_csv(labels, m).splitlines()[1].split(",")
    assert float(row0[-1]) == pytest.approx(100 * m[0].mean(), abs=0.006)  # Avg: the row mean, diagonal in
    assert len(pairs) == 6 and all(p["prompts"] == 50 for p in pairs)
    hard, hard_se = ev.pair_matrix(labels, pairs, "hard_win_rate"), ev.pair_matrix(labels, pairs, "hard_se")
    assert np.all(np.diag(hard) == 0.5) and np.all(np.diag(hard_se) == 0)
    assert np.all(hard + hard.T == 1.0) and np.allclose(hard_se, hard_se.T)  # 1, 0 and ½ add up exactly
    assert np.all((hard_se[off] > 0.04) & (hard_se[off] < 0.1))  # SE of a mean of 50 coin flips ≈ 0.071
    assert np.array_equal(ev.pair_matrix(labels, pairs, "win_rate"), m)


def test_hard_win_rates_score_each_row_1_0_or_half_and_average_per_prompt():
    import pyarrow as pa

    # p0: 0.9 → 1; p1: an exact tie → ½; p2: 0.2 → 0; p3: two samples, 0.6 and 0.7 → 1.
    values = {"p0": [0.9], "p1": [0.5], "p2": [0.2], "p3": [0.6, 0.7]}
    rows = [(pid, k, v) for pid, vs in values.items() for k, v in enumerate(vs)]
    table = pa.table({"prompt_id": [r[0] for r in rows], "sample_index": [r[1] for r in rows],
                      "prob_a_first": [r[2] for r in rows], "prob_b_first": [1 - r[2] for r in rows],
                      "prob_a_wins": [r[2] for r in rows], "failed": [False] * len(rows)})
    assert [ev.hard_score(v) for v in (0.9, 0.5, 0.2, 0.5000001)] == [1.0, 0.5, 0.0, 1.0]
    assert ev.per_prompt(table, hard=True) == {"p0": 1.0, "p1": 0.5, "p2": 0.0, "p3": 1.0}
    row = ev.win_rate(table, a_is_row=True, resamples=200, seed=3)
    column = ev.win_rate(table, a_is_row=False, resamples=200, seed=3)
    assert row["hard_win_rate"] == 0.625 and column["hard_win_rate"] == 0.375
    assert row["win_rate"] == pytest.approx((0.9 + 0.5 + 0.2 + 0.65) / 4)
    assert row["hard_se"] == ev.bootstrap_se([1.0, 0.5, 0.0, 1.0], 200, 3) > 0
    assert row["se"] == ev.bootstrap_se([0.9, 0.5, 0.2, 0.65], 200, 3)  # the soft SE as before


def test_bootstrap_se_matches_the_analytic_standard_error():
    values = np.random.default_rng(3).normal(size=400)
    assert ev.bootstrap_se(values, 2000, 0) == pytest.approx(values.std() / np.sqrt(400), rel=0.1)
    assert np.isnan(ev.bootstrap_se([0.5], 100, 0))


def test_failed_comparisons_are_left_out_and_counted():
    import pyarrow as pa

    table = pa.table({"prompt_id": ["a", "a", "b"], "sample_index": [0, 1, 0], "prob_a_first": [1.0, None, 0.0],
                      "prob_b_first": [0.0, None, 1.0], "prob_a_wins": [1.0, None, 0.0], "failed": [False, True, False]})
    result = ev.win_rate(table, a_is_row=True, resamples=100, seed=0)
    assert result["win_rate"] == 0.5 and result["prompts"] == 2 and result["failed"] == 1


# ----------------------------------------------------------------------------- commands, end to end (no model)


def test_compare_and_win_rates_commands_without_torch(tmp_path):
    """The synthetic path of the model-free stages never imports torch or transformers."""
    texts = {"sft": ["Sure, x.", "Briefly, y.", "Certainly, z."], "a": ["Certainly, x.", "Certainly, y.", "Sure, z."],
             "b": ["Briefly, x.", "Sure, y.", "Briefly, z."]}
    for name, responses in texts.items():
        rows = generation({f"p{i}": [r] for i, r in enumerate(responses)})
        write_table(list(rows.values()), tmp_path / f"{name}.parquet", "samples")
    code = f"""
import json, sys
from linepo.cli import main
d = {str(tmp_path)!r}
pairs = [("a", "b"), ("a", "sft"), ("b", "sft")]
for x, y in pairs:
    assert main(["compare", "--a", f"{{d}}/{{x}}.parquet", "--b", f"{{d}}/{{y}}.parquet", "--out", f"{{d}}/{{x}}-{{y}}.parquet"]) == 0
spec = {{"checkpoints": [{{"name": n, "label": n.upper(), "generation": n}} for n in ("sft", "a", "b")],
        "comparisons": {{f"{{x}}-{{y}}": {{"a": x, "b": y, "path": f"{{d}}/{{x}}-{{y}}.parquet"}} for x, y in pairs}}}}
assert main(["win-rates", "--spec", json.dumps(spec), "--bootstrap", "100", "--csv", f"{{d}}/m.csv",
             "--se-csv", f"{{d}}/se.csv", "--hard-csv", f"{{d}}/h.csv", "--hard-se-csv", f"{{d}}/hse.csv",
             "--pairs", f"{{d}}/p.tsv", "--figure", f"{{d}}/m.png"]) == 0
summary = {{"checkpoints": [{{"name": n, "label": n.upper(), "generation": n, "policy": n}} for n in ("sft", "a", "b")],
           "generations": {{n: f"{{d}}/{{n}}.parquet" for n in ("sft", "a", "b")}}, "exploitability": {{}}}}
assert main(["eval-summary", "--spec", json.dumps(summary), "--matrix", f"{{d}}/m.csv", "--hard-matrix", f"{{d}}/h.csv",
             "--out", f"{{d}}/evaluation.tsv"]) == 0
print("IMPORTED", sorted(m for m in ("torch", "transformers") if m in sys.modules), file=sys.stderr)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "IMPORTED []" in result.stderr
    labels, m = ev.read_matrix_csv(tmp_path / "m.csv")
    assert labels == ["SFT", "A", "B"]
    # Per prompt (paper game, a=brief b=plain c=detailed): A vs B = P(c≻a), P(c≻b), P(b≻a) = 0.2, 0.9, 0.9.
    assert m[1, 2] == pytest.approx(100 * (0.2 + 0.9 + 0.9) / 3, abs=0.01)
    assert m[2, 1] == pytest.approx(100 - m[1, 2], abs=0.011) and m[0, 0] == 50
    assert (tmp_path / "m.png").stat().st_size > 1000
    # Hard: A wins the two 0.9 prompts and loses the 0.2 one.
    hard_labels, hard = ev.read_matrix_csv(tmp_path / "h.csv")
    assert hard_labels == labels and hard[1, 2] == pytest.approx(200 / 3, abs=0.01) and hard[2, 1] == pytest.approx(100 / 3, abs=0.01)
    assert (tmp_path / "h.csv").read_text().splitlines()[0].endswith(",Avg")
    assert (tmp_path / "hse.csv").read_text().splitlines()[0] == "row/column,SFT,A,B"
    header = (tmp_path / "p.tsv").read_text().splitlines()[0].split("\t")
    assert header == ["row", "column", "win_rate", "se", "hard_win_rate", "hard_se", "prompts", "judged", "failed",
                      "missing", "comparison", "failure_summary"]
    lines = [line.split("\t") for line in (tmp_path / "evaluation.tsv").read_text().splitlines()]
    table = [dict(zip(lines[0], line)) for line in lines[1:]]
    a = next(r for r in table if r["label"] == "A")
    assert float(a["avg_hard_win_rate"]) == pytest.approx(np.mean(hard[1]) / 100, abs=1e-4)
    assert float(a["worst_hard_win_rate"]) == pytest.approx(min(hard[1, 0], hard[1, 2]) / 100, abs=1e-4)
    assert float(a["avg_win_rate"]) == pytest.approx(np.mean(m[1]) / 100, abs=1e-4)


def test_eval_summary_names_a_missing_hard_matrix_in_one_line(tmp_path, capsys):
    from linepo.cli import main

    (tmp_path / "m.csv").write_text(ev.matrix_csv(["SFT"], np.full((1, 1), 0.5)))
    spec = {"checkpoints": [{"name": "sft", "label": "SFT", "generation": "g", "policy": "p"}], "generations": {}}
    code = main(["eval-summary", "--spec", json.dumps(spec), "--matrix", str(tmp_path / "m.csv"),
                 "--hard-matrix", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "e.tsv")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "--hard-matrix" in err and "nope.csv" in err
    assert not (tmp_path / "e.tsv").exists()


# ----------------------------------------------------------------------------- AlpacaEval


def alpaca_eval_loader():
    """alpaca_eval's own loader, or skip. alpaca_eval 0.6 imports pkg_resources, which
    setuptools >= 81 no longer ships; its loader never uses it, so a stand-in is supplied."""
    import importlib.util

    if importlib.util.find_spec("alpaca_eval") is None:
        pytest.skip("alpaca_eval is not installed")
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        import importlib.metadata
        import types

        from packaging.version import parse

        stand_in = types.ModuleType("pkg_resources")
        stand_in.parse_version = parse
        stand_in.get_distribution = lambda name: types.SimpleNamespace(version=importlib.metadata.version(name))
        sys.modules["pkg_resources"] = stand_in
    from alpaca_eval.utils import load_or_convert_to_dataframe

    return load_or_convert_to_dataframe


def test_alpaca_export_loads_with_alpaca_evals_own_loader(tmp_path):
    prompts = [{"prompt_id": f"p{i}", "prompt": f"Question {i}?", "source": "linepo.embedded:eval"} for i in range(3)]
    write_table(prompts, tmp_path / "prompts.parquet", "prompts")
    rows = generation({f"p{i}": [f"Answer {i}.", f"Other {i}."] for i in (2, 0, 1)})
    write_table(list(rows.values()), tmp_path / "gen.parquet", "samples")
    from linepo.cli import main

    out = tmp_path / "model_outputs.json"
    assert main(["alpaca-export", "--generations", str(tmp_path / "gen.parquet"), "--prompts",
                 str(tmp_path / "prompts.parquet"), "--generator", "LINE-PO", "--out", str(out)]) == 0
    records = json.loads(out.read_text())
    assert [r["instruction"] for r in records] == ["Question 0?", "Question 1?", "Question 2?"]  # eval order
    assert [r["output"] for r in records] == ["Answer 0.", "Answer 1.", "Answer 2."]  # sample 0
    load = alpaca_eval_loader()
    frame = load(out)
    assert {"instruction", "output", "generator", "dataset"} <= set(frame.columns)
    assert len(frame) == 3 and set(frame["generator"]) == {"LINE-PO"}


@pytest.mark.skipif(not ALPACA_EVAL_SET.exists(), reason="../shared/data/alpaca_eval/eval_set.json is absent")
def test_the_805_alpaca_eval_instructions_load_like_a_hub_dataset_and_export(tmp_path):
    from linepo.cli import main

    out = tmp_path / "eval.parquet"
    assert main(["prompts", "--source", str(ALPACA_EVAL_SET), "--split", "eval", "--out", str(out)]) == 0
    table = read_table(out, "prompts")
    assert table.num_rows == 805
    subsets = read_metadata(out)["datasets"]
    assert Counter(subsets.values()) == {"selfinstruct": 252, "oasst": 188, "koala": 156, "helpful_base": 129,
                                         "vicuna": 80}
    reference = json.loads(ALPACA_EVAL_SET.read_text())
    gen = [{"prompt_id": r["prompt_id"], "prompt": r["prompt"], "sample_index": 0, "response": "ok",
            "num_tokens": 1, "finish_reason": "stop", "sampler_settings": "{}"} for r in table.to_pylist()]
    write_table(gen, tmp_path / "gen.parquet", "samples")
    exported = tmp_path / "model_outputs.json"
    assert main(["alpaca-export", "--generations", str(tmp_path / "gen.parquet"), "--prompts", str(out),
                 "--generator", "SFT", "--out", str(exported)]) == 0
    records = json.loads(exported.read_text())
    assert [(r["instruction"], r["dataset"]) for r in records] == [(r["instruction"], r["dataset"]) for r in reference]


def test_an_eval_prompt_file_without_an_instruction_column_fails_in_one_line(tmp_path):
    bad = tmp_path / "eval_set.json"
    bad.write_text(json.dumps([{"question": "What is 2+2?", "output": "4"}]))
    out = tmp_path / "eval.parquet"
    result = subprocess.run(["linepo", "prompts", "--source", str(bad), "--out", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and str(bad) in result.stderr and "instruction" in result.stderr
    assert not out.exists()

"""Judges on real Llama-3 / Qwen2 tokenizers that fail loudly, never silently: a judge that
cannot answer stops its step with the reason, identical texts need no forward pass, a cell of
mostly failed comparisons is missing (never 50%), and a judge folder needs its chat template.

    HF_HUB_OFFLINE=1 python -m pytest tests/test_judge_failures.py -q
"""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from real_models import llama3_tokenizer, save_model, tiny_causal_lm, tiny_reward_model  # noqa: E402

from linepo.errors import InputError  # noqa: E402
from linepo.evaluation import winrates as ev  # noqa: E402
from linepo.evaluation.summary import summary_rows  # noqa: E402
from linepo.schemas import read_metadata, read_table, to_table, write_table  # noqa: E402
from linepo.stages.judges import make_judge  # noqa: E402
from linepo.stages.preferences import JudgeFailed, build_preferences, judge_samples  # noqa: E402


@pytest.fixture(scope="module")
def random_judge(tmp_path_factory):
    """A random 128k-vocabulary Llama judge: p(a) + p(b) ≈ 2 / 128256 at the answer, far below 1e-3."""
    tokenizer = llama3_tokenizer()
    return save_model(tiny_causal_lm(tokenizer, "llama", seed=1, tie=False), tokenizer,
                      tmp_path_factory.mktemp("judge") / "model")


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory):
    tokenizer = llama3_tokenizer()
    return save_model(tiny_reward_model(tokenizer, seed=2), tokenizer, tmp_path_factory.mktemp("rm") / "model")


def _samples(path, responses_per_prompt: dict[str, list[str]]):
    rows = [{"prompt_id": pid, "prompt": f"Question {pid}?", "sample_index": k, "response": text,
             "response_token_ids": None, "num_tokens": 3, "finish_reason": "stop", "stop_token_id": 128009,
             "sampler_settings": "{}"}
            for pid, texts in responses_per_prompt.items() for k, text in enumerate(texts)]
    write_table(rows, path, "samples")
    return path


def test_a_judge_that_fails_every_comparison_stops_its_step_with_the_reason(random_judge, tmp_path):
    samples = _samples(tmp_path / "s.parquet", {f"p{i}": ["Red.", "Blue.", "Green."] for i in range(3)})
    out = tmp_path / "j.parquet"
    with pytest.raises(JudgeFailed) as err:
        judge_samples(samples, {"type": "pairwise_lm", "model": str(random_judge)}, out)
    message = str(err.value)
    assert "\n" not in message and "9 of 9 comparisons failed" in message
    mass = float(message.split("mean p(a)+p(b) = ")[1].split()[0])
    assert 1e-6 < mass < 1e-4 and "< judge.min_answer_mass = 0.001" in message
    assert not out.exists() and not list(tmp_path.glob(".j.parquet*"))  # nothing half-written

    # The command line: one line, a non-zero exit, nothing written.
    config = tmp_path / "judge.yaml"
    config.write_text(f"type: pairwise_lm\nmodel: {random_judge}\n")
    run = subprocess.run([sys.executable, "-m", "linepo.cli", "judge", "--samples", str(samples), "--judge-config",
                          str(config), "--out", str(out), "--no-progress"], capture_output=True, text=True)
    assert run.returncode != 0 and not out.exists()
    errors = [line for line in run.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "min_answer_mass" in errors[0] and "Traceback" not in run.stderr
    # The workflow's flag raises the limit without touching the judge config (or the node id).
    run = subprocess.run([sys.executable, "-m", "linepo.cli", "judge", "--samples", str(samples), "--judge-config",
                          str(config), "--out", str(out), "--no-progress", "--max-failed-fraction", "1"],
                         capture_output=True, text=True)
    assert run.returncode == 0 and read_table(out, "judgments").column("failed").to_pylist() == [True] * 9


def test_the_failure_limit_is_configurable_and_each_failure_says_why(random_judge, tmp_path):
    samples = _samples(tmp_path / "s.parquet", {"p0": ["Red.", "Blue."]})
    out = tmp_path / "j.parquet"
    stats = judge_samples(samples, {"type": "pairwise_lm", "model": str(random_judge), "max_failed_fraction": 1.0},
                          out)
    assert stats["failed"] == 1
    (row,) = read_table(out, "judgments").to_pylist()
    assert row["failed"] and row["failure"].startswith("p(a)+p(b) = ") and "judge.min_answer_mass 0.001" in row["failure"]
    with pytest.raises(InputError, match="max_failed_fraction: must be a number in"):
        make_judge({"type": "pairwise_lm", "model": str(random_judge), "max_failed_fraction": 2})


def test_a_batch_of_comparisons_summarises_each_pairs_failures_as_linepo_compare_does(random_judge, tmp_path):
    """One judge load for many pairs (linepo compare-batch): each pair's failure summary counts
    its own failures, as a judge loaded for it alone would (reset_failures)."""
    from linepo.evaluation.batches import load_comparisons, judge_batch

    texts = {"a": ["Red.", "Blue."], "b": ["Green.", "Black."], "c": ["Red.", "White."]}  # c ties a on p0
    paths = {name: str(_samples(tmp_path / f"{name}.parquet", {f"p{i}": [t] for i, t in enumerate(answers)}))
             for name, answers in texts.items()}
    config = {"type": "pairwise_lm", "model": str(random_judge)}
    pairs = {"ab": {"a": paths["a"], "b": paths["b"]}, "ac": {"a": paths["a"], "b": paths["c"]}}
    stats = judge_batch(pairs, config, tmp_path / "cache", tmp_path / "batch.parquet", log=lambda line: None)
    assert (stats["judge_loads"], stats["judged"], stats["failed"]) == (1, 2, 3)
    batch = load_comparisons({cid: {"batch": str(tmp_path / "batch.parquet")} for cid in pairs})
    for cid, pair in pairs.items():
        ev.compare_files(pair["a"], pair["b"], config, tmp_path / f"{cid}.parquet")  # a judge of its own
        alone = read_metadata(tmp_path / f"{cid}.parquet")
        assert batch[cid]["failure_summary"] == alone["failure_summary"]
        assert batch[cid]["table"].equals(read_table(tmp_path / f"{cid}.parquet", "comparisons"))
    assert "on 4 judged sequences" in batch["ab"]["failure_summary"]
    assert "on 2 judged sequences" in batch["ac"]["failure_summary"]


def test_a_pairs_step_with_no_pairs_fails_naming_why(tmp_path):
    samples = _samples(tmp_path / "s.parquet", {"p0": ["Red.", "Blue."]})
    judged = to_table({"prompt_id": ["p0"], "index_a": [0], "index_b": [1], "prob_a_wins": [None],
                       "outcome": [None], "failed": [True], "failure": ["p(a)+p(b) = 1e-05 < ..."]}, "judgments")
    write_table(judged, tmp_path / "j.parquet", "judgments")
    out = tmp_path / "prefs.parquet"
    with pytest.raises(InputError, match="no pairs from 1 prompts .*nothing to train on"):
        build_preferences(samples, tmp_path / "j.parquet", out)
    assert not out.exists()


def test_identical_texts_need_no_forward_pass(random_judge, reward_model):
    judge = make_judge({"type": "pairwise_lm", "model": str(random_judge), "min_answer_mass": 0.0})
    prob, failed = judge.probabilities(["Q?", "Q?"], ["Same.", "Same."], ["Same.", "Same."])
    assert prob.tolist() == [0.5, 0.5] and not failed.any()
    rm = make_judge({"type": "reward_model", "model": str(reward_model)})
    assert rm.rewards([], []).shape == (0,)
    prob, failed = rm.probabilities(["Q?"], ["Same."], ["Same."])
    assert prob.tolist() == [0.5] and not failed.any()


def test_a_judge_folder_without_its_chat_template_is_refused(tmp_path):
    tokenizer = copy.deepcopy(llama3_tokenizer())
    tokenizer.chat_template = None
    folder = save_model(tiny_causal_lm(tokenizer, "llama", tie=False), tokenizer, tmp_path / "judge")
    with pytest.raises(InputError, match="no chat template .*use_chat_template: false"):
        make_judge({"type": "pairwise_lm", "model": str(folder)})
    plain = make_judge({"type": "pairwise_lm", "model": str(folder), "use_chat_template": False})
    assert plain.format_prompt("Q?", "A.", "B.").endswith("Assistant: Output (")
    rm_folder = save_model(tiny_reward_model(tokenizer), tokenizer, tmp_path / "rm")
    with pytest.raises(InputError, match="no chat template"):
        make_judge({"type": "reward_model", "model": str(rm_folder)})


def test_the_judgments_record_the_chat_template_used(random_judge, tmp_path):
    samples = _samples(tmp_path / "s.parquet", {"p0": ["Red.", "Blue."]})
    judge_samples(samples, {"type": "pairwise_lm", "model": str(random_judge), "min_answer_mass": 0.0},
                  tmp_path / "j.parquet")
    facts = read_metadata(tmp_path / "j.parquet")["judge_facts"]
    template = llama3_tokenizer().chat_template
    assert facts["chat_template_sha256"] == hashlib.sha256(template.encode()).hexdigest()


# ----------------------------------------------------------------------------- evaluation


def _comparisons(failed: list[bool], p: float = 0.5):
    rows = [{"prompt_id": f"p{i}", "sample_index": 0, "prob_a_first": None if f else p,
             "prob_b_first": None if f else 1 - p, "prob_a_wins": None if f else p, "failed": f,
             "failure": "p(a)+p(b) = 1.6e-05 < judge.min_answer_mass 0.001" if f else None}
            for i, f in enumerate(failed)]
    return to_table(rows, "comparisons")


def test_a_mostly_failed_cell_is_missing_never_fifty_percent():
    checkpoints = [{"name": n, "label": n.upper(), "generation": g} for n, g in (("sft", "g1"), ("inpo", "g2"),
                                                                                  ("linepo", "g3"))]
    comparisons = {
        "c12": {"a": "g1", "b": "g2", "table": _comparisons([False] + [True] * 7), "max_failed_fraction": 0.05},
        "c13": {"a": "g1", "b": "g3", "table": _comparisons([False] * 8, p=0.25), "max_failed_fraction": 0.05},
        "c23": {"a": "g2", "b": "g3", "table": _comparisons([False] * 8, p=0.25), "max_failed_fraction": 0.05},
    }
    labels, m, se, pairs = ev.win_rate_matrix(checkpoints, comparisons, resamples=50)
    assert np.isnan(m[0, 1]) and np.isnan(m[1, 0]) and m[0, 2] == pytest.approx(0.25)
    text = ev.matrix_csv(labels, m)
    assert text.splitlines()[1] == "SFT,50.00,,25.00,"  # the missing cell and its row's Avg are empty
    counts = ev.counts_csv(labels, pairs)
    assert counts.splitlines()[1] == "SFT,-,8/7,8/0"
    summary = summary_rows(labels, m, checkpoints, {"g1": 3.0, "g2": 3.0, "g3": 3.0}, {},
                              hard=ev.pair_matrix(labels, pairs, "hard_win_rate"))
    sft, inpo, linepo = summary
    assert np.isnan(sft["avg_win_rate"]) and np.isnan(sft["worst_win_rate"]) and sft["missing_cells"] == 1
    assert np.isnan(inpo["worst_win_rate"]) and np.isnan(inpo["worst_hard_win_rate"])  # never the 0.25 left
    assert linepo["missing_cells"] == 0 and linepo["worst_win_rate"] == pytest.approx(0.75)


def test_the_win_rate_files_carry_judged_and_failed_counts(tmp_path):
    for name, failed in (("c12", [False] + [True] * 7), ("c13", [False] * 20 + [True])):
        meta = {"max_failed_fraction": 0.05, "failure_summary": "mean p(a)+p(b) = 1.6e-05 < judge.min_answer_mass"}
        write_table(_comparisons(failed), tmp_path / f"{name}.parquet", "comparisons", metadata=meta)
    spec = {"checkpoints": [{"name": n, "label": n, "generation": g} for n, g in (("a", "g1"), ("b", "g2"),
                                                                                   ("c", "g3"))],
            "comparisons": {"c12": {"a": "g1", "b": "g2", "path": str(tmp_path / "c12.parquet")},
                            "c13": {"a": "g1", "b": "g3", "path": str(tmp_path / "c13.parquet")},
                            "c23": {"a": "g2", "b": "g3", "path": str(tmp_path / "c13.parquet")}}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = {k: tmp_path / f"{k}.csv" for k in ("m", "se", "counts")}
    run = subprocess.run([sys.executable, "-m", "linepo.cli", "win-rates", "--spec", str(tmp_path / "spec.json"),
                          "--bootstrap", "20", "--csv", str(out["m"]), "--se-csv", str(out["se"]), "--counts-csv",
                          str(out["counts"]), "--pairs", str(tmp_path / "pairs.tsv"), "--figure",
                          str(tmp_path / "m.png")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert out["m"].read_text().splitlines()[1].split(",")[2] == ""  # a vs b: missing
    assert out["counts"].read_text().splitlines()[1] == "a,-,8/7,21/1"
    assert "a vs b is missing: 7 of 8 comparisons failed (mean p(a)+p(b)" in run.stderr
    assert "8/7" in run.stdout  # the printed matrix shows the counts too
    header = (tmp_path / "pairs.tsv").read_text().splitlines()[0].split("\t")
    assert {"judged", "failed", "missing"} <= set(header)
    # The workflow's limit (evaluation.judge.max_failed_fraction) wins over the recorded one.
    run = subprocess.run([sys.executable, "-m", "linepo.cli", "win-rates", "--spec", str(tmp_path / "spec.json"),
                          "--bootstrap", "20", "--csv", str(out["m"]), "--se-csv", str(out["se"]),
                          "--max-failed-fraction", "0.9", "--pairs", str(tmp_path / "pairs.tsv"), "--figure",
                          str(tmp_path / "m.png")], capture_output=True, text=True)
    assert run.returncode == 0 and out["m"].read_text().splitlines()[1].split(",")[2] == "50.00"


def test_the_failure_limits_are_flags_not_node_ids():
    """Raising a limit after a failed step must re-judge nothing: the limits are not in any node id."""
    import yaml

    from linepo.workflow.config import validate_config
    from linepo.workflow.wiring import Wiring
    from workflow_utils import REPO

    base = yaml.safe_load((REPO / "config.yaml").read_text())
    limited = copy.deepcopy(base)
    limited["judge"]["max_failed_fraction"] = 0.2
    plain, config = Wiring(validate_config(copy.deepcopy(base))), Wiring(validate_config(limited))
    assert config.plan.prefs.keys() == plain.plan.prefs.keys() and config.eval.comparisons == plain.eval.comparisons
    assert "max_failed_fraction" not in json.dumps(config.config["judge"])
    assert (plain.judge_failure_limit, config.judge_failure_limit, config.eval_failure_limit) == (0.05, 0.2, 0.2)
    limited["evaluation"]["judge"] = {"type": "synthetic", "max_failed_fraction": 0.5}
    own = Wiring(validate_config(limited))
    assert own.eval_failure_limit == 0.5 and own.eval.comparisons == plain.eval.comparisons
    limited["judge"]["max_failed_fraction"] = 1.5
    with pytest.raises(InputError, match="max_failed_fraction"):
        validate_config(limited)

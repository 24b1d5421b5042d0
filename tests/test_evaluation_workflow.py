"""The evaluation workflow end to end on a tiny embedded setup, via the `snakemake` CLI:
`snakemake --cores 2` alone writes the win-rate matrix, curves, tables and AlpacaEval
exports; `snakemake --report` builds an HTML report whose figures load in headless
Chromium; config changes replan only what they touch (a new checkpoint reruns the comparison
batches, which judge only its pairs); bad input fails in one line.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from linepo.workflow.config import validate_config
from linepo.workflow.evalplan import SUMMARY_FILES, build_eval_plan, summary_path
from linepo.workflow.plan import build_plan
from linepo.workflow.wiring import Wiring
from workflow_utils import copy_workflow, dry_run, edit_config, planned_jobs, snakemake, tiny_config, workflow_with_config

pytestmark = pytest.mark.slow

TINY = tiny_config(**{
    "runs": {"dpo": {"algorithm": "dpo", "eta": 4.0},
             "inpo": {"algorithm": "inpo", "eta": 4.0, "eta_tau": 0.6, "rounds": 2}},
    "evaluation": {"checkpoints": {"inpo_r1": {"run": "inpo", "round": 1}},
                   "decoding": {"n": 2, "temperature": 1.0, "max_new_tokens": 12, "batch_size": 32},
                   "bootstrap": 200, "compare_jobs": 3},
})
LABELS = ["SFT", "DPO", "INPO-R1", "INPO-R2"]
TRAINING_RULES = {"sft_embedded", "prompt_splits", "sample", "judge", "pairs", "score", "train"}


def eval_plan(workdir: Path):
    config = validate_config(yaml.safe_load((workdir / "config.yaml").read_text()))
    return build_eval_plan(config, build_plan(config))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    directory = workflow_with_config(tmp_path_factory.mktemp("evaluation"), TINY)
    result = snakemake(directory, "--cores", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return directory


def batch_logs(workdir: Path) -> dict[str, dict]:
    """Each current batch's counts, from the last line of its log (linepo compare-batch's JSON)
    and its judged/reused lines: {batch id: {"judged", "reused", "judge_loads", "judged_ids", "loads"}}."""
    out = {}
    for batch in eval_plan(workdir).batches():
        lines = (workdir / f"logs/eval/comparisons/batches/{batch}.log").read_text().splitlines()
        out[batch] = {**json.loads(lines[-1]), "judged_ids": {line.split()[1] for line in lines if line.startswith("judged ")},
                      "loads": sum(line.startswith("loading the judge") for line in lines)}
    return out


def read_tsv(path: Path) -> list[dict]:
    lines = [line.split("\t") for line in path.read_text().splitlines()]
    return [dict(zip(lines[0], line)) for line in lines[1:]]


def read_csv(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    rows = [line.split(",") for line in path.read_text().splitlines()]
    return rows[0][1:], [r[0] for r in rows[1:]], np.array([[float(v) for v in r[1:]] for r in rows[1:]])


def test_snakemake_alone_writes_the_matrix_curves_tables_and_exports(workdir):
    summary = workdir / "results/summary"
    columns, rows, m = read_csv(summary / "win_rates.csv")
    assert columns == LABELS + ["Avg"] and rows == LABELS
    se_columns, _, se = read_csv(summary / "win_rates_se.csv")
    assert se_columns == LABELS and se.shape == (4, 4)
    hard_columns, hard_rows, hard = read_csv(summary / "win_rates_hard.csv")
    assert hard_columns == LABELS + ["Avg"] and hard_rows == LABELS
    assert read_csv(summary / "win_rates_hard_se.csv")[0] == LABELS
    pairs = read_tsv(summary / "win_rates_pairs.tsv")
    assert len(pairs) == 12 and {"win_rate", "se", "hard_win_rate", "hard_se"} <= set(pairs[0])
    for figure in ("win_rates.png", "curves.png"):
        assert (summary / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    points = read_tsv(summary / "curves.tsv")
    assert {"run", "iteration", "win_rate_vs_sft", "se", "avg_tokens"} <= set(points[0])
    assert [int(p["iteration"]) for p in points] == [0, 1, 2, 3, 4] and {p["label"] for p in points} == {"INPO"}
    assert float(points[0]["win_rate_vs_sft"]) == 0.5 and all(float(p["avg_tokens"]) > 0 for p in points)
    table = read_tsv(summary / "evaluation.tsv")
    assert [r["label"] for r in table] == LABELS
    for row, values, hard_values in zip(table, m, hard):
        assert float(row["avg_win_rate"]) == pytest.approx(values[-1] / 100, abs=1e-4)
        assert float(row["worst_win_rate"]) == pytest.approx(min(np.delete(values[:-1], LABELS.index(row["label"]))) / 100, abs=1e-4)
        assert float(row["avg_hard_win_rate"]) == pytest.approx(hard_values[-1] / 100, abs=1e-4)
        others = np.delete(hard_values[:-1], LABELS.index(row["label"]))
        assert float(row["worst_hard_win_rate"]) == pytest.approx(min(others) / 100, abs=1e-4)
        assert 0 <= float(row["exploitability"]) <= 0.5 and "brief" in row["category_distribution"]
    for name in ("sft", "dpo", "inpo_r1", "inpo"):
        records = json.loads((workdir / f"results/eval/alpaca_eval/{name}/model_outputs.json").read_text())
        assert len(records) == 16 and set(records[0]) == {"instruction", "output", "generator", "dataset"}
    assert dry_run(workdir) == []  # nothing left to do


def test_the_judge_is_loaded_once_per_batch_job(workdir):
    plan = eval_plan(workdir)
    logs = batch_logs(workdir)
    assert len(logs) == 3 and sum(len(cids) for cids in plan.batches().values()) == len(plan.comparisons)
    assert [log["loads"] for log in logs.values()] == [1, 1, 1]  # one load per job, not per comparison
    for batch, log in logs.items():
        assert log["judged_ids"] == set(plan.batches()[batch]) and log["reused"] == 0
    assert sorted(p.stem for p in (workdir / "results/eval/comparisons/cache").glob("*.parquet")) == sorted(plan.comparisons)


def test_the_matrix_is_consistent(workdir):
    _, _, m = read_csv(workdir / "results/summary/win_rates.csv")
    _, _, se = read_csv(workdir / "results/summary/win_rates_se.csv")
    m = m[:, :-1]
    assert np.all(np.diag(m) == 50.0) and np.all(np.diag(se) == 0)
    assert np.allclose(m + m.T, 100.0, atol=0.011)  # within rounding to 2 decimals
    off = ~np.eye(4, dtype=bool)
    assert np.all(np.isfinite(se[off]) & (se[off] >= 0)) and np.allclose(se, se.T)
    _, _, hard = read_csv(workdir / "results/summary/win_rates_hard.csv")
    _, _, hard_se = read_csv(workdir / "results/summary/win_rates_hard_se.csv")
    hard = hard[:, :-1]
    assert np.all(np.diag(hard) == 50.0) and np.all(np.diag(hard_se) == 0)
    assert np.allclose(hard + hard.T, 100.0, atol=0.011) and np.allclose(hard_se, hard_se.T)
    # Each row scores 1, 0 or ½ and a prompt has 2 samples: every rate is a multiple of ¼ / 16 prompts.
    assert np.allclose(hard * 64 / 100, np.round(hard * 64 / 100), atol=0.01)


SUMMARY = ("win_rates.csv", "win_rates_se.csv", "win_rates_hard.csv", "win_rates_hard_se.csv", "win_rates_counts.csv",
           "win_rates_pairs.tsv", "curves.tsv", "evaluation.tsv")
#: The rules that pool over replicates: what a change of the replicates (or runs) rewrites.
POOLING = {"win_rates_pooled", "eval_curves_pooled", "eval_summary_pooled", "exploitability_pooled",
           "prox_fidelity_pooled"}


def test_regenerating_the_evaluation_gives_byte_identical_files(workdir):
    """Every eval generation and comparison rerun, the comparison cache emptied so that every pair
    is judged again: the same bytes (seeds come from ids)."""
    files = sorted((workdir / "results/eval/generations").glob("*.parquet"))
    files += sorted((workdir / "results/eval/comparisons/batches").glob("*.parquet"))
    files += sorted((workdir / "results/eval/comparisons/cache").glob("*.parquet"))
    files += [workdir / "results/summary" / name for name in SUMMARY]
    before = {path: path.read_bytes() for path in files}
    shutil.rmtree(workdir / "results/eval/comparisons/cache")
    result = snakemake(workdir, "--cores", "2", "--forcerun", "eval_generate")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rule eval_generate" in result.stdout + result.stderr
    assert {path: path.read_bytes() for path in files} == before
    assert sum(log["judged"] for log in batch_logs(workdir).values()) == len(eval_plan(workdir).comparisons)


def test_an_interrupted_batch_judges_only_the_pairs_it_had_not_finished(workdir):
    """As a batch killed midway leaves it: no batch file, some of its pairs cached (one of them
    cut short). The rerun judges the missing and the broken pair, reuses the rest."""
    plan = eval_plan(workdir)
    batch, cids = max(plan.batches().items(), key=lambda item: len(item[1]))
    cache = workdir / "results/eval/comparisons/cache"
    summary = {name: (workdir / "results/summary" / name).read_bytes() for name in SUMMARY}
    (workdir / plan.batch_path(batch)).unlink()
    (cache / f"{cids[0]}.parquet").unlink()
    truncated = cache / f"{cids[1]}.parquet"
    truncated.write_bytes(truncated.read_bytes()[:100])
    # The tables are up to date, so plain `snakemake` would leave the missing batch file alone:
    # ask for it, as the interrupted run still needed it.
    target = plan.batch_path(batch)
    planned = planned_jobs(snakemake(workdir, "-n", target).stdout)
    assert planned == [("eval_compare_batch", {"batch": batch})]
    result = snakemake(workdir, "--cores", "2", target)
    assert result.returncode == 0, result.stderr[-2000:]
    log = batch_logs(workdir)[batch]
    assert log["judged_ids"] == set(cids[:2]) and log["reused"] == len(cids) - 2 and log["loads"] == 1
    result = snakemake(workdir, "--cores", "2")  # the tables made again from the new batch file
    assert result.returncode == 0, result.stderr[-2000:]
    assert {name: (workdir / "results/summary" / name).read_bytes() for name in SUMMARY} == summary
    assert dry_run(workdir) == []


def test_adding_a_run_judges_only_its_row_and_column(workdir):
    """A new checkpoint: its generation only, and the batches that gain one of its comparisons
    rerun, each loading the judge once and judging only the new pairs; old cells are unchanged."""
    before = eval_plan(workdir)
    old_pairs = read_tsv(workdir / "results/summary/win_rates_pairs.tsv")
    old_curves = (workdir / "results/summary/curves.tsv").read_bytes()
    edit_config(workdir, lambda c: c["runs"].update(ipo={"algorithm": "ipo", "eta": 4.0}))
    try:
        after = eval_plan(workdir)
        jobs = dry_run(workdir)
        generated = {w["generation"] for rule, w in jobs if rule == "eval_generate"}
        rerun = {w["batch"] for rule, w in jobs if rule == "eval_compare_batch"}
        ipo = after.checkpoint("ipo").generation
        new = {after.comparison_between(ipo, c.generation) for c in before.checkpoints}
        assert generated == {ipo} and set(after.comparisons) == set(before.comparisons) | new
        assert rerun == {after.batch_of(c) for c in new} and rerun.isdisjoint(before.batches())
        assert set(after.batches()) - rerun <= set(before.batches())  # a batch with no new pair keeps its id
        trained = [w for rule, w in jobs if rule == "train"]
        assert len(trained) == 1 and trained[0]["split"] == "all"  # ipo reuses dpo's data

        result = snakemake(workdir, "--cores", "2")
        assert result.returncode == 0, result.stderr[-2000:]
        logs = {batch: log for batch, log in batch_logs(workdir).items() if batch in rerun}
        assert set().union(*(log["judged_ids"] for log in logs.values())) == new  # only the new pairs
        assert sum(log["judged"] for log in logs.values()) == len(new)
        assert sum(log["reused"] for log in logs.values()) == sum(len(after.batches()[b]) for b in rerun) - len(new)
        assert [log["loads"] for log in logs.values()] == [1] * len(rerun)  # one judge load per batch job
        pairs = read_tsv(workdir / "results/summary/win_rates_pairs.tsv")
        assert [p for p in pairs if "IPO" not in (p["row"], p["column"])] == old_pairs
        assert (workdir / "results/summary/curves.tsv").read_bytes() == old_curves
    finally:
        edit_config(workdir, lambda c: c["runs"].pop("ipo"))
    jobs = dry_run(workdir)  # back to the old batches, still there: only the tables are rewritten
    assert {rule for rule, _ in jobs} <= {"win_rate_matrix", "eval_curves", "eval_summary", "exploitability_table",
                                         "prox_fidelity_table", "all", *POOLING}
    result = snakemake(workdir, "--cores", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert read_tsv(workdir / "results/summary/win_rates_pairs.tsv") == old_pairs
    assert dry_run(workdir) == []


def summary_files(workdir: Path, replicate=None) -> dict[str, bytes]:
    """Every evaluation table and figure in results/summary/ (pooled) or of one replicate, by name."""
    return {name: (workdir / summary_path(name, replicate)).read_bytes()
            for group in SUMMARY_FILES.values() for name in group.values()}


def test_one_replicate_pools_to_replicate_0s_files_byte_for_byte(workdir):
    """Count 1: results/summary/ holds replicate 0's files as they are, and those are what
    linepo win-rates, eval-curves and eval-summary write with replicate 0's specs (the specs of
    the workflow before replicates were evaluated: tests/test_replicate_eval.py), run again here."""
    assert summary_files(workdir) == summary_files(workdir, 0)
    plan, again = eval_plan(workdir), workdir / "again"
    again.mkdir(exist_ok=True)
    limit = Wiring(validate_config(yaml.safe_load((workdir / "config.yaml").read_text()))).eval_failure_limit
    flags = f"--bootstrap 200 --seed 0 --max-failed-fraction {limit}"  # the rules' params (TINY)
    commands = [f"linepo win-rates --spec {shlex.quote(plan.matrix_spec(0))} {flags} --csv again/m.csv "
                "--se-csv again/se.csv --hard-csv again/h.csv --hard-se-csv again/hse.csv --counts-csv again/c.csv "
                "--pairs again/p.tsv --figure again/m.png",
                f"linepo eval-curves --spec {shlex.quote(plan.curves_spec(0))} {flags} --tsv again/curves.tsv "
                "--figure again/curves.png"]
    for command in commands:
        result = subprocess.run(command, shell=True, cwd=workdir, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
    names = {"m.csv": "win_rates.csv", "se.csv": "win_rates_se.csv", "h.csv": "win_rates_hard.csv",
             "hse.csv": "win_rates_hard_se.csv", "c.csv": "win_rates_counts.csv", "p.tsv": "win_rates_pairs.tsv",
             "m.png": "win_rates.png", "curves.tsv": "curves.tsv", "curves.png": "curves.png"}
    assert {name: (again / mine).read_bytes() for mine, name in names.items()} == {
        name: (workdir / summary_path(name)).read_bytes() for name in names.values()}
    shutil.rmtree(again)


def test_a_second_replicate_evaluates_only_its_own_checkpoints_and_is_pooled(workdir):
    """replicates: 2 (sampling varies: one SFT policy): replicate 1's generations (not the shared
    SFT's) and its own batches, judging only its pairs; replicate 0's files untouched; the pooled
    matrix is the mean of the per-replicate ones, its SE the one over replicates. Back to one
    replicate: only the pooling reruns, and results/summary/ is replicate 0's again."""
    before, zero = eval_plan(workdir), summary_files(workdir, 0)
    old_batches = {b: (workdir / before.batch_path(b)).stat().st_mtime_ns for b in before.batches()}
    edit_config(workdir, lambda c: c.update(replicates={"count": 2, "vary": ["sampling"]}))
    try:
        after = eval_plan(workdir)
        jobs = dry_run(workdir)
        generated = {w["generation"] for rule, w in jobs if rule == "eval_generate"}
        judged = {w["batch"] for rule, w in jobs if rule == "eval_compare_batch"}
        own = {c.generation for c in after.view(1).checkpoints} | {p.generation for p in after.curve_points(1)}
        assert after.view(1).sft_generation == before.sft_generation  # shared, not generated again
        assert generated == own - {before.sft_generation} and not generated & set(before.generations)
        assert judged == set(after.batches()) - set(before.batches()) and set(before.batches()) <= set(after.batches())
        tables = {(rule, w.get("replicate")) for rule, w in jobs if rule in ("win_rate_matrix", "eval_curves",
                                                                             "eval_summary")}
        assert tables == {("win_rate_matrix", "1"), ("eval_curves", "1"), ("eval_summary", "1")}

        result = snakemake(workdir, "--cores", "2")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        logs = {batch: log for batch, log in batch_logs(workdir).items() if batch in judged}
        new = set(after.comparisons) - set(before.comparisons)
        assert set().union(*(log["judged_ids"] for log in logs.values())) == new  # only replicate 1's pairs
        assert sum(log["reused"] for log in logs.values()) == 0 and [log["loads"] for log in logs.values()] == [1] * len(logs)
        assert summary_files(workdir, 0) == zero  # replicate 0's files, and its batches, untouched
        assert {b: (workdir / before.batch_path(b)).stat().st_mtime_ns for b in before.batches()} == old_batches
        for kind, se_kind in (("win_rates.csv", "win_rates_se.csv"), ("win_rates_hard.csv", "win_rates_hard_se.csv")):
            per = [read_csv(workdir / summary_path(kind, r))[2] for r in (0, 1)]
            columns, rows, pooled = read_csv(workdir / summary_path(kind))
            assert columns == LABELS + ["Avg"] and rows == LABELS
            assert np.allclose(pooled, (per[0] + per[1]) / 2, atol=0.0051)  # every cell, Avg too
            se = read_csv(workdir / summary_path(se_kind))[2]
            assert np.allclose(se, np.abs(per[0] - per[1])[:, :-1] / 2, atol=0.0051)  # sample SD / √2 of two
        points, per_points = read_tsv(workdir / "results/summary/curves.tsv"), [
            read_tsv(workdir / summary_path("curves.tsv", r)) for r in (0, 1)]
        assert [int(p["iteration"]) for p in points] == [0, 1, 2, 3, 4] and {p["replicates"] for p in points} == {"2"}
        for k, point in enumerate(points):
            values = [float(p[k]["win_rate_vs_sft"]) for p in per_points]
            assert float(point["win_rate_vs_sft"]) == pytest.approx(np.mean(values), abs=5.1e-5)
            assert float(point["se"]) == pytest.approx(abs(values[0] - values[1]) / 2, abs=5.1e-5)
        table, per_table = read_tsv(workdir / "results/summary/evaluation.tsv"), [
            read_tsv(workdir / summary_path("evaluation.tsv", r)) for r in (0, 1)]
        assert [row["label"] for row in table] == LABELS
        for k, row in enumerate(table):
            mean = np.mean([float(p[k]["avg_win_rate"]) for p in per_table])
            assert row["replicates"] == "2" and float(row["avg_win_rate"]) == pytest.approx(mean, abs=5.1e-5)
        assert "the mean over 2 replicates" in result.stdout + result.stderr
        assert dry_run(workdir) == []
    finally:
        edit_config(workdir, lambda c: c.pop("replicates"))
    assert {rule for rule, _ in dry_run(workdir)} == POOLING | {"all"}
    result = snakemake(workdir, "--cores", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert summary_files(workdir) == summary_files(workdir, 0) == zero
    assert dry_run(workdir) == []


def test_changing_only_the_eval_judge_regenerates_and_retrains_nothing(workdir):
    matrix = [[0.5, 0.3, 0.7], [0.7, 0.5, 0.3], [0.3, 0.7, 0.5]]
    edit_config(workdir, lambda c: c["evaluation"].update(judge={"type": "synthetic", "matrix": matrix}))
    try:
        jobs = dry_run(workdir)
        rules = [rule for rule, _ in jobs]
        assert set(rules) == {"eval_compare_batch", "win_rate_matrix", "eval_curves", "eval_summary", "all",
                              "win_rates_pooled", "eval_curves_pooled", "eval_summary_pooled"}
        assert rules.count("eval_compare_batch") == len(eval_plan(workdir).batches()) == 3
    finally:
        edit_config(workdir, lambda c: c["evaluation"].pop("judge"))
    assert dry_run(workdir) == []


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["evaluation"]["checkpoints"].update(ghost={"run": "linepo", "round": 1}),
         "config key evaluation.checkpoints.ghost.run: no run 'linepo' produces this checkpoint"),
        (lambda c: c["evaluation"].update(judge={"type": "synthetic", "matrix": [[0.5, 1.2, 0.8], [-0.2, 0.5, 0.1],
                                                                                  [0.2, 0.9, 0.5]]}),
         "config key evaluation.judge"),
        (lambda c: c["evaluation"].update(compare_jobs=0), "config key evaluation.compare_jobs: 0 is less than"),
        (lambda c: c["evaluation"].update(compare_jobs="4"), "config key evaluation.compare_jobs: '4' is not of type"),
    ],
)
def test_bad_evaluation_config_fails_before_any_job_in_one_line(workdir, edit, message):
    edit_config(workdir, edit)
    try:
        result = snakemake(workdir, "-n")
        assert result.returncode != 0
        lines = [line for line in result.stderr.splitlines() if "config key" in line]
        assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
        assert "rule " not in result.stdout
    finally:
        edit_config(workdir, lambda c: c.update(evaluation=TINY["evaluation"]))
    assert dry_run(workdir) == []


def test_an_eval_prompt_file_without_instructions_fails_at_plan_time(workdir, tmp_path):
    """Counted when the config is validated (linepo.workflow.inputs): one line naming the config
    key, before any job, rather than a failed prompts job whose log names a CLI flag."""
    bad = tmp_path / "alpaca_eval.json"
    bad.write_text(json.dumps([{"question": "What is 2+2?", "dataset": "x"}]))
    edit_config(workdir, lambda c: c["eval_prompts"].update(source=str(bad)))
    try:
        before = sorted((workdir / "results").rglob("*"))
        result = snakemake(workdir, "-n")
        assert result.returncode != 0
        lines = [line for line in result.stderr.splitlines() if line.startswith("linepo:")]
        assert len(lines) == 1 and f"config key eval_prompts.source: {bad}: no prompt" in lines[0], result.stderr[-2000:]
        assert "eval_prompts.prompt_column" in lines[0] and "rule " not in result.stdout
        assert sorted((workdir / "results").rglob("*")) == before  # nothing written
    finally:
        edit_config(workdir, lambda c: c["eval_prompts"].update(source="embedded"))
    assert dry_run(workdir) == []


# ----------------------------------------------------------------------------- the HTML report

# Appended to a copy of the report: once the page has loaded, decode every PNG result, then
# show the heatmap the way the report's own menu does (app.setView), and write what loaded
# into the DOM for --dump-dom to read. No DevTools protocol involved.
CHECK_SCRIPT = """
<script>
window.addEventListener("load", function () {
  var shown = %s;
  var paths = Object.keys(results).filter(function (p) { return results[p].data_uri.indexOf("data:image/png") === 0; });
  var out = [], pending = paths.length;
  function record() {
    if (--pending > 0) return;
    if (shown) app.setView({content: "img", contentPath: results[shown].data_uri});
    setTimeout(function () {
      var img = document.querySelector("#app img[src^='data:image/png']");
      out.push("SHOWN " + (img && img.complete ? img.naturalWidth + "x" + img.naturalHeight : "none"));
      var pre = document.createElement("pre");
      pre.id = "linepo-image-check";
      pre.textContent = out.sort().join("\\n");
      document.body.appendChild(pre);
    }, 500);
  }
  paths.forEach(function (p) {
    var img = new Image();
    img.onload = function () { out.push(p + " " + img.naturalWidth + "x" + img.naturalHeight); record(); };
    img.onerror = function () { out.push(p + " error"); record(); };
    img.src = results[p].data_uri;
  });
});
</script>
"""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def with_check(report: Path, out: Path, shown: str | None) -> Path:
    html = report.read_text()
    end = html.rindex("</body>")  # the last one: the page's scripts contain the string too
    out.write_text(html[:end] + CHECK_SCRIPT % json.dumps(shown) + html[end:])
    return out


def png_size(path: Path) -> tuple[int, int]:
    return struct.unpack(">II", path.read_bytes()[16:24])


def test_the_report_builds_and_its_figures_load_in_headless_chromium(workdir, tmp_path):
    result = snakemake(workdir, "--report", "report.html")
    assert result.returncode == 0, result.stderr[-2000:]
    report = workdir / "report.html"
    html = report.read_text()
    for name in ("win_rates.png", "curves.png", "evaluation.tsv", "Training dynamics", "Row-vs-column win rate"):
        assert name in html
    browser = chromium()
    if browser is None:
        pytest.skip("no chromium: apt-get install -y --no-install-recommends chromium")
    args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000",
            "--window-size=1400,1000"]
    checked = with_check(report, tmp_path / "checked.html", "results/summary/win_rates.png")
    dom = subprocess.run(args + ["--dump-dom", checked.as_uri()], capture_output=True, text=True, timeout=180).stdout
    found = re.search(r'<pre id="linepo-image-check">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    lines = found.group(1).splitlines()
    heatmap = workdir / "results/summary/win_rates.png"
    curves = workdir / "results/summary/curves.png"
    assert "results/summary/win_rates.png {}x{}".format(*png_size(heatmap)) in lines
    assert "results/summary/curves.png {}x{}".format(*png_size(curves)) in lines
    assert "SHOWN {}x{}".format(*png_size(heatmap)) in lines  # displayed by the report's own viewer

    # Screenshots of the page with the heatmap displayed and of its start page.
    import matplotlib.image as mpimg

    shots = {}
    for name, shown in (("figure", "results/summary/win_rates.png"), ("start", None)):
        page = with_check(report, tmp_path / f"{name}.html", shown)
        shot = tmp_path / f"{name}.png"
        run = subprocess.run(args + [f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=180)
        assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
        shots[name] = mpimg.imread(shot)[..., :3]
    figure = mpimg.imread(heatmap)[..., :3]
    changed = np.any(np.abs(shots["figure"] - shots["start"]) > 0.02, axis=-1).sum()
    assert changed > 0.3 * figure.shape[0] * figure.shape[1]  # the heatmap is on screen


# ----------------------------------------------------------------------------- the paper's config


def test_the_paper_config_plans_its_evaluation_quickly_and_offline(tmp_path):
    """configs/paper.yaml: 7 Table 2 checkpoints on AlpacaEval; Figure 3 over the 18 steps."""
    workdir = copy_workflow(tmp_path)
    start = time.perf_counter()
    result = snakemake(workdir, "-n", "--configfile", "configs/paper.yaml", "--replace-workflow-config")
    seconds = time.perf_counter() - start
    assert result.returncode == 0, result.stderr[-2000:]
    rules = [rule for rule, _ in planned_jobs(result.stdout)]
    # Generations: SFT, dpo, ipo, 18 iter_ipo, 18 inpo (INPO-R2 among them), 6 linepo after the shared rounds.
    assert rules.count("eval_generate") == 1 + 2 + 18 + 18 + 6
    # Comparisons: the 7 × 6 / 2 matrix, plus every other curve step against SFT, in
    # evaluation.compare_jobs = 4 batch jobs (4 loads of the 8B judge, not 59).
    config = validate_config(yaml.safe_load((workdir / "configs/paper.yaml").read_text()))
    eplan = build_eval_plan(config, build_plan(config))
    assert len(eplan.comparisons) == 21 + (18 + 18 + 6) - 4 == 59
    assert rules.count("eval_compare_batch") == len(eplan.batches()) == 4
    assert sorted(c for cids in eplan.batches().values() for c in cids) == sorted(eplan.comparisons)
    assert rules.count("alpaca_eval_export") == 7
    assert {"win_rate_matrix", "eval_curves", "eval_summary"} <= set(rules)
    assert rules.count("train") == 44  # evaluation adds no training
    assert seconds < 30
    assert not (workdir / "results").exists()  # planning wrote and downloaded nothing

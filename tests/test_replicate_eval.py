"""Evaluation over replicates (issue 15, item 1) without Snakemake: each replicate's eval plan
(its own checkpoints and curves; generations, comparisons and batches shared where its policies
are another replicate's; batches per replicate, so that a new replicate adds only its own), and
the pooled win rates, curves and summary table: the mean of the per-replicate files cell by cell
with the standard error over replicates, a cell missing in any replicate missing, and with one
replicate the per-replicate files byte for byte.

    HF_HUB_OFFLINE=1 python -m pytest -q tests/test_replicate_eval.py
"""

from __future__ import annotations

import csv
import json
import math
import statistics

import numpy as np
import pytest

from linepo.cli import main
from linepo.schemas import write_table
from linepo.workflow.evalplan import SUMMARY_FILES, build_eval_plan, comparison_shard, summary_path
from linepo.workflow.plan import build_plan, recipe_id
from linepo.workflow.wiring import Wiring
from workflow_utils import default_config_with

config_with = default_config_with


def plans(replicates=None, edit=None):
    config = config_with(replicates, edit)
    plan = build_plan(config)
    return plan, build_eval_plan(config, plan)


def jobs(k):
    return lambda c: c["evaluation"].update(compare_jobs=k)


def specs(plan, eplan, replicate) -> tuple:
    return (eplan.matrix_spec(replicate), eplan.curves_spec(replicate), eplan.summary_spec(plan, True, replicate))


# ----------------------------------------------------------------------------- the plan


@pytest.mark.parametrize("compare_jobs", [1, 4])
def test_one_replicate_has_the_batches_and_specs_of_a_config_without_replicates(compare_jobs):
    plan, eplan = plans(edit=jobs(compare_jobs))
    assert list(eplan.replicates) == [0]
    assert eplan.view(0).checkpoints == eplan.checkpoints and eplan.view(0).curves == eplan.curves
    # The batches as before replicates: every comparison by its shard, each batch's id its sorted ids.
    shards = {}
    for cid in sorted(eplan.comparisons):
        shards.setdefault(comparison_shard(cid, compare_jobs), []).append(cid)
    assert eplan.batches() == {recipe_id("eval_compare_batch", {"comparisons": cids}): cids
                               for _, cids in sorted(shards.items())}
    # Replicate 0 of two (or three) replicates: the same specs and batches, so nothing of it reruns.
    for count in (2, 3):
        more_plan, more = plans(count, jobs(compare_jobs))
        assert specs(more_plan, more, 0) == specs(plan, eplan, 0)
        assert {b: cids for b, cids in more.batches().items() if b in eplan.batches()} == eplan.batches()


def test_each_replicate_evaluates_its_own_checkpoints_under_the_same_labels():
    plan, eplan = plans(2)
    zero, one = eplan.view(0), eplan.view("1")  # a wildcard's string, as the rules pass it
    assert [(c.name, c.label) for c in one.checkpoints] == [(c.name, c.label) for c in zero.checkpoints]
    assert one.checkpoints[0].policy == plan.sfts[1] != plan.sfts[0]
    for c in one.checkpoints[1:]:
        named = c.name != c.run
        assert c.policy == (plan.policy_after_round(c.run, c.round, 1) if named else plan.final_policy(c.run, 1))
    assert list(one.curves) == list(zero.curves) == ["iter_ipo", "inpo", "linepo"]
    for run, points in one.curves.items():
        assert [p.policy for p in points] == [plan.sfts[1]] + [s.policy for s in plan.replicates[1][run]]
        assert all(p.comparison == eplan.comparison_between(p.generation, one.sft_generation) for p in points[1:])
    # Everything varies: nothing of replicate 1 is replicate 0's.
    assert not set(eplan.matrix_comparisons(0)) & set(eplan.matrix_comparisons(1))
    assert not {p.generation for p in eplan.curve_points(0)} & {p.generation for p in eplan.curve_points(1)}
    assert json.loads(eplan.summary_spec(plan, True, 1))["exploitability"]["sft"] == plan.exploitability_path(plan.sfts[1])
    # Every comparison in one batch, each batch one replicate's.
    batches = eplan.batches()
    assert sorted(c for cids in batches.values() for c in cids) == sorted(eplan.comparisons)
    assert sorted(eplan.owner[cids[0]] for cids in batches.values()) == [0, 1]
    assert all(len({eplan.owner[c] for c in cids}) == 1 for cids in batches.values())
    spec = json.loads(eplan.matrix_spec(1))
    assert {entry["batch"] for entry in spec["comparisons"].values()} == {
        eplan.batch_path(b) for b, cids in batches.items() if eplan.owner[cids[0]] == 1}


def test_what_replicates_share_is_generated_and_judged_once():
    plan, sampling = plans({"count": 2, "vary": ["sampling"]})  # one SFT policy: one SFT generation
    assert sampling.view(1).sft_generation == sampling.view(0).sft_generation == sampling.sft_generation
    assert sampling.view(1).checkpoints[0] == sampling.view(0).checkpoints[0]
    shared = {c.generation for c in sampling.view(0).checkpoints} & {c.generation for c in sampling.view(1).checkpoints}
    assert shared == {sampling.sft_generation}  # the trained policies differ: their own generations
    zero = {c.generation for c in sampling.view(0).checkpoints} | {p.generation for p in sampling.curve_points(0)}
    assert len(sampling.generations) == 2 * len(zero) - 1  # each replicate's, the SFT's once
    assert all(len({sampling.owner[c] for c in cids}) == 1 for cids in sampling.batches().values())
    _, judging = plans({"count": 2, "vary": ["judging"]})  # new judge ids: new policy ids downstream
    assert judging.view(1).sft_generation == judging.sft_generation
    assert not set(judging.matrix_comparisons(0)) & set(judging.matrix_comparisons(1))


@pytest.mark.parametrize("compare_jobs", [1, 3])
def test_a_new_replicate_plans_only_its_own_generations_and_batches(compare_jobs):
    two_plan, two = plans(2, jobs(compare_jobs))
    three_plan, three = plans(3, jobs(compare_jobs))
    assert set(two.generations) <= set(three.generations)
    own = {c.generation for c in three.view(2).checkpoints} | {p.generation for p in three.curve_points(2)}
    assert set(three.generations) - set(two.generations) == own
    # The old batches are there unchanged; the new ones hold exactly the new comparisons.
    assert {b: cids for b, cids in three.batches().items() if b in two.batches()} == two.batches()
    new = set(three.batches()) - set(two.batches())
    assert sorted(c for b in new for c in three.batches()[b]) == sorted(set(three.comparisons) - set(two.comparisons))
    assert {three.owner[c] for b in new for c in three.batches()[b]} == {2} and len(new) <= compare_jobs
    for r in (0, 1):
        assert specs(three_plan, three, r) == specs(two_plan, two, r)


def test_targets_per_replicate_files_and_pooled_specs():
    wiring = Wiring(config_with(2))
    assert {"results/summary/win_rates.csv", "results/summary/evaluation.tsv",
            "results/summary/curves.tsv"} <= set(wiring.eval_targets())
    assert summary_path("win_rates_se.csv", 1) == "results/summary/replicates/win_rates_se-1.csv"
    assert summary_path("curves.png", "{replicate}") == "results/summary/replicates/curves-{replicate}.png"
    files = wiring.eval.replicate_files("win_rates")
    assert len(files) == 2 * 7 and "results/summary/replicates/win_rates_pairs-1.tsv" in files
    spec = json.loads(wiring.eval.pooled_spec("summary"))
    assert spec == {"replicates": {str(r): {"out": f"results/summary/replicates/evaluation-{r}.tsv"} for r in (0, 1)}}


# ----------------------------------------------------------------------------- the pooled files

LABELS = ["SFT", "A", "B"]
PROMPTS = 12


def write_comparison(path, values, failed=0):
    """A comparisons file: P(a ≻ b) ``values`` per prompt (one sample), the first ``failed`` failed."""
    rows = [{"prompt_id": f"p{i:02d}", "sample_index": 0, "prob_a_first": None if i < failed else v,
             "prob_b_first": None if i < failed else 1 - v, "prob_a_wins": None if i < failed else v,
             "failed": i < failed, "failure": "unparsable" if i < failed else None} for i, v in enumerate(values)]
    write_table(rows, path, "comparisons", metadata={"max_failed_fraction": 0.25, "failed": failed})


def write_generation(path, tokens):
    rows = [{"prompt_id": f"p{i:02d}", "prompt": f"prompt {i}", "sample_index": 0, "response": "Sure.",
             "num_tokens": int(t), "finish_reason": "stop", "sampler_settings": "{}"} for i, t in enumerate(tokens)]
    write_table(rows, path, "samples")


def write_replicate(d, r: int, *, missing=False) -> dict:
    """Replicate r's per-replicate files, written by linepo win-rates, eval-curves and eval-summary
    from hand-made comparisons and generations (``missing``: A vs B over its failure limit)."""
    rng = np.random.default_rng(r)
    d.mkdir(parents=True, exist_ok=True)
    gens = {label: f"g{r}{label.lower()}" for label in LABELS}
    for i, label in enumerate(LABELS):
        write_generation(d / f"{gens[label]}.parquet", rng.integers(5, 30, PROMPTS) + i)
    comparisons = {}
    for x, y in (("SFT", "A"), ("SFT", "B"), ("A", "B")):
        a, b = sorted((gens[x], gens[y]))
        cid = f"c{r}{a}{b}"
        write_comparison(d / f"{cid}.parquet", rng.uniform(0.2, 0.8, PROMPTS).tolist(),
                         failed=6 if missing and {x, y} == {"A", "B"} else r)
        comparisons[cid] = {"a": a, "b": b, "path": str(d / f"{cid}.parquet")}
    files = {flag: str(d / summary_path(name, r).rpartition("/")[2]) for group in SUMMARY_FILES.values()
             for flag, name in group.items() if flag not in ("figure", "out")}
    files.update(figure=str(d / f"win_rates-{r}.png"), curve_figure=str(d / f"curves-{r}.png"),
                 out=str(d / f"evaluation-{r}.tsv"))
    checkpoints = [{"name": label.lower(), "label": label, "generation": gens[label]} for label in LABELS]
    assert main(["win-rates", "--spec", json.dumps({"checkpoints": checkpoints, "comparisons": comparisons}),
                 "--bootstrap", "50", "--csv", files["csv"], "--se-csv", files["se"], "--hard-csv", files["hard"],
                 "--hard-se-csv", files["hard_se"], "--counts-csv", files["counts"], "--pairs", files["pairs"],
                 "--figure", files["figure"]]) == 0
    by_generation = {gens[label]: cid for cid, c in comparisons.items() for label in ("A", "B")
                     if {c["a"], c["b"]} == {gens["SFT"], gens[label]}}
    points = [{"iteration": 0, "round": 0, "split": "sft", "generation": gens["SFT"], "comparison": None,
               "sft_generation": gens["SFT"]}]
    points += [{"iteration": k, "round": 1, "split": str(k - 1), "generation": gens[label],
                "comparison": by_generation[gens[label]], "sft_generation": gens["SFT"]}
               for k, label in ((1, "A"), (2, "B"))]
    curves = {"runs": {"inpo": {"label": "INPO", "round_length": 2, "points": points}},
              "generations": {g: str(d / f"{g}.parquet") for g in gens.values()},
              "comparisons": {cid: {"path": c["path"]} for cid, c in comparisons.items()}}
    assert main(["eval-curves", "--spec", json.dumps(curves), "--bootstrap", "50", "--tsv", files["tsv"],
                 "--figure", files["curve_figure"]]) == 0
    reports = {}
    for i, label in enumerate(LABELS):
        mix = [0.2 + 0.05 * r, 0.5 - 0.01 * i, 0.3 - 0.05 * r + 0.01 * i]
        report = {"exploitability": 0.1 + 0.02 * r * (i + 1), "category_distribution": dict(zip(("brief", "plain",
                                                                                                  "detailed"), mix))}
        reports[label.lower()] = str(d / f"x-{label}.json")
        (d / f"x-{label}.json").write_text(json.dumps(report))
    summary = {"checkpoints": [{**c, "policy": f"policy-{r}-{c['name']}"} for c in checkpoints],
               "generations": curves["generations"], "exploitability": reports}
    assert main(["eval-summary", "--spec", json.dumps(summary), "--matrix", files["csv"], "--hard-matrix",
                 files["hard"], "--counts", files["counts"], "--out", files["out"]]) == 0
    return files


def pooled_spec(replicates: dict[int, dict], group: str) -> str:
    keys = {"curves": {"tsv": "tsv", "figure": "curve_figure"}, "summary": {"out": "out"}}.get(
        group, {flag: flag for flag in SUMMARY_FILES["win_rates"]})
    return json.dumps({"replicates": {str(r): {flag: files[key] for flag, key in keys.items()}
                                      for r, files in replicates.items()}})


def pool_all(replicates: dict[int, dict], out) -> dict:
    """Every pooled file of ``replicates`` in ``out``, by flag (figure: the heatmap)."""
    out.mkdir(exist_ok=True)
    pooled = {flag: out / name for flag, name in SUMMARY_FILES["win_rates"].items()}
    pooled.update(tsv=out / "curves.tsv", curve_figure=out / "curves.png", out=out / "evaluation.tsv")
    flags = [x for flag in SUMMARY_FILES["win_rates"] for x in (f"--{flag.replace('_', '-')}", str(pooled[flag]))]
    assert main(["win-rates-pooled", "--spec", pooled_spec(replicates, "win_rates"), *flags]) == 0
    assert main(["eval-curves-pooled", "--spec", pooled_spec(replicates, "curves"), "--tsv", str(pooled["tsv"]),
                 "--figure", str(pooled["curve_figure"])]) == 0
    assert main(["eval-summary-pooled", "--spec", pooled_spec(replicates, "summary"), "--out", str(pooled["out"])]) == 0
    return pooled


def cells(path) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(open(path, newline="")))
    return rows[0], rows[1:]


def tsv(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def mean_and_se(values):
    values = [float(v) for v in values]
    return statistics.mean(values), statistics.stdev(values) / math.sqrt(len(values))


def test_one_replicate_pools_to_its_own_files_byte_for_byte(tmp_path):
    files = write_replicate(tmp_path / "r0", 0)
    pooled = pool_all({0: files}, tmp_path / "pooled")
    for flag, path in pooled.items():
        assert path.read_bytes() == open(files[flag], "rb").read(), flag


def test_the_pooled_files_are_the_means_of_the_per_replicate_ones(tmp_path):
    replicates = {r: write_replicate(tmp_path / f"r{r}", r) for r in range(3)}
    pooled = pool_all(replicates, tmp_path / "pooled")
    for kind, se_kind in (("csv", "se"), ("hard", "hard_se")):
        header, rows = cells(pooled[kind])
        per = [cells(files[kind]) for files in replicates.values()]
        assert header == per[0][0] == ["row/column", *LABELS, "Avg"] and [row[0] for row in rows] == LABELS
        se_header, se_rows = cells(pooled[se_kind])
        assert se_header == ["row/column", *LABELS]
        for i, row in enumerate(rows):
            for j, cell in enumerate(row[1:], start=1):  # Avg included: the mean of the replicates' Avg
                mean, se = mean_and_se(p[1][i][j] for p in per)
                assert float(cell) == pytest.approx(mean, abs=0.0051)
                if j <= len(LABELS):
                    assert float(se_rows[i][j]) == pytest.approx(se, abs=0.0051)
        assert [float(se_rows[i][i + 1]) for i in range(3)] == [0.0] * 3  # the diagonal: 50 in every replicate
    judged = sum(int(cells(f["counts"])[1][0][2].split("/")[0]) for f in replicates.values())
    failed = sum(int(cells(f["counts"])[1][0][2].split("/")[1]) for f in replicates.values())
    assert cells(pooled["counts"])[1][0][2] == f"{judged}/{failed}" == f"{3 * PROMPTS}/3"  # replicate r: r failed
    pairs = tsv(pooled["pairs"])
    per_pairs = [tsv(f["pairs"]) for f in replicates.values()]
    assert [(p["row"], p["column"]) for p in pairs] == [(p["row"], p["column"]) for p in per_pairs[0]]
    for k, pair in enumerate(pairs):
        mean, se = mean_and_se(p[k]["hard_win_rate"] for p in per_pairs)
        assert float(pair["hard_win_rate"]) == pytest.approx(mean, abs=5.1e-5)
        assert float(pair["hard_se"]) == pytest.approx(se, abs=5.1e-5) and pair["replicates"] == "3"
    assert pooled["figure"].read_bytes()[:8] == pooled["curve_figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    curves, per_curves = tsv(pooled["tsv"]), [tsv(f["tsv"]) for f in replicates.values()]
    assert [int(p["iteration"]) for p in curves] == [0, 1, 2]
    for k, point in enumerate(curves):
        for column, se_column in (("win_rate_vs_sft", "se"), ("avg_tokens", "avg_tokens_se")):
            mean, se = mean_and_se(p[k][column] for p in per_curves)
            assert float(point[column]) == pytest.approx(mean, abs=5.1e-5)
            assert float(point[se_column]) == pytest.approx(se, abs=5.1e-5)
    assert float(curves[0]["win_rate_vs_sft"]) == 0.5 and float(curves[0]["se"]) == 0.0

    summary, per_summary = tsv(pooled["out"]), [tsv(f["out"]) for f in replicates.values()]
    assert [row["label"] for row in summary] == LABELS
    for k, row in enumerate(summary):
        for number in ("avg_win_rate", "worst_win_rate", "avg_hard_win_rate", "avg_tokens", "exploitability"):
            mean, se = mean_and_se(p[k][number] for p in per_summary)
            assert float(row[number]) == pytest.approx(mean, abs=5.1e-5)
            assert float(row[f"{number}_se"]) == pytest.approx(se, abs=5.1e-5)
        assert int(row["judged"]) == sum(int(p[k]["judged"]) for p in per_summary)
        assert row["category_distribution"].startswith("brief 0.250 ± 0.029, plain ")


def test_a_cell_missing_in_one_replicate_is_missing_in_the_pool(tmp_path):
    replicates = {0: write_replicate(tmp_path / "r0", 0), 1: write_replicate(tmp_path / "r1", 1, missing=True)}
    assert cells(replicates[1]["csv"])[1][1][3] == ""  # A vs B: 6 of 12 failed, over the limit 0.25
    pooled = pool_all(replicates, tmp_path / "pooled")
    _, rows = cells(pooled["csv"])
    assert rows[1][3] == rows[2][2] == "" and rows[1][4] == rows[2][4] == ""  # the cells and their rows' Avg
    assert rows[0][4] != "" and rows[0][2] != ""  # SFT's row: nothing missing
    _, se_rows = cells(pooled["se"])
    assert se_rows[1][3] == "" and se_rows[0][2] != ""
    pair = next(p for p in tsv(pooled["pairs"]) if (p["row"], p["column"]) == ("A", "B"))
    assert pair["missing"] == "True" and pair["win_rate"] == "nan"
    summary = {row["label"]: row for row in tsv(pooled["out"])}
    assert summary["A"]["avg_win_rate"] == "nan" and summary["A"]["missing_cells"] == "1"
    assert summary["SFT"]["avg_win_rate"] != "nan"


def test_replicates_with_other_checkpoints_are_refused_in_one_line(tmp_path, capsys):
    replicates = {0: write_replicate(tmp_path / "r0", 0), 1: write_replicate(tmp_path / "r1", 1)}
    matrix = tmp_path / "r1" / "win_rates-1.csv"
    matrix.write_text(matrix.read_text().replace("B", "C"))
    capsys.readouterr()  # what writing the replicates printed
    code = main(["win-rates-pooled", "--spec", pooled_spec(replicates, "win_rates"),
                 *[x for flag in SUMMARY_FILES["win_rates"] for x in (f"--{flag.replace('_', '-')}",
                                                                      str(tmp_path / f"out-{flag}"))]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "replicate 1: its checkpoints" in err


def test_a_pooled_spec_is_inline_json_or_a_file_and_bad_ones_are_one_line(tmp_path, capsys):
    """--spec is read as every JSON-object argument is (linepo.sources.json_object_argument)."""
    files = write_replicate(tmp_path / "r0", 0)
    spec = tmp_path / "spec.json"
    spec.write_text(pooled_spec({0: files}, "summary"))
    assert main(["eval-summary-pooled", "--spec", str(spec), "--out", str(tmp_path / "out.tsv")]) == 0
    assert (tmp_path / "out.tsv").read_bytes() == open(files["out"], "rb").read()
    for text, message in (('{"replicates": {}} {}', "--spec: not valid JSON (Extra data"), ("[]", "must be a JSON object"),
                          ('{"runs": {}}', 'give {"replicates"'), ('{"replicates": {"0": {}}}', "replicate 0: no out"),
                          (str(tmp_path / "nope.json"), "neither inline JSON nor a readable file")):
        capsys.readouterr()
        assert main(["eval-summary-pooled", "--spec", text, "--out", str(tmp_path / "bad.tsv")]) == 2, text
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, (text, err)

"""Comparisons judged in batches (linepo.evaluation.batches, `linepo compare-batch`): one judge
load per batch, pairs cached one by one and reused only while their generations' digests and
the judge match, results equal to `linepo compare`'s, and the plan's stable shards.

    HF_HUB_OFFLINE=1 python -m pytest -q tests/test_compare_batches.py
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from linepo.cli import main
from linepo.errors import InputError
from linepo.evaluation import batches as eb
from linepo.schemas import read_metadata, read_table, write_table
from linepo.stages.judges import Judge, SyntheticJudge
from linepo.workflow.config import validate_config
from linepo.workflow.evalplan import build_eval_plan, comparison_shard
from linepo.workflow.plan import build_plan
from linepo.workflow.wiring import Wiring
from workflow_utils import default_realisation

BASE = default_realisation()  # one realisation of the default: batch counts are per replicate
SYNTHETIC = {"type": "synthetic"}
STARTS = ["Briefly,", "Sure,", "Certainly,"]  # the oracle's brief / plain / detailed


def write_generation(path, seed: int, prompts: int = 6, n: int = 2):
    rng = np.random.default_rng(seed)
    rows = [{"prompt_id": f"p{i}", "prompt": f"prompt {i}", "sample_index": k,
             "response": f"{STARTS[rng.integers(3)]} answer {i}.{k} {'more ' * int(rng.integers(3))}",
             "num_tokens": 3, "finish_reason": "stop", "sampler_settings": "{}"}
            for i in range(prompts) for k in range(n)]
    write_table(rows, path, "samples")
    return path


@pytest.fixture
def generations(tmp_path):
    return {name: str(write_generation(tmp_path / f"{name}.parquet", seed)) for seed, name in enumerate("wxyz")}


def pairs_of(generations, names=("wx", "wy", "xy", "xz", "yz")):
    return {f"c{pair}": {"a": generations[pair[0]], "b": generations[pair[1]]} for pair in names}


class Counting(Judge):
    """The synthetic oracle, counting how often it is built and called; fails the comparisons
    whose first response ends with "more more " (a reason, and a lifetime count in its summary)."""

    name = "counting"
    built = 0

    def __init__(self, config=None, source=""):
        type(self).built += 1
        self.oracle, self.calls, self.lifetime = SyntheticJudge(), 0, 0

    def _probabilities(self, prompts, a, b):
        self.calls += 1
        p, failed = self.oracle.probabilities(prompts, a, b)
        failed = failed | np.array([x.endswith("more more ") for x in a])
        self.lifetime += int(failed.sum())
        self.last_reasons = ["long-winded" if f else None for f in failed]
        return np.where(failed, np.nan, p), failed

    def failure_summary(self) -> str:
        return f"{self.lifetime} long-winded answers so far"

    def reset_failures(self) -> None:
        self.lifetime = 0


@pytest.fixture
def counting(monkeypatch):
    Counting.built = 0
    monkeypatch.setattr("linepo.stages.judges.make_judge", lambda config, source="": Counting())
    return Counting


def run(pairs, tmp_path, judge=SYNTHETIC, out="batch.parquet", log=None):
    lines = []
    stats = eb.judge_batch(pairs, judge, tmp_path / "cache", tmp_path / out, log=log or lines.append)
    return stats, lines


# ----------------------------------------------------------------------------- the plan's shards


def plans(edit=None):
    config = copy.deepcopy(BASE)
    if edit:
        edit(config)
    config = validate_config(config)
    return config, build_eval_plan(config, build_plan(config))


def test_a_comparison_keeps_its_shard_when_comparisons_are_added():
    jobs = lambda k: (lambda c: c["evaluation"].update(compare_jobs=k))  # noqa: E731
    _, before = plans(jobs(4))
    _, after = plans(lambda c: (jobs(4)(c), c["runs"].update(sppo={"algorithm": "sppo", "eta": 4.0, "rounds": 1})))
    assert set(before.comparisons) < set(after.comparisons)
    assert {cid: comparison_shard(cid, 4) for cid in before.comparisons} == {
        cid: comparison_shard(cid, 4) for cid in after.comparisons if cid in before.comparisons}
    for cid in before.comparisons:
        old, new = before.batches()[before.batch_of(cid)], after.batches()[after.batch_of(cid)]
        assert set(old) <= set(new)  # still with the same comparisons, plus new ones
        assert set(new) - set(old) <= set(after.comparisons) - set(before.comparisons)
    # A batch's id is its set of comparisons: those that gained one have new ids.
    assert {b for b, cids in after.batches().items() if set(cids) <= set(before.comparisons)} <= set(before.batches())
    assert len(after.batches()) == 4 and sorted(c for cids in after.batches().values() for c in cids) == sorted(after.comparisons)


def test_compare_jobs_is_an_execution_key():
    one, plan1 = plans()
    four, plan4 = plans(lambda c: c["evaluation"].update(compare_jobs=4))
    assert "compare_jobs" not in four["evaluation"] and four["_execution"]["evaluation"]["compare_jobs"] == 4
    assert one["_execution"]["evaluation"]["compare_jobs"] == 1 and len(plan1.batches()) == 1
    assert plan4.comparisons == plan1.comparisons and plan4.generations == plan1.generations
    assert len(plan4.batches()) == 4 and set(plan4.batches()).isdisjoint(plan1.batches())
    assert Wiring(four).eval_judge_spec(plan4.judge) == Wiring(one).eval_judge_spec(plan1.judge)
    assert build_plan(four).policies.keys() == build_plan(one).policies.keys()
    # A new eval judge: new comparison ids, so new batch ids.
    _, other = plans(lambda c: c["evaluation"].update(judge={"type": "synthetic", "matrix": [[0.5, 0.3, 0.7],
                                                                                                [0.7, 0.5, 0.3],
                                                                                                [0.3, 0.7, 0.5]]}))
    assert set(other.batches()).isdisjoint(plan1.batches())
    pairs = json.loads(plan4.batch_pairs(next(iter(plan4.batches()))))
    assert all(set(p) == {"a", "b"} and p["a"].startswith("results/eval/generations/") for p in pairs.values())


@pytest.mark.parametrize("value", [0, -2, 1.5, "4", True, None])
def test_a_bad_compare_jobs_names_the_key_in_one_line(value):
    with pytest.raises(InputError) as info:
        plans(lambda c: c["evaluation"].update(compare_jobs=value))
    assert str(info.value).startswith("config key evaluation.compare_jobs: ") and "\n" not in str(info.value)


# ----------------------------------------------------------------------------- judging and the cache


def test_each_pair_equals_linepo_compare_and_the_judge_loads_once(generations, tmp_path, counting):
    pairs = pairs_of(generations)
    stats, lines = run(pairs, tmp_path)
    assert stats == {"pairs": 5, "judged": 5, "reused": 0, "judge_loads": 1,
                     "failed": stats["failed"]} and counting.built == 1
    assert stats["failed"] > 0  # some "more more " answers: the failure accounting is exercised
    assert sum(line.startswith("judged ") for line in lines) == 5 and "5 judged, 0 reused" in lines[-1]
    loaded = eb.load_comparisons({cid: {"batch": str(tmp_path / "batch.parquet")} for cid in pairs})
    for cid, pair in pairs.items():  # what `linepo compare` writes, with a judge of its own
        single = tmp_path / f"single-{cid}.parquet"
        assert main(["compare", "--a", pair["a"], "--b", pair["b"], "--out", str(single)]) == 0
        assert loaded[cid]["table"].equals(read_table(single, "comparisons"))
        meta = read_metadata(single)
        assert loaded[cid]["failure_summary"] == meta.get("failure_summary")  # its own failures only
        assert loaded[cid]["max_failed_fraction"] == meta["max_failed_fraction"]
        assert (tmp_path / "cache" / f"{cid}.parquet").read_bytes() == single.read_bytes()
    assert counting.built == 1 + 5  # each linepo compare built its own


def test_a_rerun_reuses_every_pair_without_loading_the_judge(generations, tmp_path, counting):
    pairs = pairs_of(generations)
    run(pairs, tmp_path)
    first = (tmp_path / "batch.parquet").read_bytes()
    stats, lines = run(pairs, tmp_path, out="again.parquet")
    assert (stats["judged"], stats["reused"], stats["judge_loads"], counting.built) == (0, 5, 0, 1)
    assert (tmp_path / "again.parquet").read_bytes() == first
    assert "judge loaded never (all cached)" in lines[-1]
    # More pairs: only the new ones are judged.
    more = {**pairs, **pairs_of(generations, ("wz",))}
    stats, lines = run(more, tmp_path, out="more.parquet")
    assert (stats["judged"], stats["reused"], counting.built) == (1, 5, 2)
    assert [line.split()[1] for line in lines if line.startswith("judged ")] == ["cwz"]


def test_a_cached_pair_is_judged_again_when_its_generations_or_judge_differ(generations, tmp_path, counting):
    pairs = pairs_of(generations)
    run(pairs, tmp_path)
    write_generation(generations["z"], seed=99)  # z regenerated with other answers
    stats, lines = run(pairs, tmp_path, out="b2.parquet")
    assert sorted(line.split()[1] for line in lines if line.startswith("judged ")) == ["cxz", "cyz"]
    assert all("other generation files" in line for line in lines if line.startswith("judged "))
    # How the judge runs (its failure limit) is not what it answers: reused, the new limit recorded.
    stats, _ = run(pairs, tmp_path, judge={**SYNTHETIC, "max_failed_fraction": 0.5}, out="b3.parquet")
    assert (stats["judged"], stats["reused"]) == (0, 5)
    assert {m["max_failed_fraction"] for m in read_metadata(tmp_path / "b3.parquet")["comparisons"].values()} == {0.5}
    # Another judge (another seed: another recipe) judges everything again.
    stats, lines = run(pairs, tmp_path, judge={**SYNTHETIC, "seed": 3}, out="b4.parquet")
    assert (stats["judged"], stats["reused"]) == (5, 0) and "another judge" in lines[1]


def test_a_corrupted_or_edited_cache_entry_is_judged_again(generations, tmp_path, counting):
    pairs = pairs_of(generations)
    run(pairs, tmp_path)
    cache = tmp_path / "cache"
    good = {cid: (cache / f"{cid}.parquet").read_bytes() for cid in pairs}
    (cache / "cwx.parquet").write_bytes(good["cwx"][: len(good["cwx"]) // 2])  # truncated
    (cache / "cwy.parquet").write_text("not parquet")
    table = pq.read_table(cache / "cxy.parquet")  # values changed, recorded digest kept
    edited = table.set_column(4, "prob_a_wins", pa.array([0.123] * table.num_rows, pa.float64()))
    pq.write_table(edited, cache / "cxy.parquet")
    stats, lines = run(pairs, tmp_path, out="b2.parquet")
    judged = {line.split()[1]: line for line in lines if line.startswith("judged ")}
    assert set(judged) == {"cwx", "cwy", "cxy"} and all("unreadable or changed" in line for line in judged.values())
    assert (stats["judged"], stats["reused"]) == (3, 2)
    assert {cid: (cache / f"{cid}.parquet").read_bytes() for cid in pairs} == good
    assert (tmp_path / "b2.parquet").read_bytes() == (tmp_path / "batch.parquet").read_bytes()


def test_an_interrupted_batch_resumes_with_the_pairs_it_finished(generations, tmp_path, monkeypatch):
    pairs = pairs_of(generations)

    class Killed(Counting):
        def _probabilities(self, prompts, a, b):
            if self.calls == 2:
                raise KeyboardInterrupt  # as a SIGKILL between pairs, or a wall-time limit
            return super()._probabilities(prompts, a, b)

    monkeypatch.setattr("linepo.stages.judges.make_judge", lambda config, source="": Killed())
    with pytest.raises(KeyboardInterrupt):
        run(pairs, tmp_path)
    assert not (tmp_path / "batch.parquet").exists()
    assert sorted(p.stem for p in (tmp_path / "cache").glob("*.parquet")) == ["cwx", "cwy"]
    assert not list((tmp_path / "cache").glob(".*"))  # no half-written entry
    monkeypatch.setattr("linepo.stages.judges.make_judge", lambda config, source="": Counting())
    stats, lines = run(pairs, tmp_path)
    assert (stats["judged"], stats["reused"]) == (3, 2)
    assert [line.split()[1] for line in lines if line.startswith("reused ")] == ["cwx", "cwy"]
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    run(pairs, fresh)
    assert (tmp_path / "batch.parquet").read_bytes() == (fresh / "batch.parquet").read_bytes()


def test_a_pair_that_cannot_be_compared_fails_naming_it_and_keeps_the_others(generations, tmp_path):
    other = write_generation(tmp_path / "short.parquet", seed=5, prompts=3)
    pairs = {"c1": {"a": generations["w"], "b": generations["x"]}, "c2": {"a": generations["w"], "b": str(other)}}
    with pytest.raises(InputError, match=r"^comparison c2: .*different prompts"):
        run(pairs, tmp_path)
    assert [p.stem for p in (tmp_path / "cache").glob("*.parquet")] == ["c1"]


# ----------------------------------------------------------------------------- commands and readers


def test_the_command_and_win_rates_read_batches_as_comparison_files(generations, tmp_path, capsys):
    pairs = {f"{x}{y}": {"a": generations[x], "b": generations[y]} for x, y in ("wx", "wy", "xy")}
    spec_file = tmp_path / "pairs.json"
    spec_file.write_text(json.dumps(pairs))
    assert main(["compare-batch", "--pairs", str(spec_file), "--cache-dir", str(tmp_path / "cache"),
                 "--out", str(tmp_path / "batch.parquet")]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out.splitlines()[-1]) == {"pairs": 3, "judged": 3, "reused": 0, "judge_loads": 1, "failed": 0}
    assert "3 pairs: 3 judged, 0 reused" in err
    checkpoints = [{"name": n, "label": n.upper(), "generation": n} for n in "wxy"]
    outputs = {}
    for how in ("batch", "path"):
        where = {"batch": lambda cid: str(tmp_path / "batch.parquet"),
                 "path": lambda cid: str(tmp_path / "cache" / f"{cid}.parquet")}[how]
        spec = {"checkpoints": checkpoints,
                "comparisons": {cid: {"a": cid[0], "b": cid[1], how: where(cid)} for cid in pairs}}
        files = {name: tmp_path / how / name for name in ("m.csv", "se.csv", "p.tsv", "m.png")}
        (tmp_path / how).mkdir()
        assert main(["win-rates", "--spec", json.dumps(spec), "--bootstrap", "50", "--csv", str(files["m.csv"]),
                     "--se-csv", str(files["se.csv"]), "--pairs", str(files["p.tsv"]),
                     "--figure", str(files["m.png"])]) == 0
        outputs[how] = {name: path.read_bytes() for name, path in files.items() if name != "m.png"}
    assert outputs["batch"] == outputs["path"]


def test_bad_pairs_and_missing_comparisons_are_one_line(tmp_path):
    for text, message in (("[]", "--pairs: must be a JSON object"), ("{}", "must be a non-empty JSON object"),
                          ('{"c": {"a": "x"}}', "comparison 'c' must be"),
                          ('{"../c": {"a": "x", "b": "y"}}', "is not a file name"), ("nope.json", "neither inline")):
        with pytest.raises(InputError, match=message):
            eb.parse_pairs(text)
    write_table([], tmp_path / "b.parquet", "comparison_batch", metadata={"comparisons": {}})
    with pytest.raises(InputError, match="comparison c9 is not in this batch"):
        eb.load_comparisons({"c9": {"batch": str(tmp_path / "b.parquet")}})


def test_linepo_verify_leaves_the_cache_alone(generations, tmp_path, monkeypatch):
    from linepo.provenance import verify_tree

    results = tmp_path / "results"
    pairs = pairs_of(generations, ("wx",))
    eb.judge_batch(pairs, SYNTHETIC, results / "cache", results / "batch.parquet", log=lambda line: None)
    (results / "cache" / "cwx.parquet").write_text("broken")  # a broken entry is only re-judged
    monkeypatch.chdir(tmp_path)
    report = verify_tree(results)
    assert report["problems"] == [] and report["tables"] == 1
    assert (results / "cache" / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")

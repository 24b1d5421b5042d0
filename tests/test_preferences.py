"""Tournament → preference pairs, and the `linepo judge` / `linepo pairs` commands.

    HF_HUB_OFFLINE=1 python -m pytest tests/test_preferences.py -q
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from linepo.cli import main
from linepo.errors import InputError
from linepo.stages.judges import make_judge
from linepo.stages.preferences import group_samples, run_tournament, select_preferences, tournament_comparisons
from linepo.schemas import read_metadata, read_table, to_table, write_table


def sample_rows(prompts: dict[str, list[str]]) -> list[dict]:
    rows = []
    for k, (prompt, responses) in enumerate(prompts.items()):
        for i, response in enumerate(responses):
            rows.append({
                "prompt_id": f"p{k}", "prompt": prompt, "sample_index": i, "response": response,
                "num_tokens": len(response.split()), "finish_reason": "stop", "sampler_settings": "{}",
            })
    return rows


PROMPTS = {
    "Explain tides.": ["Briefly, the moon.", "Sure, the moon pulls water.", "Certainly, gravity of the moon..."],
    "What is rain?": ["Sure, water.", "Sure, drops.", "Briefly, drops.", "Certainly, condensation...", "Hmm."],
    "Say hi.": ["Sure, hi.", "Sure, hi."],
    "Lonely prompt.": ["Sure, only one sample."],
}


@pytest.fixture
def samples_file(tmp_path):
    path = tmp_path / "samples.parquet"
    write_table(sample_rows(PROMPTS), path, "samples")
    return path


def groups_of(prompts):
    return group_samples(to_table(sample_rows(prompts), "samples"))


def judgments(rows):
    """Hand-made judgments: (prompt_id, a, b, prob, outcome, failed)."""
    keys = ("prompt_id", "index_a", "index_b", "prob_a_wins", "outcome", "failed")
    return {k: [r[i] for r in rows] for i, k in enumerate(keys)}


# ----------------------------------------------------------------------------- tournament


def test_tournament_enumerates_every_unordered_pair_once():
    groups = groups_of(PROMPTS)
    pairs = [(c[0], c[2], c[3]) for c in tournament_comparisons(groups)]
    assert pairs[:3] == [("p0", 0, 1), ("p0", 0, 2), ("p0", 1, 2)]
    assert len(pairs) == 3 + 10 + 1 + 0 == len(set(pairs))
    _, stats = run_tournament(groups, make_judge(), seed=0, progress=False)
    assert stats["comparisons"] == 14 and stats["prompts_with_fewer_than_2_samples"] == 1
    assert stats["failed"] == 0 and stats["comparisons_per_s"] > 0


def test_best_vs_worst_and_first_vs_second_on_hand_made_judgments():
    groups = groups_of({"q": ["y0", "y1", "y2", "y3"]})
    # Win rates: y0: (0.9+0.8+0.7)/3 = 0.8, y1: (0.1+0.6+0.5)/3 = 0.4,
    #            y2: (0.2+0.4+0.9)/3 = 0.5, y3: (0.3+0.5+0.1)/3 = 0.3.
    table = judgments([
        ("p0", 0, 1, 0.9, 1, False), ("p0", 0, 2, 0.8, 1, False), ("p0", 0, 3, 0.7, 0, False),
        ("p0", 1, 2, 0.6, 0, False), ("p0", 1, 3, 0.5, 1, False), ("p0", 2, 3, 0.9, 1, False),
    ])
    rows, stats = select_preferences(groups, table, selection="best_vs_worst")
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("y0", "y3")]
    assert rows[0]["chosen_win_rate"] == pytest.approx(0.8) and rows[0]["rejected_win_rate"] == pytest.approx(0.3)
    rows, _ = select_preferences(groups, table, selection="first_vs_second")
    assert [(r["chosen_index"], r["rejected_index"]) for r in rows] == [(0, 2)]
    assert rows[0]["rejected_win_rate"] == pytest.approx(0.5)
    # With the 0/1 outcomes: y0: 2/3, y1: 1/3, y2: 2/3, y3: 1/3. Equal scores rank the lower
    # index first, so the ranking is y0, y2, y1, y3: best y0, worst y3.
    rows, _ = select_preferences(groups, table, selection="best_vs_worst", use_outcomes=True)
    assert [(r["chosen_index"], r["rejected_index"]) for r in rows] == [(0, 3)]
    assert rows[0]["chosen_win_rate"] == pytest.approx(2 / 3) and rows[0]["rejected_win_rate"] == pytest.approx(1 / 3)
    # Best vs second best is y0 vs y2, a tie (2/3 each): dropped and counted.
    rows, tie_stats = select_preferences(groups, table, selection="first_vs_second", use_outcomes=True)
    assert rows == [] and tie_stats["dropped_tied_scores"] == 1
    assert stats["pairs"] == 1 and stats["comparisons_used"] == 6


def test_labelled_selections_keep_judged_pairs_by_their_outcome():
    groups = groups_of({"q": ["y0", "y1", "y2", "y2"]})
    table = judgments([
        ("p0", 0, 1, 0.9, 0, False), ("p0", 0, 2, 0.8, 1, False), ("p0", 0, 3, 0.7, 1, False),
        ("p0", 1, 2, 0.6, 1, False), ("p0", 1, 3, 0.5, None, True), ("p0", 2, 3, 0.5, 1, False),
    ])
    rows, stats = select_preferences(groups, table, selection="random_pair", use_outcomes=True)
    # Samples 0 and 1 only; the oracle's outcome 0 means sample 1 won.
    assert [(r["chosen_index"], r["rejected_index"]) for r in rows] == [(1, 0)]
    assert rows[0]["label_probability"] == 1.0
    rows, stats = select_preferences(groups, table, selection="all_pairs", use_outcomes=True)
    # Every judged pair as (winner, loser), except the failed one and identical texts.
    assert [(r["chosen_index"], r["rejected_index"]) for r in rows] == [(1, 0), (0, 2), (0, 3), (1, 2)]
    assert stats["failed_comparisons"] == 1 and stats["dropped_identical_texts"] == 1
    # SPPO's win rates are still each sample's mean outcome: y1 won 2 of 2 scored comparisons.
    assert rows[0]["chosen_win_rate"] == pytest.approx(1.0)
    assert {r["label_probability"] for r in rows} == {1.0}


def test_labelled_selections_with_probability_labels():
    groups = groups_of({"q": ["y0", "y1", "y2", "y2"]})
    table = judgments([
        ("p0", 0, 1, 0.9, 0, False), ("p0", 0, 2, 0.2, 1, False), ("p0", 0, 3, 0.5, 1, False),
        ("p0", 1, 2, 0.6, 1, False), ("p0", 1, 3, 0.5, None, True), ("p0", 2, 3, 0.5, 1, False),
    ])
    # The more likely winner is chosen and the probability is the label, whatever the coin said.
    rows, _ = select_preferences(groups, table, selection="random_pair", use_outcomes=False)
    assert [(r["chosen_index"], r["rejected_index"], r["label_probability"]) for r in rows] == [(0, 1, 0.9)]
    rows, stats = select_preferences(groups, table, selection="all_pairs", use_outcomes=False)
    got = [(r["chosen_index"], r["rejected_index"], r["label_probability"]) for r in rows]
    assert got == [(0, 1, 0.9), (2, 0, pytest.approx(0.8)), (0, 3, 0.5), (1, 2, 0.6)]
    assert stats["failed_comparisons"] == 1 and stats["dropped_identical_texts"] == 1


def test_pairs_carry_whether_each_sample_finished():
    rows = sample_rows({"q": ["y0", "y1 cut", "y2"]})
    rows[1]["finish_reason"] = "length"
    groups = group_samples(to_table(rows, "samples"))
    table = judgments([("p0", 0, 1, 0.2, 0, False), ("p0", 0, 2, 0.9, 1, False), ("p0", 1, 2, 0.6, 1, False)])
    for selection in ("all_pairs", "best_vs_worst"):
        pairs, _ = select_preferences(groups, table, selection=selection)
        for pair in pairs:
            assert pair["chosen_finished"] == (pair["chosen_index"] != 1)
            assert pair["rejected_finished"] == (pair["rejected_index"] != 1)
        assert any(not (p["chosen_finished"] and p["rejected_finished"]) for p in pairs)


def test_ties_identical_texts_and_failures_are_dropped_and_counted():
    groups = groups_of({
        "tied": ["a", "b", "c"],
        "same": ["dup", "dup", "other"],
        "half failed": ["u", "v", "w"],
        "all failed": ["s", "t"],
        "one text": ["x", "x"],
    })
    table = judgments([
        ("p0", 0, 1, 0.5, 1, False), ("p0", 0, 2, 0.5, 0, False), ("p0", 1, 2, 0.5, 1, False),
        # dup vs dup says nothing; dup beats "other" on both of its comparisons.
        ("p1", 0, 1, 0.5, 1, False), ("p1", 0, 2, 0.9, 1, False), ("p1", 1, 2, 0.8, 1, False),
        ("p2", 0, 1, None, None, True), ("p2", 0, 2, 0.7, 1, False), ("p2", 1, 2, 0.2, 0, False),
        ("p3", 0, 1, None, None, True),
        ("p4", 0, 1, 0.5, 1, False),
    ])
    rows, stats = select_preferences(groups, table, selection="first_vs_second")
    assert stats == {
        "prompts": 5, "pairs": 2, "comparisons_used": 9, "failed_comparisons": 2,
        "dropped_too_few_scored": 1, "dropped_tied_scores": 1, "dropped_identical_texts": 1,
        "merged_duplicate_samples": 2,
    }
    # Distinct texts are ranked (as the paper's code does): "dup" (samples 0 and 1) is one
    # candidate scored on its comparisons with other texts, so the prompt keeps a pair.
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("dup", "other"), ("u", "w")]
    assert (rows[0]["chosen_index"], rows[0]["rejected_index"]) == (0, 2)
    assert rows[0]["chosen_win_rate"] == pytest.approx((0.9 + 0.8) / 2)
    assert rows[0]["rejected_win_rate"] == pytest.approx((0.1 + 0.2) / 2)
    # half failed: u beats w (0.7); v: 0.2 vs w; u scored on one comparison only (the failed one is left out).
    assert rows[1]["chosen_win_rate"] == pytest.approx(0.7)
    assert rows[1]["rejected_win_rate"] == pytest.approx((0.3 + 0.8) / 2)
    rows, stats = select_preferences(groups, table, selection="best_vs_worst")
    assert ("dup", "other") in [(r["chosen"], r["rejected"]) for r in rows]


def test_judgments_that_do_not_match_the_samples_are_rejected():
    groups = groups_of({"q": ["a", "b"]})
    with pytest.raises(InputError, match=r"^j.parquet: row 0 refers to sample \('p0', 5\)"):
        select_preferences(groups, judgments([("p0", 0, 5, 0.5, 1, False)]), judgments_path="j.parquet")
    with pytest.raises(InputError, match="not marked failed"):
        select_preferences(groups, judgments([("p0", 0, 1, None, None, False)]))


def test_synthetic_tournament_picks_by_the_paper_game():
    # brief / plain / detailed win rates: (0.1+0.8)/2, (0.9+0.1)/2, (0.2+0.9)/2 = 0.45, 0.5, 0.55.
    groups = groups_of({"q": ["Briefly, x.", "Sure, x.", "Certainly, x."]})
    table, _ = run_tournament(groups, make_judge(), seed=0, progress=False)
    rows, _ = select_preferences(groups, table, selection="best_vs_worst")
    assert (rows[0]["chosen"], rows[0]["rejected"]) == ("Certainly, x.", "Briefly, x.")
    assert rows[0]["chosen_win_rate"] == pytest.approx(0.55)
    rows, _ = select_preferences(groups, table, selection="first_vs_second")
    assert (rows[0]["chosen"], rows[0]["rejected"]) == ("Certainly, x.", "Sure, x.")


# ----------------------------------------------------------------------------- commands


def test_judge_and_pairs_commands_are_byte_deterministic(samples_file, tmp_path, capsys):
    outs = []
    for run in range(2):
        # the same paths both times: an output records the paths of its inputs
        j, p = tmp_path / "judgments0.parquet", tmp_path / "prefs0.parquet"
        assert main(["judge", "--samples", str(samples_file), "--out", str(j), "--seed", "5", "--no-progress"]) == 0
        assert main(["pairs", "--samples", str(samples_file), "--judgments", str(j), "--out", str(p),
                     "--selection", "first_vs_second", "--use-outcomes"]) == 0
        outs.append((j.read_bytes(), p.read_bytes()))
    assert outs[0] == outs[1]
    judged = read_table(tmp_path / "judgments0.parquet", "judgments").to_pydict()
    assert len(judged["prompt_id"]) == 14 and not any(judged["failed"])
    assert read_metadata(tmp_path / "judgments0.parquet")["seed"] == 5
    prefs = read_table(tmp_path / "prefs0.parquet", "preferences")
    assert prefs.num_rows >= 1
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["prompts"] == 4 and stats["dropped_too_few_scored"] == 1  # the one-sample prompt
    # Another seed draws other outcomes.
    j2 = tmp_path / "judgments_seed6.parquet"
    main(["judge", "--samples", str(samples_file), "--out", str(j2), "--seed", "6", "--no-progress"])
    assert read_table(j2, "judgments")["outcome"].to_pylist() != judged["outcome"]
    assert read_table(j2, "judgments")["prob_a_wins"].to_pylist() == judged["prob_a_wins"]


def test_judge_command_with_a_config_file(samples_file, tmp_path):
    config = tmp_path / "judge.yaml"
    config.write_text("type: synthetic\nrule: length\nlength_thresholds: [3, 5]\nseed: 11\n")
    out = tmp_path / "j.parquet"
    assert main(["judge", "--samples", str(samples_file), "--judge-config", str(config), "--out", str(out)]) == 0
    meta = read_metadata(out)
    assert meta["seed"] == 11 and meta["judge"]["rule"] == "length"


def test_lm_judges_through_the_command(samples_file, tmp_path):
    from helpers import build_tiny_judge as build_tiny_model

    lm = build_tiny_model(tmp_path / "lm")
    rm = build_tiny_model(tmp_path / "rm", classifier=True)
    for config in ({"type": "pairwise_lm", "model": lm, "device": "cpu"},
                   {"type": "reward_model", "model": rm, "device": "cpu"}):
        out = tmp_path / f"{config['type']}.parquet"
        assert main(["judge", "--samples", str(samples_file), "--judge-config", json.dumps(config),
                     "--out", str(out), "--no-progress"]) == 0
        table = read_table(out, "judgments").to_pydict()
        assert len(table["failed"]) == 14 and not any(table["failed"])
        assert all(0.0 <= p <= 1.0 for p in table["prob_a_wins"])


def _write_corrupt(path):
    path.write_bytes(b"PAR1 this is not parquet")


def _write_wrong_kind(path):
    write_table([{"prompt_id": "x", "prompt": "p", "source": "s"}], path, "prompts")


def _write_wrong_type(path):
    import pyarrow as pa

    table = to_table(sample_rows({"q": ["a", "b"]}), "samples")
    table = table.set_column(2, "sample_index", pa.array([0, 1], pa.int64()))
    pq.write_table(table, path)


@pytest.mark.parametrize(
    "make_samples, extra, expected",
    [
        (None, [], "missing.parquet: file not found"),
        (_write_corrupt, [], "not a readable parquet file"),
        (_write_wrong_kind, [], "missing column 'sample_index'"),
        (_write_wrong_type, [], "column 'sample_index' has type int64"),
        ("ok", ["--judge-config", '{"type": "synthetic", "matrix": [[0.5, 0.9], [0.9, 0.5]]}'],
         "--judge-config key matrix: not a preference matrix"),
        ("ok", ["--judge-config", '{"type": "oracle9000"}'], "--judge-config key type: unknown judge type"),
        ("ok", ["--judge-config", '{"type": "pairwise_lm", "model": "/nowhere/judge"}'], "--judge-config key model"),
        ("ok", ["--judge-config", '{"type": "reward_model", "model": "./nowhere"}'], "--judge-config key model"),
        ("ok", ["--judge-config", "no-such-config.yaml"], "--judge-config: file not found"),
        ("ok", ["--judge-config", "{not json"], "--judge-config: not valid inline JSON"),
    ],
)
def test_judge_bad_input_exits_2_with_one_line_and_no_output(tmp_path, capsys, make_samples, extra, expected):
    samples = tmp_path / ("missing.parquet" if make_samples is None else "samples.parquet")
    if make_samples == "ok":
        write_table(sample_rows(PROMPTS), samples, "samples")
    elif make_samples is not None:
        make_samples(samples)
    out = tmp_path / "judgments.parquet"
    assert main(["judge", "--samples", str(samples), "--out", str(out), "--no-progress", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not out.exists() and not list(tmp_path.glob(".judgments*"))


def test_pairs_bad_input_exits_2_with_no_output(samples_file, tmp_path, capsys):
    out = tmp_path / "prefs.parquet"
    # Judgments of other samples: index 7 does not exist.
    bad = tmp_path / "bad.parquet"
    write_table(judgments([("p0", 0, 7, 0.5, 1, False)]), bad, "judgments")
    wrong_kind = tmp_path / "samples_as_judgments.parquet"
    write_table(sample_rows(PROMPTS), wrong_kind, "samples")
    for judgments_file, expected in ((bad, "row 0 refers to sample ('p0', 7)"),
                                     (tmp_path / "none.parquet", "file not found"),
                                     (wrong_kind, "missing column 'index_a'")):
        code = main(["pairs", "--samples", str(samples_file), "--judgments", str(judgments_file), "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and expected in err, err
        assert not out.exists()

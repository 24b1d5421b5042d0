"""Sequence log-probs and `linepo score` on tiny random Qwen2 policies built in a tmp dir.

    HF_HUB_OFFLINE=1 python -m pytest tests/test_scoring.py -q
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from helpers import build_tiny_policy, manual_logprob, preference_rows  # noqa: E402

from linepo.errors import InputError  # noqa: E402
from linepo.stages.models import encode_prompt, load_policy  # noqa: E402
from linepo.schemas import read_metadata, read_table, write_table  # noqa: E402

@pytest.fixture(scope="module")
def policies(tmp_path_factory):
    root = tmp_path_factory.mktemp("policies")
    tokenizer = build_tiny_policy(root / "ref", seed=0)
    build_tiny_policy(root / "anchor", seed=1, tokenizer=tokenizer)
    return root / "ref", root / "anchor"


@pytest.fixture(scope="module")
def ref_model(policies):
    return load_policy(policies[0], dtype="float32", device="cpu")


# ----------------------------------------------------------------------------- sequence_logprobs


@pytest.mark.parametrize("chat_template", [True, False])
def test_sequence_logprobs_equal_manual_sum(ref_model, chat_template):
    from linepo.stages.scoring import sequence_logprobs

    model, tokenizer = ref_model
    saved = tokenizer.chat_template
    if not chat_template:
        tokenizer.chat_template = None  # the plain "User: ...\nAssistant:" template path
    try:
        rows = preference_rows(5)
        prompts = [r["prompt"] for r in rows] * 2
        responses = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
        expected = torch.tensor([manual_logprob(model, tokenizer, p, r) for p, r in zip(prompts, responses)],
                                dtype=torch.float64)
        got = sequence_logprobs(model, tokenizer, prompts, responses, batch_size=3, max_length=512)
    finally:
        tokenizer.chat_template = saved
    assert got.shape == (10,)
    assert torch.all(got < 0)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=2e-3)


def test_a_response_cut_at_max_new_tokens_is_scored_without_eos(ref_model):
    """A cut sample never emitted EOS; scoring it with one would add log π(EOS | cut text)."""
    from linepo.stages.scoring import sequence_logprobs, tokenize_pairs

    model, tokenizer = ref_model
    rows = preference_rows(3)
    prompts = [r["prompt"] for r in rows]
    responses = [r["chosen"] for r in rows]
    finished = [True, False, True]
    expected = torch.tensor([manual_logprob(model, tokenizer, p, r, f) for p, r, f in zip(prompts, responses, finished)],
                            dtype=torch.float64)
    got = sequence_logprobs(model, tokenizer, prompts, responses, max_length=512, finished=finished)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=2e-3)
    full = sequence_logprobs(model, tokenizer, prompts, responses, max_length=512)
    assert got[1] > full[1] and torch.allclose(got[[0, 2]], full[[0, 2]])
    pairs = tokenize_pairs(tokenizer, prompts, responses, responses, max_length=512,
                           chosen_finished=[True] * 3, rejected_finished=finished)
    for pair, done in zip(pairs, finished):
        assert pair["chosen_input_ids"][-1] == tokenizer.eos_token_id
        assert (pair["rejected_input_ids"][-1] == tokenizer.eos_token_id) == done
        assert len(pair["chosen_input_ids"]) - len(pair["rejected_input_ids"]) == (not done)


def test_sequence_logprobs_independent_of_batch_size_and_padding(ref_model):
    from linepo.stages.scoring import sequence_logprobs

    model, tokenizer = ref_model
    rows = preference_rows(7)
    prompts = [r["prompt"] for r in rows] * 2
    responses = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    results = []
    for side in ("left", "right"):
        tokenizer.padding_side = side
        for batch_size in (1, 4, 14):
            results.append(sequence_logprobs(model, tokenizer, prompts, responses, batch_size=batch_size,
                                             max_length=512))
    tokenizer.padding_side = "left"
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], rtol=1e-5, atol=2e-3)


def test_response_logprobs_has_gradients_and_ignores_prompt(ref_model):
    from linepo.stages.scoring import pad_sequences, response_logprobs, tokenize_responses

    model, tokenizer = ref_model
    rows = preference_rows(2)
    features = tokenize_responses(tokenizer, [r["prompt"] for r in rows], [r["chosen"] for r in rows], max_length=512)
    ids, attention, response = pad_sequences([f["input_ids"] for f in features],
                                             [f["response_mask"] for f in features], tokenizer.pad_token_id, "right")
    logps = response_logprobs(model, ids, attention, response)
    assert logps.shape == (2,) and logps.requires_grad
    no_response = response_logprobs(model, ids, attention, torch.zeros_like(response))
    assert torch.all(no_response == 0)
    model.zero_grad()


def test_tokenize_pairs_masks_and_truncation(ref_model):
    from linepo.stages.scoring import tokenize_pairs

    _, tokenizer = ref_model
    rows = preference_rows(3)
    prompts, chosen, rejected = ([r[k] for r in rows] for k in ("prompt", "chosen", "rejected"))
    full = tokenize_pairs(tokenizer, prompts, chosen, rejected, max_length=512)
    for f, p, c in zip(full, prompts, chosen):
        n_prompt = len(encode_prompt(tokenizer, p))
        assert f["chosen_input_ids"][:n_prompt] == encode_prompt(tokenizer, p)
        assert f["chosen_response_mask"] == [0] * n_prompt + [1] * (len(f["chosen_input_ids"]) - n_prompt)
        assert f["chosen_input_ids"][-1] == tokenizer.eos_token_id
        assert len(f["chosen_input_ids"]) - n_prompt == len(tokenizer(c, add_special_tokens=False)["input_ids"]) + 1
    short = tokenize_pairs(tokenizer, prompts, chosen, rejected, max_length=16)
    for f, g in zip(short, full):
        for side in ("chosen", "rejected"):
            ids, mask = f[f"{side}_input_ids"], f[f"{side}_response_mask"]
            assert len(ids) <= 16 and len(ids) == len(mask) and sum(mask) >= 1
            n_prompt = mask.index(1)
            full_ids, full_mask = g[f"{side}_input_ids"], g[f"{side}_response_mask"]
            full_prompt = full_mask.index(1)
            # the prompt loses its start, the response its end
            assert ids[:n_prompt] == full_ids[full_prompt - n_prompt:full_prompt]
            assert ids[n_prompt:] == full_ids[full_prompt:full_prompt + len(ids) - n_prompt]


# ----------------------------------------------------------------------------- score_preferences


def test_score_preferences_writes_scored_and_runs_one_model_when_reference_is_anchor(tmp_path, policies,
                                                                                     ref_model, monkeypatch):
    import linepo.stages.scoring as scoring

    calls = []
    real = scoring._score_with
    monkeypatch.setattr(scoring, "_score_with", lambda path, *a, **k: calls.append(str(path)) or real(path, *a, **k))
    first, second = preference_rows(3), preference_rows(2, start=3)
    write_table(first, tmp_path / "a.parquet", "preferences")
    write_table(second, tmp_path / "b.parquet", "preferences")
    ref, _ = policies
    out = tmp_path / "scored.parquet"
    stats = scoring.score_preferences([tmp_path / "a.parquet", tmp_path / "b.parquet"], out, reference=ref,
                                      anchor=ref, batch_size=4, max_length=512, dtype="float32")
    assert calls == [str(ref)]
    assert stats["pairs"] == 5 and stats["models_run"] == 1 and stats["tokens_per_s"] > 0
    table = read_table(out, "scored").to_pylist()
    assert [r["prompt_id"] for r in table] == [r["prompt_id"] for r in first + second]
    model, tokenizer = ref_model
    for row in table:
        assert row["anchor_chosen_logp"] == row["reference_chosen_logp"]
        assert row["anchor_rejected_logp"] == row["reference_rejected_logp"]
        assert row["chosen_win_rate"] == 0.75 and row["rejected_win_rate"] == 0.25
        assert row["reference_chosen_logp"] == pytest.approx(
            manual_logprob(model, tokenizer, row["prompt"], row["chosen"]), abs=2e-3)
    assert read_metadata(out)["scoring"]["reference"] == str(ref)


def test_score_preferences_distinct_anchor_runs_both(tmp_path, policies):
    from linepo.stages.scoring import score_preferences

    write_table(preference_rows(3), tmp_path / "p.parquet", "preferences")
    ref, anchor = policies
    stats = score_preferences(tmp_path / "p.parquet", tmp_path / "s.parquet", reference=ref, anchor=anchor,
                              batch_size=2, max_length=512, dtype="float32")
    assert stats["models_run"] == 2
    rows = read_table(tmp_path / "s.parquet", "scored").to_pylist()
    assert all(r["anchor_chosen_logp"] != r["reference_chosen_logp"] for r in rows)


def test_score_cli(tmp_path, policies, capsys):
    from linepo.cli import main

    write_table(preference_rows(2), tmp_path / "p.parquet", "preferences")
    ref, _ = policies
    out = tmp_path / "s.parquet"
    code = main(["score", "--preferences", str(tmp_path / "p.parquet"), "--reference", str(ref), "--anchor", str(ref),
                 "--out", str(out), "--batch-size", "2", "--max-length", "64"])
    assert code == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["pairs"] == 2 and stats["models_run"] == 1
    assert read_table(out, "scored").num_rows == 2


@pytest.mark.parametrize("change, message", [
    ({"preferences": "missing.parquet"}, "file not found"),
    ({"reference": "no/such/policy/dir"}, "not found"),
    ({"batch_size": "0"}, "--batch-size"),
])
def test_score_cli_bad_input_exits_2_and_writes_nothing(tmp_path, policies, capsys, change, message):
    from linepo.cli import main

    write_table(preference_rows(1), tmp_path / "p.parquet", "preferences")
    ref, _ = policies
    values = {"preferences": str(tmp_path / "p.parquet"), "reference": str(ref), "batch_size": "2"}
    values.update({k: str(tmp_path / v) if k == "preferences" else v for k, v in change.items()})
    out = tmp_path / "s.parquet"
    code = main(["score", "--preferences", values["preferences"], "--reference", values["reference"],
                 "--anchor", str(ref), "--out", str(out), "--batch-size", values["batch_size"]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert message in err[-1] and err[-1].startswith("linepo score: error:")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".s.parquet")]


def test_scoring_rejects_bad_settings(tmp_path, policies):
    from linepo.stages.scoring import score_preferences

    write_table(preference_rows(1), tmp_path / "p.parquet", "preferences")
    with pytest.raises(InputError, match="--max-length"):
        score_preferences(tmp_path / "p.parquet", tmp_path / "s.parquet", reference=policies[0], anchor=policies[0],
                          max_length=4)
    with pytest.raises(InputError, match=".parquet"):
        score_preferences(tmp_path / "p.parquet", tmp_path / "s.csv", reference=policies[0], anchor=policies[0])

"""The end of a chat turn on real tokenizers: stop where the template ends a turn, record the
token, score exactly it (Qwen2's ChatML ends turns with <|im_end|>, its EOS is <|endoftext|>).

    HF_HUB_OFFLINE=1 python -m pytest tests/test_chat_turns.py -q
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from real_models import fixed_distribution_lm, llama3_tokenizer, qwen2_tokenizer, save_model  # noqa: E402

from linepo.stages.models import end_of_turn_token_ids, load_policy, stop_token_ids  # noqa: E402
from linepo.stages.preferences import group_samples, select_preferences  # noqa: E402
from linepo.stages.sampling import SamplerSettings, TransformersSampler  # noqa: E402
from linepo.schemas import read_table, to_table, write_table  # noqa: E402
from linepo.stages.scoring import score_preferences  # noqa: E402

ENDOFTEXT, IM_START, IM_END = 151643, 151644, 151645
BEGIN_OF_TEXT, EOT = 128000, 128009


def test_the_end_of_turn_token_is_read_off_the_chat_template():
    qwen, llama = qwen2_tokenizer(), llama3_tokenizer()
    assert end_of_turn_token_ids(qwen) == [IM_END]
    assert end_of_turn_token_ids(llama) == [EOT]
    # The Qwen2 base model's generation config names only <|endoftext|>: the turn's end is added.
    assert stop_token_ids(qwen, type("GenerationConfig", (), {"eos_token_id": ENDOFTEXT})()) == [ENDOFTEXT, IM_END]
    assert stop_token_ids(llama, type("GenerationConfig", (), {"eos_token_id": [128001, EOT]})()) == [128001, EOT]


# Words with a leading space: their decoded text tokenizes back to the same ids.
WORDS = {" Hello": 2.0, " world": 1.5, " the": 1.0, " cat": 0.5}


@pytest.fixture(scope="module")
def qwen_policy(tmp_path_factory):
    """A Qwen2-architecture policy with the real tokenizer whose next token is always drawn from
    a few words, <|im_end|> (p ≈ 0.2) and, far less likely, <|endoftext|>."""
    tokenizer = qwen2_tokenizer()
    logits = {tokenizer.convert_tokens_to_ids(tokenizer.tokenize(w))[0]: v for w, v in WORDS.items()}
    words = np.exp(list(logits.values())).sum()
    logits[IM_END] = math.log(0.2 / 0.8 * words)
    logits[ENDOFTEXT] = logits[IM_END] - 6.0
    folder = tmp_path_factory.mktemp("qwen") / "policy"
    save_model(fixed_distribution_lm(tokenizer, logits), tokenizer, folder, generation_eos=[ENDOFTEXT])
    log_z = float(torch.logsumexp(torch.tensor([*logits.values(), *([-30.0] * (len(tokenizer) - len(logits)))],
                                               dtype=torch.float64), 0))
    return folder, {token: value - log_z for token, value in logits.items()}


PROMPTS = [{"prompt_id": f"p{i}", "prompt": f"Question {i}: say hello."} for i in range(6)]


def test_sampling_stops_at_im_end_and_records_the_token(qwen_policy):
    folder, _ = qwen_policy
    model, tokenizer = load_policy(folder, device="cpu")
    sampler = TransformersSampler(model, tokenizer, SamplerSettings(n=4, temperature=1.0, max_new_tokens=12, seed=3, batch_size=8))
    assert sampler.eos_token_ids == [ENDOFTEXT, IM_END]
    rows = sampler.generate(PROMPTS)
    stopped = [r for r in rows if r["finish_reason"] == "stop"]
    assert len(stopped) >= len(rows) // 2  # P(no <|im_end|> in 12 tokens) = 0.8^12 ≈ 0.07
    assert {r["stop_token_id"] for r in stopped} == {IM_END}
    assert all(r["stop_token_id"] is None for r in rows if r["finish_reason"] == "length")
    for row in stopped:
        assert "<|im_end|>" not in row["response"] and "<|im_start|>" not in row["response"]
        assert row["num_tokens"] == len(tokenizer(row["response"], add_special_tokens=False)["input_ids"]) + 1


def test_the_emitted_stop_token_is_the_one_scored(qwen_policy, tmp_path):
    """log π(y|x) of a finished sample ends with log π(<|im_end|>), not the tokenizer's EOS."""
    folder, logp = qwen_policy
    model, tokenizer = load_policy(folder, device="cpu")
    rows = TransformersSampler(model, tokenizer, SamplerSettings(n=4, temperature=1.0, max_new_tokens=12, seed=3)).generate(PROMPTS)
    write_table(rows, tmp_path / "samples.parquet", "samples")
    groups = group_samples(read_table(tmp_path / "samples.parquet", "samples"))
    judged = {"prompt_id": [], "index_a": [], "index_b": [], "prob_a_wins": [], "outcome": [], "failed": []}
    for pid, group in groups.items():
        for a in group["responses"]:
            for b in group["responses"]:
                if a < b:
                    for key, value in zip(judged, (pid, a, b, 0.75, 1, False)):
                        judged[key].append(value)
    pairs, _ = select_preferences(groups, to_table(judged, "judgments"), selection="all_pairs")
    write_table(pairs, tmp_path / "prefs.parquet", "preferences")
    score_preferences(tmp_path / "prefs.parquet", tmp_path / "scored.parquet", reference=folder, anchor=folder,
                      dtype="float32")
    scored = read_table(tmp_path / "scored.parquet", "scored").to_pylist()
    by_text = {(r["prompt_id"], r["response"]): r for r in rows}
    checked = {True: 0, False: 0}
    for pair in scored:
        for side in ("chosen", "rejected"):
            sample = by_text[(pair["prompt_id"], pair[side])]
            ids = tokenizer(sample["response"], add_special_tokens=False)["input_ids"]
            expected = sum(logp[i] for i in ids)
            if sample["stop_token_id"] is not None:
                assert pair[f"{side}_stop_token_id"] == IM_END and pair[f"{side}_finished"]
                expected += logp[IM_END]  # not logp[ENDOFTEXT], 6 nats lower
            else:
                assert pair[f"{side}_stop_token_id"] is None and not pair[f"{side}_finished"]
            assert pair[f"reference_{side}_logp"] == pytest.approx(expected, abs=1e-3)
            checked[sample["stop_token_id"] is not None] += 1
    assert checked[True] and checked[False]

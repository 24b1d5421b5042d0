"""What several test files share: tiny policies and judges, preference rows, training shorthands.

Fixtures that need pytest's machinery live in conftest.py; plain builders live here, so that
no test file imports another.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from linepo import toy as embedded

#: a tiny Qwen2 for the embedded tokenizer: 2 layers of width 32
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64)


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def build_tiny_policy(path, seed: int = 0, tokenizer=None):
    """A random tiny Qwen2 + the embedded BPE tokenizer, saved to ``path``; returns the tokenizer."""
    if tokenizer is None:
        examples = embedded.corpus(num_prompts=20, seed=0)
        tokenizer = embedded.train_tokenizer([e["prompt"] for e in examples] + [e["response"] for e in examples],
                                             vocab_size=300)
    from linepo.stages.models import save_policy

    model = embedded.init_model(tokenizer, seed, **TINY)
    save_policy(model, tokenizer, path)
    return tokenizer


def preference_rows(num: int, start: int = 0, seed: int = 0) -> list[dict]:
    """``num`` synthetic pairs: a detailed (chosen) vs a brief (rejected) answer to train prompts."""
    rng = np.random.default_rng(seed)
    prompts = embedded.prompts("train", start + num)
    rows = []
    for i in range(start, start + num):
        rows.append({
            "prompt_id": f"p{i}", "prompt": prompts[i],
            "chosen": embedded.response(i, "detailed", rng), "rejected": embedded.response(i, "brief", rng),
            "chosen_index": 0, "rejected_index": 1,
            "chosen_win_rate": 0.75, "rejected_win_rate": 0.25, "label_probability": 1.0,
            "chosen_finished": True, "rejected_finished": True,
        })
    return rows


def manual_logprob(model, tokenizer, prompt: str, response: str, finished: bool = True) -> float:
    """Σ log_softmax at the response positions of one unpadded sequence (the definition);
    EOS only where the response ``finished`` (a sample cut at max_new_tokens never emitted it)."""
    import torch

    from linepo.stages.models import encode_prompt

    prompt_ids = encode_prompt(tokenizer, prompt)
    ids = prompt_ids + tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] * finished
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()  # (T, V)
    logps = torch.log_softmax(logits, dim=-1)
    return float(sum(logps[t - 1, ids[t]] for t in range(len(prompt_ids), len(ids))))


# ----------------------------------------------------------------------------- training

NUM_PAIRS = 12
#: loss -> (eta, eta_tau): η/2 is the IPO/INPO target, reachable by a tiny model in a few steps
LOSS_SETTINGS = {"dpo": (1.0, 1.0), "ipo": (8.0, 1.0), "inpo": (8.0, 0.5), "sppo": (8.0, 1.0)}


def fast_settings(**changes):
    from linepo.stages.training import TrainSettings

    values = dict(loss="inpo", eta=8.0, eta_tau=0.5, epochs=2, batch_size=4, learning_rate=1e-3,
                  save_steps=2, logging_steps=1, seed=0)
    values.update(changes)
    return TrainSettings(**values)


def evaluate(policy_dir, scored, loss: str, eta: float, eta_tau: float) -> dict:
    """Mean loss and margins of ``policy_dir`` on every pair of ``scored`` (no grad)."""
    import torch

    from linepo.stages.models import load_policy
    from linepo.stages.training import PairCollator, pair_features, pair_loss, read_scored

    model, tokenizer = load_policy(policy_dir, dtype="float32", device="cpu")
    table = read_scored([scored])
    batch = PairCollator(tokenizer.pad_token_id)(pair_features(tokenizer, table, 512))
    with torch.no_grad():
        mean, _, logps = pair_loss(model, batch, loss, eta=eta, tau=eta_tau / eta)
    n = logps.shape[0] // 2
    delta_policy = (logps[:n] - logps[n:]).double()
    delta_ref = (batch["reference_chosen_logp"] - batch["reference_rejected_logp"]).double()
    delta_anchor = (batch["anchor_chosen_logp"] - batch["anchor_rejected_logp"]).double()
    inpo_residual = delta_policy - eta_tau * delta_ref - (1 - eta_tau) * delta_anchor - eta / 2
    return {"loss": float(mean), "margin": float((delta_policy - delta_ref).mean()),
            "inpo_residual": float(inpo_residual.abs().mean())}


class StopAt:
    """A Trainer callback that raises at an optimizer step: a crash mid-training."""

    def __new__(cls, step: int):
        from transformers import TrainerCallback

        class _Stop(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == step:
                    raise KeyboardInterrupt(f"stopped at step {step}")

        return _Stop()


def train_full_and_crashed(parent, scored, tmp_path, settings, *, stop_at: int = 5):
    """Train ``settings`` on ``scored`` uninterrupted (into tmp_path/full) and once killed at
    optimizer step ``stop_at`` (into tmp_path/cut, side folder tmp_path/cut.partial): returns
    (the full run's stats, the side folder), for a test to resume from it."""
    import pytest

    from linepo.stages.training import train_policy

    full = train_policy(parent, scored, tmp_path / "full", resume_dir=tmp_path / "full.partial", settings=settings)
    side = tmp_path / "cut.partial"
    with pytest.raises(KeyboardInterrupt):
        train_policy(parent, scored, tmp_path / "cut", resume_dir=side, settings=settings,
                     callbacks=[StopAt(stop_at)])
    return full, side




# ----------------------------------------------------------------------------- judges


def build_tiny_judge(path, *, classifier: bool = False, hidden: int = 32, layers: int = 2, seed: int = 0) -> str:
    """Save a random tiny Llama (causal LM, or 1-label classifier) with a judge-format tokenizer to ``path``."""
    from linepo.testing import judge_format_tokenizer, save_model, tiny_causal_lm, tiny_reward_model

    tokenizer = judge_format_tokenizer(["Briefly, the answer. Sure, here it is. Certainly, in detail: words."])
    size = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=4,
                num_key_value_heads=2)
    model = (tiny_reward_model(tokenizer, seed, **size) if classifier
             else tiny_causal_lm(tokenizer, "llama", seed, tie=False, **size))
    save_model(model, tokenizer, path)
    return str(path)

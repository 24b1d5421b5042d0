"""Prefix-shared vs unshared pairwise LM judging on the same pairs: tokens run and wall time.

    HF_HUB_OFFLINE=1 python bench/judge_prefix.py                  # CPU, paper-like lengths
    HF_HUB_OFFLINE=1 python bench/judge_prefix.py --prompts 4 --dtype bfloat16

Paper-like shape: n = 5 samples per prompt, all 20 ordered pairs judged (10 comparisons,
both orders), ~150-token instructions, ~400-token responses (ragged, 300-500), the
OffsetBias prompt in the real Llama-3 chat template and tokenizer (tests/real_models.py:
needs the quicktok-v1 package, nothing is downloaded), a random LlamaForCausalLM small
enough for a CPU (hidden 256, 4 layers by default). Each path runs ``judge.probabilities``
end to end on the same comparisons after a warm-up; tokens are the positions the model ran,
padding included. Goal: ≥ 2× fewer tokens and ≥ 1.7× less time shared.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = ("the moon pulls water toward it so oceans bulge and tides rise twice a day while clouds form when "
         "vapour cools and condenses into drops that grow heavy and fall as rain").split()


def comparisons(prompts: int, samples: int, instruction: int, response: int, seed: int = 0):
    """All ordered pairs of ``samples`` responses for each of ``prompts`` instructions (lengths in words)."""
    rng = np.random.default_rng(seed)
    text = lambda k: " ".join(rng.choice(WORDS, size=k))  # noqa: E731
    rows = []
    for p in range(prompts):
        question = f"Question {p}: {text(instruction)}?"
        responses = [text(int(rng.integers(response * 3 // 4, response * 5 // 4 + 1))) for _ in range(samples)]
        rows += [(question, responses[i], responses[j]) for i, j in itertools.permutations(range(samples), 2)]
    return [list(col) for col in zip(*rows)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--instruction-words", type=int, default=150)
    parser.add_argument("--response-words", type=int, default=400)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    import torch

    from linepo.stages.judges.pairwise import PairwiseLMJudge
    from real_models import llama3_tokenizer, tiny_causal_lm

    tokenizer = llama3_tokenizer()
    model = tiny_causal_lm(tokenizer, "llama", 0, tie=False, hidden_size=args.hidden,
                           intermediate_size=4 * args.hidden, num_hidden_layers=args.layers,
                           num_attention_heads=max(1, args.hidden // 64), num_key_value_heads=max(1, args.hidden // 128))
    model = model.to(device=args.device, dtype=getattr(torch, args.dtype))
    judges = {name: PairwiseLMJudge(model, tokenizer, batch_size=args.batch_size, max_length=8192, device=args.device,
                                    min_answer_mass=0.0, share_prefixes=name == "shared")
              for name in ("unshared", "shared")}
    prompts, a, b = comparisons(args.prompts, args.samples, args.instruction_words, args.response_words)
    lengths = [len(s) for s in judges["shared"]._sequences(list(zip(prompts, a, b)))]
    head = judges["shared"].overhead
    print(f"{args.prompts} prompts × {args.samples} samples: {len(prompts)} ordered pairs, {len(lengths)} sequences "
          f"of {min(lengths)}-{max(lengths)} tokens (question format {head}); Llama hidden {args.hidden}, "
          f"{args.layers} layers, {args.dtype} on {args.device}, batch {args.batch_size}")
    warm = comparisons(1, 2, 10, 10, seed=1)
    results = {}
    for name, judge in judges.items():
        judge.probabilities(*warm)
        before = judge.tokens_computed
        start = time.perf_counter()
        prob, failed = judge.probabilities(prompts, a, b)
        seconds = time.perf_counter() - start
        results[name] = (prob, judge.tokens_computed - before, seconds)
        print(f"  {name:9s} {results[name][1]:8d} tokens  {seconds:7.2f} s  {len(prompts) / seconds:6.2f} pairs/s")
    (p_plain, t_plain, s_plain), (p_shared, t_shared, s_shared) = results["unshared"], results["shared"]
    print(f"  ratio     {t_plain / t_shared:8.2f}× fewer tokens  {s_plain / s_shared:5.2f}× less time  "
          f"(goal ≥ 2× and ≥ 1.7×); max |Δ P(a ≻ b)| = {np.nanmax(np.abs(p_shared - p_plain)):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

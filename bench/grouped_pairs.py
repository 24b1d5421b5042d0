"""Grouped batches and deduplicated scoring vs per-pair batches, on all-pairs data.

    HF_HUB_OFFLINE=1 python bench/grouped_pairs.py                    # 40 prompts x 16 samples (120 pairs each)
    HF_HUB_OFFLINE=1 python bench/grouped_pairs.py --small            # a few seconds: a smoke run
    HF_HUB_OFFLINE=1 python bench/grouped_pairs.py --hidden 256 --layers 4 --prompts-per-batch 1

A random Qwen2 policy with the embedded BPE tokenizer is built in a temp folder (nothing is
downloaded). Each prompt gets ``--samples`` distinct embedded-world responses (the three styles,
then varied phrasings), and every pair of them is a preference pair (``all_pairs``: each response
in samples − 1 pairs). Then, in this one run:

- scoring: ``score_preferences`` per pair (the baseline) vs ``deduplicate=True``, reference and
  anchor one policy (one model run each);
- training: one epoch of ``train_policy`` with per-pair batches of ``K × pairs per prompt`` pairs
  (the baseline: the same pairs per step, the same step count) vs ``prompts_per_batch=K``.

Printed: wall seconds of each (scoring includes loading the policy, training its set-up), the
ratio grouped / per-pair (< 1: grouped is faster), and the max |Δ| of the deduplicated
log-probs from the plain ones. Run it on an idle machine; timings on
a shared one are noise.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from linepo import toy as embedded  # noqa: E402


def responses(prompt_index: int, count: int, rng) -> list[str]:
    """``count`` distinct responses to one prompt: the fixed styles, then varied phrasings."""
    out: list[str] = []
    for style in embedded.STYLES:
        out.append(embedded.response(prompt_index, style, rng))
    tries = 0
    while len(out) < count:
        text = embedded.response(prompt_index, embedded.STYLES[tries % len(embedded.STYLES)], rng, "varied")
        tries += 1
        if text not in out:
            out.append(text)
        elif tries > 100 * count:
            out.append(text + f" ({len(out)})")  # the varied phrasings ran out: make one distinct
    return out[:count]


def all_pairs_rows(num_prompts: int, samples: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    prompts = embedded.prompts("train", num_prompts)
    rows = []
    for i, prompt in enumerate(prompts):
        texts = responses(i, samples, rng)
        win = np.linspace(0.1, 0.9, samples)
        for a, b in itertools.combinations(range(samples), 2):
            rows.append({"prompt_id": f"p{i}", "prompt": prompt, "chosen": texts[b], "rejected": texts[a],
                         "chosen_index": b, "rejected_index": a, "chosen_win_rate": float(win[b]),
                         "rejected_win_rate": float(win[a]), "label_probability": 0.75,
                         "chosen_finished": True, "rejected_finished": True})
    return rows


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def best_of(repeats: int, *fns):
    """(min seconds, last result) of each fn, run alternately ``repeats`` times (the first run of a
    process pays imports and warm-up; alternating shares that and any drift)."""
    best = [(float("inf"), None)] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            seconds, result = timed(fn)
            best[i] = (min(best[i][0], seconds), result)
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--samples", type=int, default=16, help="responses per prompt (all pairs of them)")
    parser.add_argument("--prompts-per-batch", type=int, default=1, help="K of the grouped batches")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--score-batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each, alternating; the fastest counts")
    parser.add_argument("--small", action="store_true", help="a smoke run: 3 prompts x 4 samples, width 32")
    args = parser.parse_args(argv)
    if args.small:
        args.prompts, args.samples, args.hidden, args.layers = 3, 4, 32, 1

    import torch

    from linepo.schemas import read_table, write_table
    from linepo.stages.models import save_policy
    from linepo.stages.scoring import LOGP_COLUMNS, score_preferences
    from linepo.stages.training import TrainSettings, train_policy

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        examples = embedded.corpus(num_prompts=20, seed=0)
        tokenizer = embedded.train_tokenizer([e["prompt"] for e in examples] + [e["response"] for e in examples],
                                             vocab_size=300 if args.small else embedded.VOCAB_SIZE)
        heads = max(1, args.hidden // 32)
        model = embedded.init_model(tokenizer, 0, hidden_size=args.hidden, num_hidden_layers=args.layers,
                                    num_attention_heads=heads, num_key_value_heads=1,
                                    intermediate_size=2 * args.hidden)
        save_policy(model, tokenizer, root / "policy")
        rows = all_pairs_rows(args.prompts, args.samples)
        write_table(rows, root / "prefs.parquet", "preferences")
        pairs_per_prompt = args.samples * (args.samples - 1) // 2
        print(f"{args.prompts} prompts x {args.samples} samples: {len(rows)} pairs ({pairs_per_prompt} per prompt), "
              f"policy width {args.hidden} x {args.layers} layers, {'CUDA' if torch.cuda.is_available() else 'CPU'}")

        score = dict(reference=root / "policy", anchor=root / "policy", batch_size=args.score_batch_size,
                     max_length=512, dtype="float32")
        (plain_s, _), (dedup_s, _) = best_of(
            args.repeats, lambda: score_preferences(root / "prefs.parquet", root / "plain.parquet", **score),
            lambda: score_preferences(root / "prefs.parquet", root / "dedup.parquet", deduplicate=True, **score))
        plain, dedup = read_table(root / "plain.parquet", "scored"), read_table(root / "dedup.parquet", "scored")
        diff = max(float(np.max(np.abs(np.asarray(plain.column(c).to_pylist())
                                       - np.asarray(dedup.column(c).to_pylist())))) for c in LOGP_COLUMNS)
        print(f"scoring:  per pair {plain_s:8.2f} s, deduplicated {dedup_s:8.2f} s, ratio {dedup_s / plain_s:.3f} "
              f"(max |dlogp| {diff:.2e})")

        k = args.prompts_per_batch
        base = dict(loss="inpo", eta=4.0, eta_tau=1 / 3, epochs=1, learning_rate=5e-4, save_steps=10**6,
                    logging_steps=10**6, seed=0)
        per_pair = TrainSettings(**base, batch_size=k * pairs_per_prompt)
        grouped = TrainSettings(**base, batch_size=k * pairs_per_prompt, prompts_per_batch=k)
        scored = [root / "plain.parquet"]
        (plain_t, a), (group_t, b) = best_of(
            args.repeats,
            lambda: train_policy(root / "policy", scored, root / "t_plain", resume_dir=root / "t_plain.partial",
                                 settings=per_pair),
            lambda: train_policy(root / "policy", scored, root / "t_group", resume_dir=root / "t_group.partial",
                                 settings=grouped))
        print(f"training: per pair {plain_t:8.2f} s ({a['global_step']} steps, {a['tokens']} tokens), grouped "
              f"{group_t:8.2f} s ({b['global_step']} steps, {b['tokens']} tokens), ratio {group_t / plain_t:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

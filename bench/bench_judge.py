"""Throughput of the pairwise LM judge vs a bare batched forward pass, same model and batches.

    HF_HUB_OFFLINE=1 python bench/bench_judge.py                       # CPU, tiny random Llama
    HF_HUB_OFFLINE=1 python bench/bench_judge.py --device cuda --hidden 1024 --layers 8 \
        --comparisons 1024 --batch-size 32

A random Llama and a BPE tokenizer are built in a temp folder (nothing is downloaded) and
loaded through ``make_judge`` like any judge. The judge is timed end to end
(``judge.probabilities``: rendering, tokenizing, padding, both orders, softmax, averaging);
the baseline runs exactly the judge's forwards (the same 2 × comparisons sequences, the
same padded batches, ``logits_to_keep=1``) with nothing else. Both are reported as
comparisons/s; the ratio judge / bare is the judge's efficiency (goal ≥ 0.9).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from linepo.stages.judges import make_judge  # noqa: E402
from linepo.stages.judges.hf import batches as _batches  # noqa: E402

WORDS = ("the moon pulls water toward it so oceans bulge and tides rise twice a day while "
         "clouds form when vapour cools and condenses into drops that grow heavy and fall as rain").split()


def build_model(path: Path, hidden: int, layers: int, vocab: int) -> str:
    from linepo.testing import judge_format_tokenizer, save_model, tiny_causal_lm

    tokenizer = judge_format_tokenizer([" ".join(WORDS)] * 2, vocab_size=vocab)
    model = tiny_causal_lm(tokenizer, "llama", 0, tie=False, hidden_size=hidden, intermediate_size=4 * hidden,
                           num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                           num_key_value_heads=max(1, hidden // 128))
    save_model(model, tokenizer, path)
    return str(path)


def comparisons(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    text = lambda k: " ".join(rng.choice(WORDS, size=k))  # noqa: E731
    prompts = [f"Question {i // 10}: {text(12)}?" for i in range(n)]
    a = [text(int(rng.integers(20, 150))) for _ in range(n)]
    b = [text(int(rng.integers(20, 150))) for _ in range(n)]
    return prompts, a, b


def judge_sequences(judge, prompts, a, b):
    """The token sequences the judge runs for these comparisons (both orders)."""
    triples = []
    for p, x, y in zip(prompts, a, b):
        x, y = (y, x) if x > y else (x, y)
        triples += [(p, x, y), (p, y, x)]
    encoded = judge._encode_texts([judge._conversation(*t) for t in triples])  # whole texts: the reference
    # The judge's own (head-cached) tokenization must give exactly these sequences.
    assert judge._encode_conversations(triples) == encoded, "head-cached tokenization differs"
    return [ids + judge.forced_ids for ids in encoded]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2000)
    parser.add_argument("--comparisons", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_model(Path(tmp) / "judge", args.hidden, args.layers, args.vocab)
        judge = make_judge({"type": "pairwise_lm", "model": path, "device": args.device,
                            "batch_size": args.batch_size, "max_length": 4096})
    prompts, a, b = comparisons(args.comparisons)
    sequences = judge_sequences(judge, prompts, a, b)
    batches = [(ids, mask, pos) for _, ids, mask, pos in _batches(sequences, judge.batch_size, judge.pad_id,
                                                                   judge.device)]

    def bare():
        with torch.inference_mode():
            for ids, mask, pos in batches:
                judge.model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1)
        sync()

    def full():
        judge.probabilities(prompts, a, b)
        sync()

    bare(), full()  # warm-up
    timings = {"bare": [], "judge": []}
    for _ in range(args.repeats):  # interleaved, so drift hits both alike
        for name, fn in (("bare", bare), ("judge", full)):
            start = time.perf_counter()
            fn()
            timings[name].append(time.perf_counter() - start)
    # Best of the repeats: on a shared machine other jobs only ever slow a run down.
    rate = {k: args.comparisons / min(v) for k, v in timings.items()}
    lengths = [len(s) for s in sequences]
    print(f"device={judge.device} dtype={next(judge.model.parameters()).dtype} hidden={args.hidden} "
          f"layers={args.layers} comparisons={args.comparisons} forwards={len(sequences)} "
          f"batch_size={args.batch_size} tokens/seq={min(lengths)}..{max(lengths)} threads={torch.get_num_threads()}")
    for name, label in (("bare", "bare forward"), ("judge", "LM judge    ")):
        runs = " ".join(f"{t:.3f}" for t in timings[name])
        print(f"{label} : {rate[name]:8.2f} comparisons/s (best of {args.repeats} runs; seconds: {runs})")
    print(f"ratio judge/bare = {rate['judge'] / rate['bare']:.3f} (goal ≥ 0.9)")


if __name__ == "__main__":
    main()

"""Throughput of the training stage (`linepo.stages.training`, on transformers' Trainer) vs a bare PyTorch loop.

    HF_HUB_OFFLINE=1 python bench/bench_train.py                          # CPU, small random Qwen2
    HF_HUB_OFFLINE=1 python bench/bench_train.py --device cuda --hidden 1024 --layers 8 \\
        --pairs 512 --batch-size 16

A random Qwen2 with the embedded BPE tokenizer is built in a temp folder (nothing is
downloaded), synthetic pairs are scored with ``linepo.stages.scoring`` and the stage runs end to
end through ``train_policy`` (data loading, collation, Trainer loop, loss, optimizer,
scheduler, clipping, logging; checkpointing off unless --save-steps is given; the final
save is not timed). The exact batches the stage trained on are recorded and replayed by
the baseline: the same model loaded the same way, the same ``pair_loss`` (one forward over
chosen + rejected), AdamW, linear schedule, gradient clipping and bf16 autocast when the
stage uses it, and nothing else. Both report non-padding tokens/s; the ratio stage / bare
is the stage's efficiency (goal ≥ 0.9). Runs alternate (bare, stage, bare, stage, ...)
and the median of --repeats is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import linepo.stages.training as training  # noqa: E402
from linepo import toy as embedded  # noqa: E402


def build_policy(path: Path, hidden: int, layers: int, seed: int = 0):
    from linepo.stages.models import save_policy

    examples = embedded.corpus(num_prompts=60, seed=seed)
    tokenizer = embedded.train_tokenizer([e["prompt"] for e in examples] + [e["response"] for e in examples])
    heads = max(2, hidden // 64)
    model = embedded.init_model(tokenizer, seed, hidden_size=hidden, num_hidden_layers=layers,
                                num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                                intermediate_size=hidden * 3)
    save_policy(model, tokenizer, path)
    return sum(p.numel() for p in model.parameters())


def make_scored(root: Path, policy: Path, pairs: int) -> Path:
    import numpy as np

    from linepo.schemas import write_table
    from linepo.stages.scoring import score_preferences

    rng = np.random.default_rng(0)
    prompts = embedded.prompts("train")
    rows = []
    for k in range(pairs):
        i = k % len(prompts)
        chosen, rejected = rng.choice(embedded.STYLES, size=2, replace=False)
        rows.append({"prompt_id": f"p{k}", "prompt": prompts[i], "chosen": embedded.response(i, chosen, rng),
                     "rejected": embedded.response(i, rejected, rng), "chosen_index": 0, "rejected_index": 1,
                     "chosen_win_rate": 0.6, "rejected_win_rate": 0.4, "label_probability": 1.0,
                     "chosen_finished": True, "rejected_finished": True})
    write_table(rows, root / "prefs.parquet", "preferences")
    score_preferences(root / "prefs.parquet", root / "scored.parquet", reference=policy, anchor=policy,
                      batch_size=32, max_length=512)
    return root / "scored.parquet"


class RecordingCollator(training.PairCollator):
    """The stage's collator, keeping every batch it makes (for the baseline to replay)."""

    batches: list = []

    def __call__(self, features):
        batch = super().__call__(features)
        RecordingCollator.batches.append(batch)
        return batch


def run_stage(policy: Path, scored: Path, out: Path, settings) -> dict:
    RecordingCollator.batches = []
    training.PairCollator = RecordingCollator
    stats = training.train_policy(policy, [scored], out, resume_dir=out.with_name(out.name + ".partial"),
                                  settings=settings)
    return {"tokens": stats["tokens"], "seconds": stats["seconds"], "steps": stats["global_step"],
            "batches": list(RecordingCollator.batches)}


def run_bare(policy: Path, batches: list, settings, device: str) -> dict:
    """The same batches, loss, optimizer, schedule and clipping in a plain loop."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    from linepo.stages.models import load_policy

    model, _ = load_policy(policy, dtype=settings.dtype, device=device)
    training._disable_dropout(model)
    model.train()
    bf16 = settings.use_bf16()
    tau = settings.eta_tau / settings.eta
    ga = settings.gradient_accumulation_steps
    steps = len(batches) // ga
    start = time.perf_counter()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "norm" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=settings.learning_rate)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, steps)
    tokens = torch.zeros((), dtype=torch.long, device=device)
    for step in range(steps):
        for batch in batches[step * ga:(step + 1) * ga]:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
                loss, _, _ = training.pair_loss(model, batch, settings.loss, eta=settings.eta, tau=tau)
            (loss / ga).backward()
            tokens += batch["attention_mask"].sum()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    tokens = int(tokens)  # syncs the device
    seconds = time.perf_counter() - start
    del model, optimizer
    return {"tokens": tokens, "seconds": seconds, "steps": steps}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the stage uses cuda whenever it exists)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--loss", default="inpo")
    parser.add_argument("--save-steps", type=int, default=10**9, help="checkpoint interval of the stage (default: none)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") != torch.cuda.is_available():
        print(f"--device {args.device} but torch.cuda.is_available() is {torch.cuda.is_available()}: "
              "the stage would run elsewhere", file=sys.stderr)
        return 2
    settings = training.TrainSettings(loss=args.loss, eta=8.0, eta_tau=0.5, epochs=args.epochs,
                                      batch_size=args.batch_size, learning_rate=1e-5,
                                      save_steps=args.save_steps, logging_steps=10)
    with tempfile.TemporaryDirectory(prefix="linepo-bench-train-") as tmp:
        root = Path(tmp)
        params = build_policy(root / "policy", args.hidden, args.layers)
        scored = make_scored(root, root / "policy", args.pairs)
        stage_runs, bare_runs = [], []
        # warm-up: one stage run whose batches the baseline then replays (allocator, kernels, threads)
        warm = run_stage(root / "policy", scored, root / "out_warm", settings)
        batches = warm.pop("batches")
        run_bare(root / "policy", batches, settings, args.device)
        for r in range(args.repeats):
            bare_runs.append(run_bare(root / "policy", batches, settings, args.device))
            stage = run_stage(root / "policy", scored, root / f"out{r}", settings)
            stage.pop("batches")
            stage_runs.append(stage)
        stage_tps = [s["tokens"] / s["seconds"] for s in stage_runs]
        bare_tps = [b["tokens"] / b["seconds"] for b in bare_runs]
        assert all(s["tokens"] == bare_runs[0]["tokens"] for s in stage_runs + bare_runs)
    result = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)",
        "parameters": params,
        "pairs": args.pairs,
        "batch_size": args.batch_size,
        "steps": stage_runs[0]["steps"],
        "tokens_per_run": stage_runs[0]["tokens"],
        "bf16": settings.use_bf16(),
        "stage_tokens_per_s": round(statistics.median(stage_tps), 1),
        "bare_tokens_per_s": round(statistics.median(bare_tps), 1),
        "stage_runs_tokens_per_s": [round(x, 1) for x in stage_tps],
        "bare_runs_tokens_per_s": [round(x, 1) for x in bare_tps],
    }
    result["ratio"] = round(result["stage_tokens_per_s"] / result["bare_tokens_per_s"], 3)
    # each stage run next to the bare run just before it: robust to a machine whose load drifts
    result["ratio_paired_median"] = round(statistics.median(s / b for s, b in zip(stage_tps, bare_tps)), 3)
    print(f"training stage: {result['stage_tokens_per_s']:.0f} tokens/s; bare PyTorch loop: "
          f"{result['bare_tokens_per_s']:.0f} tokens/s; ratio {result['ratio']:.3f} "
          f"(paired median {result['ratio_paired_median']:.3f}; goal >= 0.9)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""GPU smoke test: one LINE-PO round (sample → judge → pairs → score → train per split) with throughput.

    PYTHONPATH=. python scripts/gpu_smoke.py                      # any single-GPU machine; 99 s on an H100
    PYTHONPATH=. python scripts/gpu_smoke.py --device cpu --prompts 8 --splits 2 --n 2 --max-new-tokens 8 \\
        --hidden 64 --layers 2 --sft-steps 0                      # a quick local check (~30 s on 2 CPU cores)

Nothing is downloaded and no workflow engine is needed: it runs the library functions the
workflow's commands run (``linepo.stages.sampling``, ``linepo.stages.preferences``, ``linepo.stages.scoring``,
``linepo.stages.training``) in one process, on a policy built here: the embedded BPE tokenizer and
a randomly initialised Qwen2 of ``--hidden`` × ``--layers`` (default 768 × 12, ~86 M
parameters), optionally SFT'd for ``--sft-steps`` on the embedded corpus so that it answers
in the three styles the synthetic oracle ranks (the paper's 3×3 game). Then, for each of
``--splits`` prompt splits, one INPO step of a LINE-PO round: μ_k samples n responses per
prompt, the synthetic oracle judges every pair, every judged pair labelled by the oracle's
probability is kept (``all_pairs``, the default's soft labels), π_ref (the round's start, the SFT policy) and μ_k score
them, and μ_{k+1} is trained with the INPO loss; at the end of the round LINE-PO's reference
would move to μ_K.

Needs numpy, pyarrow, torch, transformers (with accelerate, which its Trainer needs),
tokenizers, safetensors and tqdm; not snakemake, datasets, scipy or matplotlib. Prints one
line per stage (seconds, throughput, peak GPU memory) and a final JSON object. Exit code 2
with one line for bad arguments (e.g. --device cuda without a GPU).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cuda (default) or cpu")
    parser.add_argument("--prompts", type=int, default=256, help="prompts per split (default 256)")
    parser.add_argument("--splits", type=int, default=2, help="prompt splits = INPO steps in the round (default 2)")
    parser.add_argument("--n", type=int, default=4, help="samples per prompt (default 4: 6 pairs per prompt)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--sample-batch-size", type=int, default=256, help="rows per generate call")
    parser.add_argument("--hidden", type=int, default=768, help="Qwen2 hidden size (default 768)")
    parser.add_argument("--layers", type=int, default=12, help="Qwen2 layers (default 12)")
    parser.add_argument("--sft-steps", type=int, default=100,
                        help="SFT steps on the embedded corpus before the round (0: the random policy)")
    parser.add_argument("--train-batch-size", type=int, default=64, help="pairs per optimizer step")
    parser.add_argument("--score-batch-size", type=int, default=64, help="sequences per scoring forward")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="sampling/scoring dtype; auto: bfloat16 on a GPU, float32 on the CPU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="write the artefacts here instead of a temp folder")
    args = parser.parse_args(argv)
    for name in ("prompts", "splits", "n", "max_new_tokens", "sample_batch_size", "hidden", "layers",
                 "train_batch_size", "score_batch_size"):
        if getattr(args, name) < 1:
            parser.exit(2, f"gpu_smoke: error: --{name.replace('_', '-')} must be at least 1\n")
    if args.n < 2:
        parser.exit(2, "gpu_smoke: error: --n must be at least 2 (pairs need two samples)\n")
    if args.sft_steps < 0:
        parser.exit(2, "gpu_smoke: error: --sft-steps must be >= 0\n")
    if args.hidden % 64 and args.hidden >= 64:
        parser.exit(2, "gpu_smoke: error: --hidden must be a multiple of 64 (head size 64)\n")
    return args


class Stages:
    """Times stages, resets and reads the GPU's peak memory, prints one line per stage."""

    def __init__(self, device: str):
        import torch

        self.torch, self.cuda = torch, device == "cuda"
        self.rows: list[dict] = []

    def start(self) -> float:
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
        return time.perf_counter()

    def end(self, stage: str, start: float, **rates) -> dict:
        if self.cuda:
            self.torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        row = {"stage": stage, "seconds": round(seconds, 3)}
        for name, count in rates.items():
            row[name] = count
            row[f"{name}_per_s"] = round(count / seconds, 1) if seconds > 0 else None
        if self.cuda:
            row["peak_gpu_mib"] = round(self.torch.cuda.max_memory_allocated() / 2**20, 1)
        else:
            row["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        self.rows.append(row)
        rates_text = ", ".join(f"{row[f'{k}_per_s']:,.1f} {k}/s" for k in rates) or "-"
        memory = f"peak GPU {row['peak_gpu_mib']:,.0f} MiB" if self.cuda else f"peak RSS {row['peak_rss_mib']:,.0f} MiB"
        print(f"{stage:<14} {seconds:8.2f} s  {rates_text}  [{memory}]", flush=True)
        return row


def build_policy(path: Path, args) -> dict:
    """The embedded tokenizer and a random Qwen2 of the asked size, SFT'd for --sft-steps."""
    import numpy as np

    from linepo import toy as embedded
    from linepo.stages.models import save_policy

    heads = max(1, args.hidden // 64)
    size = dict(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=heads,
                num_key_value_heads=max(1, heads // 4) if heads % max(1, heads // 4) == 0 else heads,
                intermediate_size=int(args.hidden * 8 / 3) // 64 * 64 or 4 * args.hidden)
    examples = embedded.corpus(seed=args.seed)
    tokenizer = embedded.train_tokenizer([e["prompt"] for e in examples] + [e["response"] for e in examples])
    model = embedded.init_model(tokenizer, args.seed, **size)
    summary = {"parameters": sum(p.numel() for p in model.parameters()), "sft_steps": args.sft_steps}
    if args.sft_steps:
        model = embedded.sft(model.to(args.device), tokenizer, examples, steps=args.sft_steps, seed=args.seed,
                             learning_rate=1e-3)  # the one SFT loop, on the asked device
        probs = embedded.first_token_category_probs(model, tokenizer, embedded.prompts("eval")).mean(axis=0)
        summary["eval_category_probs"] = dict(zip((*embedded.STYLES, "unmatched"), np.round(probs, 3).tolist()))
    save_policy(model.float().cpu().eval(), tokenizer, path)
    return summary


def run(args) -> dict:
    """The round, in a temp folder (removed after) or in --keep."""
    if args.keep is None:
        with tempfile.TemporaryDirectory(prefix="linepo-gpu-smoke-") as tmp:
            return run_in(args, Path(tmp))
    args.keep.mkdir(parents=True, exist_ok=True)
    return run_in(args, args.keep)


def run_in(args, root: Path) -> dict:
    import torch

    from linepo import toy as embedded
    from linepo.stages.judges import make_judge
    from linepo.stages.preferences import group_samples, run_tournament, select_preferences
    from linepo.stages.prompts import split_prompts
    from linepo.stages.sampling import SamplerSettings, make_sampler
    from linepo.schemas import to_table, write_table
    from linepo.stages.scoring import score_preferences
    from linepo.stages.training import TrainSettings, train_policy

    cuda = args.device == "cuda"
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if cuda else "float32")
    stages = Stages(args.device)
    device_name = torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)"
    print(f"linepo GPU smoke test on {device_name}: {args.splits} split(s) x {args.prompts} prompts x "
          f"{args.n} samples, {args.max_new_tokens} new tokens, dtype {dtype}; artefacts in {root}", flush=True)

    t = stages.start()
    policy = build_policy(root / "sft", args)
    stages.end("build+sft", t, **({"sft_steps": args.sft_steps} if args.sft_steps else {}))
    print(f"  policy: {policy['parameters']:,} parameters"
          + (f", style mix after SFT {policy['eval_category_probs']}" if policy.get("eval_category_probs") else ""))

    num_prompts = args.prompts * args.splits
    texts = [f"{text} (case {i})" for i, text in enumerate(
        (embedded.prompts("train") * (num_prompts // len(embedded.prompts("train")) + 1))[:num_prompts])]
    rows = [{"prompt_id": f"p{i:05d}", "prompt": text, "source": "smoke"} for i, text in enumerate(texts)]
    splits = split_prompts(rows, args.splits, args.seed)
    judge = make_judge(None)  # the synthetic oracle: the paper's 3x3 game over the embedded styles
    reference = current = root / "sft"  # LINE-PO's round starts with π_ref = μ_1
    train_settings = TrainSettings(loss="inpo", eta=4.0, eta_tau=0.6, epochs=1, batch_size=args.train_batch_size,
                                   learning_rate=5e-4, save_steps=10**6, logging_steps=10**6, seed=args.seed)
    totals = {"samples": 0, "sample_tokens": 0, "pairs": 0}
    for s, split in enumerate(splits):
        step = root / f"s{s}"
        step.mkdir(exist_ok=True)
        # -- sample: n responses per prompt from μ_k
        t = stages.start()
        settings = SamplerSettings(n=args.n, temperature=1.0, max_new_tokens=args.max_new_tokens,
                                   seed=args.seed + s, batch_size=args.sample_batch_size)
        sampler = make_sampler(current, settings, dtype=dtype, device=args.device)
        samples = sampler.generate([{"prompt_id": r["prompt_id"], "prompt": r["prompt"]} for r in split])
        del sampler
        tokens = sum(r["num_tokens"] for r in samples)
        stages.end(f"s{s} sample", t, prompts=len(split), samples=len(samples), tokens=tokens)
        write_table(samples, step / "samples.parquet", "samples")
        totals["samples"] += len(samples)
        totals["sample_tokens"] += tokens
        if cuda:
            torch.cuda.empty_cache()
        # -- judge every pair; keep every judged pair with the oracle's probability as its label
        t = stages.start()
        groups = group_samples(to_table(samples, "samples"), "samples")
        judgments, judge_stats = run_tournament(groups, judge, seed=args.seed + s, progress=False)
        stages.end(f"s{s} judge", t, comparisons=judge_stats["comparisons"])
        t = stages.start()
        pairs, _ = select_preferences(groups, judgments, selection="all_pairs", use_outcomes=False)
        write_table(pairs, step / "prefs.parquet", "preferences")
        stages.end(f"s{s} pairs", t, pairs=len(pairs))
        totals["pairs"] += len(pairs)
        if not pairs:
            raise RuntimeError("no preference pairs: every comparison tied or failed")
        # -- score under π_ref and μ_k (one model when they are the same folder)
        t = stages.start()
        score = score_preferences(step / "prefs.parquet", step / "scored.parquet", reference=reference,
                                  anchor=current, batch_size=args.score_batch_size, max_length=512, dtype=dtype)
        stages.end(f"s{s} score", t, pairs=score["pairs"] * score["models_run"], tokens=score["tokens"])
        if cuda:
            torch.cuda.empty_cache()
        # -- train μ_{k+1} with the INPO loss (the Trainer loop the workflow runs)
        t = stages.start()
        trained = train_policy(current, [step / "scored.parquet"], step / "policy",
                               resume_dir=step / "policy.partial", settings=train_settings)
        stages.end(f"s{s} train", t, pairs=len(pairs), tokens=trained["tokens"], steps=trained["global_step"])
        current = step / "policy"
        gc.collect()  # the Trainer and its optimizer state
        if cuda:
            torch.cuda.empty_cache()
    print(f"round done: LINE-PO's reference would now move from {reference.name} to {current.parent.name}'s policy")
    return {"device": device_name, "dtype": dtype, "parameters": policy["parameters"], "splits": args.splits,
            "prompts_per_split": args.prompts, "n": args.n, "max_new_tokens": args.max_new_tokens, **totals,
            "stages": stages.rows, "total_seconds": round(sum(r["seconds"] for r in stages.rows), 2),
            "artefacts": str(root) if args.keep else None}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch initialises CUDA: the Trainer too stays on the CPU
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_smoke: error: --device cuda but torch sees no GPU (torch.cuda.is_available() is False); "
              "use --device cpu for a local check", file=sys.stderr)
        return 2
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bars between the stage lines
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    start = time.perf_counter()
    result = run(args)
    result["wall_seconds"] = round(time.perf_counter() - start, 2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

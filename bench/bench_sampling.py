"""Sampler throughput against a bare ``model.generate`` loop on the same model and batches.

    python bench/bench_sampling.py                                   # random embedded-size model
    python bench/bench_sampling.py --policy results/embedded/policy  # a trained policy

The sampler adds per-row seeded Gumbel noise (batch-independent randomness), prompt
sorting, EOS trimming and decoding on top of ``model.generate``; this measures what that
costs. Both sides get the same prompts, batch composition, temperature and
max_new_tokens, and tokens are counted the same way (up to and including the first EOS).
Runs are interleaved and the best of ``--repeats`` is kept, so a noisy neighbour on the
machine hits both sides alike. Goal: ratio >= 0.9.
"""

from __future__ import annotations

import argparse
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default=None, help="policy folder (default: a random model of the embedded size)")
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    import torch

    from linepo import toy as embedded
    from linepo.stages.models import encode_prompt, load_policy, save_policy
    from linepo.stages.sampling import SamplerSettings, TransformersSampler

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        policy = args.policy
        if policy is None:
            examples = embedded.corpus(seed=0, responses_per_prompt=1)
            tokenizer = embedded.train_tokenizer([e["prompt"] for e in examples] + [e["response"] for e in examples])
            policy = f"{tmp}/random"
            save_policy(embedded.init_model(tokenizer, 0).eval(), tokenizer, policy)
        model, tokenizer = load_policy(policy, dtype="float32", device=args.device)
        device = next(model.parameters()).device
        prompts = embedded.prompt_rows("train", args.num_prompts)
        settings = SamplerSettings(
            n=args.n, temperature=args.temperature, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size
        )
        sampler = TransformersSampler(model, tokenizer, settings)

        # The sampler's batches: one row per (prompt, sample), longest prompts first.
        encoded = [encode_prompt(tokenizer, p["prompt"]) for p in prompts]
        rows = sorted([encoded[i] for i in range(len(prompts)) for _ in range(args.n)], key=lambda ids: -len(ids))
        batches = [
            tokenizer.pad({"input_ids": rows[s : s + args.batch_size]}, return_tensors="pt", padding_side="left")
            for s in range(0, len(rows), args.batch_size)
        ]
        eos = set(sampler.eos_token_ids)

        def bare() -> int:
            tokens = 0
            for batch in batches:
                with torch.inference_mode():
                    out = model.generate(
                        input_ids=batch["input_ids"].to(device),
                        attention_mask=batch["attention_mask"].to(device),
                        do_sample=True,
                        temperature=args.temperature,
                        top_p=1.0,
                        top_k=0,
                        max_new_tokens=args.max_new_tokens,
                        pad_token_id=sampler.pad_token_id,
                        eos_token_id=sampler.eos_token_ids,
                    )  # (B, T + new)
                for seq in out[:, batch["input_ids"].shape[1] :].tolist():
                    stop = next((j for j, t in enumerate(seq) if t in eos), None)
                    tokens += len(seq) if stop is None else stop + 1
            return tokens

        def ours() -> int:
            return sum(r["num_tokens"] for r in sampler.generate(prompts))

        ours(), bare()  # warm-up: first-call allocations and lazy imports
        best = {"sampler": 0.0, "bare generate": 0.0}
        for _ in range(args.repeats):
            for name, fn in (("sampler", ours), ("bare generate", bare)):
                start = time.perf_counter()
                tokens = fn()
                best[name] = max(best[name], tokens / (time.perf_counter() - start))
        params = sum(p.numel() for p in model.parameters())
        print(
            f"model {type(model).__name__} {params / 1e6:.2f}M params on {device}, threads {torch.get_num_threads()}; "
            f"{len(rows)} rows = {len(prompts)} prompts x {args.n}, batch {args.batch_size}, "
            f"max_new_tokens {args.max_new_tokens}, best of {args.repeats}"
        )
        for name, tps in best.items():
            print(f"{name:>14}: {tps:9.0f} tokens/s")
        print(f"{'ratio':>14}: {best['sampler'] / best['bare generate']:9.3f}  (goal >= 0.9)")


if __name__ == "__main__":
    main()

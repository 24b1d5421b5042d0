"""Sample n responses per prompt from a policy: one interface, two backends.

    linepo sample --policy results/embedded/policy --prompts prompts.parquet \\
        --out samples.parquet --n 5 --temperature 0.8 --top-p 1.0 --max-new-tokens 64 --seed 0

    from linepo.stages.sampling import SamplerSettings, make_sampler
    sampler = make_sampler("results/embedded/policy", SamplerSettings(n=5, temperature=0.8))
    rows = sampler.generate([{"prompt_id": "p0", "prompt": "Explain gravity."}], n=5)

Rows are of the "samples" artefact kind (:mod:`linepo.schemas`), in input prompt order
then ``sample_index``.

Backend ``transformers`` (default) runs batched ``model.generate`` with left padding and
the KV cache, prompts sorted by length so that a batch wastes little padding. Sampling
is made reproducible per row rather than per batch: each row (prompt_id, sample_index)
owns a ``torch.Generator`` seeded from (seed, prompt_id, sample_index), and the token is
drawn by the Gumbel-max trick (argmax of log-probs + Gumbel noise from that generator),
which is an exact sample of softmax(logits / temperature) after top-p. So a response
does not depend on the batch size or on which other prompts share its batch (up to
float rounding of batched matmuls, which can flip a near-tie), and the same inputs and
settings give byte-identical parquet files on CPU.

Backend ``vllm`` (optional extra ``linepo[vllm]``) maps the same settings onto
``vllm.SamplingParams`` with a per-prompt seed; it is imported only when selected. Both drop,
counted, a prompt longer than the model takes (:mod:`linepo.stages.fit`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass

from linepo.errors import InputError
from linepo.provenance import check_policy_folder
from linepo.stages.fit import fit_prompts, max_positions
from linepo.settings import check, setting

log = logging.getLogger(__name__)

BACKENDS = ("transformers", "vllm")


@dataclass(frozen=True)
class SamplerSettings:
    """How to sample; every field is recorded in each row's ``sampler_settings``.

    The defaults are the workflow config's ``sampling`` defaults (tests/test_settings.py).
    """

    n: int = setting(5, "samples per prompt", low=1)
    temperature: float = setting(0.8, "softmax temperature; 0 is greedy", low=0)
    top_p: float = setting(1.0, "nucleus sampling: keep the smallest set of tokens with this mass", low=0,
                           low_open=True, high=1)
    max_new_tokens: int = setting(48, "tokens per response at most (a longer one is cut: no stop token)", low=1)
    seed: int = setting(0, "seed of every row's sampler (with the prompt id and sample index)", low=0)
    batch_size: int = setting(64, "sequences per generate call (transformers backend)", low=1)
    backend: str = setting("transformers", "transformers (batched generate) or vllm", choices=BACKENDS)
    tensor_parallel_size: int = setting(1, "GPUs per model (vllm backend)", low=1)

    def validate(self) -> "SamplerSettings":
        """Return self after checking every field.

        Raises:
            InputError: a field out of range; the message names the command-line flag.
        """
        check(self)
        return self

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def row_seed(seed: int, prompt_id: str, sample_index: int | None = None) -> int:
    """A 63-bit seed for one row (or one prompt when ``sample_index`` is None).

    Derived from the ids, never from batch position, so that a row's randomness does not
    depend on how prompts were batched.
    """
    key = f"{seed}\0{prompt_id}\0{'' if sample_index is None else sample_index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & (2**63 - 1)


def check_prompts(prompts) -> list[dict]:
    """Return ``prompts`` as a list of ``{"prompt_id", "prompt"}`` dicts after checking them.

    Raises:
        InputError: a row without a string prompt_id/prompt, or a repeated prompt_id
            (its samples would be indistinguishable downstream).
    """
    rows, seen = [], set()
    for i, p in enumerate(prompts):
        if not isinstance(p, dict) or not isinstance(p.get("prompt_id"), str) or not isinstance(p.get("prompt"), str):
            raise InputError(f"prompts: row {i} needs string fields prompt_id and prompt")
        if p["prompt_id"] in seen:
            raise InputError(f"prompts: prompt_id {p['prompt_id']!r} appears more than once")
        seen.add(p["prompt_id"])
        rows.append({"prompt_id": p["prompt_id"], "prompt": p["prompt"]})
    return rows


class Sampler:
    """Common interface: ``generate(prompts, n) -> rows of kind "samples"``."""

    settings: SamplerSettings
    tokenizer = None

    def max_positions(self) -> int | None:
        """Tokens (prompt + response) the model takes; None: unknown (nothing dropped)."""
        return max_positions(None, self.tokenizer)

    def generate(self, prompts: list[dict], n: int | None = None, *, source: str = "prompts") -> list[dict]:
        """``n`` samples (default ``settings.n``) of each prompt that fits the model (``source``: its name)."""
        settings = dataclasses.replace(self.settings, n=self.settings.n if n is None else n).validate()
        prompts = fit_prompts(check_prompts(prompts), self.tokenizer, self.max_positions(), settings.max_new_tokens,
                              source)
        start = time.perf_counter()
        rows = self._generate(prompts, settings)
        seconds = max(time.perf_counter() - start, 1e-9)
        tokens = sum(r["num_tokens"] for r in rows)
        log.info(
            "sampled %d rows (%d prompts x %d), %d tokens in %.1fs: %.1f rows/s, %.0f tokens/s [%s]",
            len(rows), len(prompts), settings.n, tokens, seconds,
            len(rows) / seconds, tokens / seconds, settings.backend,
        )
        return rows

    def _generate(self, prompts: list[dict], settings: SamplerSettings) -> list[dict]:
        raise NotImplementedError


def make_sampler(
    policy, settings: SamplerSettings, *, dtype: str = "auto", device=None, trust_remote_code: bool = False,
    allow_pickle_weights: bool = False,
) -> Sampler:
    """The sampler of ``settings.backend`` for the policy folder or hub id ``policy``.

    Raises:
        InputError: bad settings, a policy that cannot be loaded, or vllm not installed.
    """
    settings.validate()
    if settings.backend == "vllm":
        return VLLMSampler(policy, settings, dtype=dtype, trust_remote_code=trust_remote_code,
                           allow_pickle_weights=allow_pickle_weights)
    from linepo.stages.models import load_policy

    model, tokenizer = load_policy(policy, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                                   allow_pickle_weights=allow_pickle_weights)
    return TransformersSampler(model, tokenizer, settings)


# ----------------------------------------------------------------------------- transformers


class _GumbelSampler:
    """Logits processor that turns greedy decoding into per-row seeded sampling.

    argmax(scores + Gumbel noise) is an exact sample of softmax(scores); the noise of row
    r comes from its own generator, so it does not depend on the other rows of the batch.
    """

    def __init__(self, seeds: list[int], device):
        import torch

        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    def __call__(self, input_ids, scores):
        import torch

        vocab = scores.shape[-1]
        uniform = torch.stack([torch.rand(vocab, generator=g, device=scores.device) for g in self.generators])  # (B, V)
        gumbel = -torch.log(-torch.log(uniform.clamp_(min=1e-20, max=1 - 1e-7)))  # (B, V)
        return scores + gumbel  # -inf (filtered by top-p) stays -inf


class TransformersSampler(Sampler):
    """Batched ``model.generate`` on an in-memory model (e.g. the policy being trained)."""

    def __init__(self, model, tokenizer, settings: SamplerSettings = SamplerSettings()):
        from linepo.stages.models import stop_token_ids

        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings.validate()
        # EOS *and* the chat template's end of turn (Qwen2 ChatML ends a turn with <|im_end|>,
        # its tokenizer's EOS is <|endoftext|>): a response ends at whichever comes first.
        eos = stop_token_ids(tokenizer, model.generation_config)
        self.eos_token_ids = eos
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)

    def max_positions(self) -> int | None:
        return max_positions(getattr(self.model, "config", None), self.tokenizer)

    def generation_config(self, settings: SamplerSettings):
        """Greedy decoding over our processors; the model's own sampling defaults are overridden.

        A checkpoint's generation_config.json may set top_k, repetition_penalty, ...;
        samples must come from the policy itself (its log-probs are what the losses use),
        so only temperature and top-p shape the distribution.
        """
        from transformers import GenerationConfig

        return GenerationConfig(
            max_new_tokens=settings.max_new_tokens,
            do_sample=False,  # the sampling is _GumbelSampler's argmax
            num_beams=1,
            # The library's neutral values, set explicitly so that the checkpoint's own
            # values are not inherited (they would only trigger "flag ignored" warnings).
            temperature=1.0,
            top_p=1.0,
            top_k=50,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            eos_token_id=self.eos_token_ids or None,
            pad_token_id=self.pad_token_id,
            use_cache=True,
        )

    def _processors(self, seeds: list[int], settings: SamplerSettings, device):
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

        if settings.temperature == 0:  # greedy: every sample is the argmax
            return LogitsProcessorList()
        processors = [TemperatureLogitsWarper(settings.temperature)]
        if settings.top_p < 1:
            processors.append(TopPLogitsWarper(settings.top_p))
        processors.append(_GumbelSampler(seeds, device))
        return LogitsProcessorList(processors)

    def _generate(self, prompts: list[dict], settings: SamplerSettings) -> list[dict]:
        import torch
        from tqdm.auto import tqdm

        from linepo.stages.models import encode_prompt

        encoded = [encode_prompt(self.tokenizer, p["prompt"]) for p in prompts]
        # One item per output row; longest prompts first so batches share similar lengths
        # (and a batch that does not fit in memory fails at once, not at the end).
        items = [(i, k) for i in range(len(prompts)) for k in range(settings.n)]
        items.sort(key=lambda item: -len(encoded[item[0]]))
        config = self.generation_config(settings)
        device = next(self.model.parameters()).device
        settings_json = settings.to_json()
        results: dict[tuple[int, int], dict] = {}
        was_training = self.model.training
        self.model.eval()  # no dropout while sampling a policy that is being trained
        with tqdm(total=len(items), desc="sampling", unit="row", disable=None) as bar:
            for start in range(0, len(items), settings.batch_size):
                batch_items = items[start : start + settings.batch_size]
                batch = self.tokenizer.pad(
                    {"input_ids": [encoded[i] for i, _ in batch_items]},
                    padding=True,
                    return_tensors="pt",
                    padding_side="left",
                )
                input_ids = batch["input_ids"].to(device)  # (B, T)
                seeds = [row_seed(settings.seed, prompts[i]["prompt_id"], k) for i, k in batch_items]
                with torch.inference_mode():
                    out = self.model.generate(
                        input_ids=input_ids,
                        attention_mask=batch["attention_mask"].to(device),
                        generation_config=config,
                        logits_processor=self._processors(seeds, settings, device),
                    )  # (B, T + new)
                generated = out[:, input_ids.shape[1] :].cpu()  # (B, new)
                for (i, k), tokens in zip(batch_items, generated.tolist()):
                    results[i, k] = self._row(prompts[i], k, tokens, settings_json)
                bar.update(len(batch_items))
        self.model.train(was_training)
        return [results[i, k] for i in range(len(prompts)) for k in range(settings.n)]

    def _row(self, prompt: dict, sample_index: int, tokens: list[int], settings_json: str) -> dict:
        # Cut at the first stop token (kept, counted and recorded: scoring appends exactly it);
        # what follows it is padding.
        stop = next((j for j, t in enumerate(tokens) if t in self.eos_token_ids), None)
        stop_token = None
        if stop is not None:
            tokens, finish, stop_token = tokens[: stop + 1], "stop", tokens[stop]
        else:
            finish = "length"
        response_ids = tokens[:-1] if stop_token is not None else tokens
        return {
            "prompt_id": prompt["prompt_id"],
            "prompt": prompt["prompt"],
            "sample_index": sample_index,
            "response": self.tokenizer.decode(tokens, skip_special_tokens=True),
            "response_token_ids": response_ids,
            "num_tokens": len(tokens),
            "finish_reason": finish,
            "stop_token_id": stop_token,
            "sampler_settings": settings_json,
        }


# ----------------------------------------------------------------------------- vllm


class VLLMSampler(Sampler):
    """vLLM's continuous batching, for GPUs; one seed per prompt, derived as for transformers.

    Samples differ from the transformers backend's for the same seed (another RNG), but
    follow the same distribution.
    """

    def __init__(self, policy, settings: SamplerSettings, *, dtype: str = "auto", trust_remote_code: bool = False,
                 allow_pickle_weights: bool = False):
        try:
            import vllm
        except ImportError as err:
            raise InputError(
                "--backend: backend vllm needs the optional extra linepo[vllm] (pip install 'linepo[vllm]')"
            ) from err
        from linepo.stages.models import check_weights_format, resolve_policy

        self.vllm = vllm
        self.settings = settings.validate()
        source = resolve_policy(policy)
        check_weights_format(policy, allow_pickle_weights)
        check_policy_folder(policy)  # its files as save_policy wrote them
        self.llm = vllm.LLM(
            model=source,
            tokenizer=source,
            dtype=dtype,
            seed=settings.seed,
            tensor_parallel_size=settings.tensor_parallel_size,
            trust_remote_code=trust_remote_code,
            load_format="auto" if allow_pickle_weights else "safetensors",  # vLLM's own pickle fallback off
        )
        self.tokenizer = self.llm.get_tokenizer()
        from linepo.stages.models import stop_token_ids

        generation_config = None
        try:
            from transformers import GenerationConfig

            generation_config = GenerationConfig.from_pretrained(source)
        except (OSError, ValueError):  # no generation_config.json: the tokenizer's EOS and the template's
            pass
        self.stop_ids = stop_token_ids(self.tokenizer, generation_config)

    def max_positions(self) -> int | None:
        """vLLM's own limit (``max_model_len``: the config's positions unless set lower)."""
        engine = getattr(self.llm, "llm_engine", None)
        length = getattr(getattr(engine, "model_config", None), "max_model_len", None)
        return length if isinstance(length, int) and length > 0 else max_positions(None, self.tokenizer)

    def sampling_params(self, settings: SamplerSettings, prompt_id: str):
        return self.vllm.SamplingParams(
            n=settings.n,
            temperature=settings.temperature,
            top_p=settings.top_p,
            max_tokens=settings.max_new_tokens,
            seed=row_seed(settings.seed, prompt_id),
            stop_token_ids=list(self.stop_ids),  # the chat template's end of turn as well as EOS
        )

    def _stop_token(self, completion) -> int | None:
        """The stop token a finished completion emitted (vLLM keeps it as the last token id)."""
        if completion.finish_reason != "stop":
            return None
        if isinstance(getattr(completion, "stop_reason", None), int):
            return int(completion.stop_reason)
        ids = list(completion.token_ids)
        return int(ids[-1]) if ids and ids[-1] in self.stop_ids else None

    def _generate(self, prompts: list[dict], settings: SamplerSettings) -> list[dict]:
        from linepo.stages.models import encode_prompt

        # Token ids, not text: vLLM would add BOS again to a chat-templated string.
        inputs = [{"prompt_token_ids": encode_prompt(self.tokenizer, p["prompt"])} for p in prompts]
        params = [self.sampling_params(settings, p["prompt_id"]) for p in prompts]
        outputs = self.llm.generate(inputs, params, use_tqdm=True)
        settings_json = settings.to_json()
        rows = []
        for prompt, output in zip(prompts, outputs):
            for k, completion in enumerate(output.outputs):
                stop_token = self._stop_token(completion)
                ids = [int(t) for t in completion.token_ids]
                if stop_token is not None and ids and ids[-1] == stop_token:
                    ids = ids[:-1]  # the stop token has its own column
                rows.append(
                    {
                        "prompt_id": prompt["prompt_id"],
                        "prompt": prompt["prompt"],
                        "sample_index": k,
                        "response": completion.text,
                        "response_token_ids": ids,
                        "num_tokens": len(completion.token_ids),
                        # a stop we cannot name is scored as a cut response: no stop token term
                        "finish_reason": "stop" if stop_token is not None else "length",
                        "stop_token_id": stop_token,
                        "sampler_settings": settings_json,
                    }
                )
        return rows

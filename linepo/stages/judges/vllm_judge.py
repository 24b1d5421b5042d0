"""The vLLM backend of the pairwise LM judge (``backend: vllm``, optional extra ``linepo[vllm]``).

The judge builds its token ids exactly as the transformers backend does (same chat
template, forced answer, truncation and failures: :class:`~.pairwise.PairwiseLMJudge`);
only the next-token log-probs at the answer come from a vLLM engine with automatic prefix
caching, so the chat head, judging rules, instruction and each first response that a
prompt's n(n − 1) sequences share are computed once (blocks of the cache) rather than per
sequence.

Reading p(a) and p(b): vLLM returns the top-K log-probs of a generated token, not those of
tokens one names, and restricting the vocabulary (``allowed_token_ids``) would renormalise
over the two choices and hide p(a) + p(b), which ``min_answer_mass`` needs. So each
sequence runs once with ``max_tokens=1, logprobs=K`` (K = 20, vLLM's default
``max_logprobs``): a choice in the top K has its exact log-prob (log-softmax over the whole
vocabulary). A choice outside it — rare for a judge that answers "a" or "b" — is scored
exactly afterwards by ``prompt_logprobs=0`` on the sequence extended with that choice token,
the log-prob of the appended token. That second form is not the main path because vLLM
skips reading the prefix cache for requests with prompt log-probs (``SamplingParams.
skip_reading_prefix_cache``): it would compute every sequence whole.

``backend`` stays in the judge config, hence in node ids: another kernel gives other float
roundings (bf16 especially), so it is part of what is computed, unlike ``share_prefixes``.
"""

from __future__ import annotations

import numpy as np

from linepo.errors import InputError
from linepo.stages.judges.hf import check_judge_weights, judge_error, load_error
from linepo.stages.judges.pairwise import PairwiseLMJudge, PairwiseLMSettings

#: top log-probs asked per sequence: vLLM's default ``max_logprobs`` (more needs an engine option)
TOP_LOGPROBS = 20


def _import_vllm(source: str):
    try:
        import vllm
    except ImportError as err:
        raise judge_error(source, "backend", "backend vllm needs the optional extra linepo[vllm] "
                                             "(pip install 'linepo[vllm]')") from err
    return vllm


class VLLMPairwiseJudge(PairwiseLMJudge):
    """:class:`~.pairwise.PairwiseLMJudge` whose choice log-probs come from ``vllm.LLM`` (module docstring)."""

    backend = "vllm"
    top_logprobs = TOP_LOGPROBS

    def _setup_model(self, model, device, share_prefixes: bool) -> None:
        # ``model`` is the engine: it batches and shares prefixes itself (share_prefixes and
        # batch_size are the transformers backend's).
        self.llm, self.device, self._prefixes = model, device, None
        self.fallbacks = 0  # choice log-probs read by prompt_logprobs (outside the top K), over its lifetime

    @classmethod
    def _load(cls, s: PairwiseLMSettings, source: str, model: str) -> tuple:
        vllm = _import_vllm(source)
        if s.device is not None:
            raise judge_error(source, "device", "backend vllm places the model itself (on CUDA_VISIBLE_DEVICES); "
                                                "remove the key")
        check_judge_weights(source, model, s.allow_pickle_weights)
        from transformers import AutoTokenizer

        from linepo.provenance import check_policy_folder
        from linepo.stages.models import load_errors

        try:  # the transformers backend's tokenizer, loaded as it loads it: the same token ids
            tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=s.trust_remote_code)
        except load_errors() as err:
            raise load_error(source, model, err, s.allow_pickle_weights) from err
        check_policy_folder(model)
        try:
            llm = vllm.LLM(
                model=model, tokenizer=model,
                enable_prefix_caching=True,  # the shared heads, instructions and first responses: once
                dtype="bfloat16" if s.dtype == "auto" else s.dtype,  # "auto" is bf16 on a GPU, as for transformers
                seed=0,  # one greedy token: nothing is sampled
                tensor_parallel_size=1,  # one GPU per engine; judge.data_parallel runs one engine per GPU
                trust_remote_code=s.trust_remote_code,
                load_format="auto" if s.allow_pickle_weights else "safetensors",  # vLLM's own pickle fallback off
            )
        except (OSError, ValueError) as err:
            raise InputError(f"{source} key model: {model}: vLLM cannot load it ({err})") from err
        return llm, tokenizer, None

    def _choice_logprobs(self, sequences: list[list[int]], keys: list[tuple] | None) -> np.ndarray:
        """log p of the two choice tokens after each sequence, ``(len(sequences), 2)`` float64, in order."""
        vllm = self._vllm()
        # Sorted by token ids: sequences that share a prefix are submitted together, while its blocks are cached.
        order = sorted(range(len(sequences)), key=sequences.__getitem__)
        params = vllm.SamplingParams(max_tokens=1, temperature=0.0, logprobs=self.top_logprobs, detokenize=False)
        # {"prompt_token_ids": ids} is vllm.inputs.TokensPrompt (a TypedDict): token ids, never re-tokenized text.
        outputs = self.llm.generate([{"prompt_token_ids": sequences[i]} for i in order], params, use_tqdm=False)
        logp = np.full((len(sequences), 2), np.nan)
        missing = []
        for i, output in zip(order, outputs):
            top = output.outputs[0].logprobs[0]  # {token id: Logprob} at the answer position
            for c, token in enumerate(self.choice_ids):
                if token in top:
                    logp[i, c] = top[token].logprob
                else:
                    missing.append((i, c))
        if missing:
            self.fallbacks += len(missing)
            exact = vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
            prompts = [{"prompt_token_ids": sequences[i] + [self.choice_ids[c]]} for i, c in missing]
            for (i, c), output in zip(missing, self.llm.generate(prompts, exact, use_tqdm=False)):
                logp[i, c] = output.prompt_logprobs[-1][self.choice_ids[c]].logprob  # the appended token's
        return logp

    def _vllm(self):
        import vllm

        return vllm

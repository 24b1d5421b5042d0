"""A generative pairwise judge in the format of Llama-3-OffsetBias-8B, the paper's oracle."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from linepo.settings import setting
from linepo.stages.judges.base import Judge, read_settings
from linepo.stages.judges.hf import (ChatRenderer, LMJudgeSettings, batches, device_and_dtype, judge_error,
                                     load_causal_lm, model_source, pad_id, require_chat_template, template_sha256,
                                     water_fill)
from linepo.stages.judges.offsetbias import OFFSETBIAS_ANSWER_PREFIX, OFFSETBIAS_CHOICES, OFFSETBIAS_USER_TEMPLATE
from linepo.stages.judges.prefix import PrefixRunner, cache_argument
from linepo.stages.text import encode_rendered, encode_text, marker, spells_a_special_token

#: how a pairwise judge runs its sequences (``vllm``: :mod:`linepo.stages.judges.vllm_judge`)
BACKENDS = ("transformers", "vllm")


@dataclass(frozen=True)
class PairwiseLMSettings(LMJudgeSettings):
    """The keys of a ``type: pairwise_lm`` judge config."""

    min_answer_mass: float = setting(1e-3, "a comparison fails when p(a) + p(b) at the answer is below this",
                                     low=0.0, high=1.0)
    user_template: str = setting(OFFSETBIAS_USER_TEMPLATE, "the user message, with {input}, {output_1} and {output_2}")
    system_prompt: str | None = setting(None, "a system message before it (none by default)")
    answer_prefix: str = setting(OFFSETBIAS_ANSWER_PREFIX, "the forced start of the judge's answer")
    choices: list = setting(list(OFFSETBIAS_CHOICES), "the two answers, for Output (a) and Output (b)")
    share_prefixes: bool = setting(True, "run a prompt's shared head + instruction, and each first response, once "
                                   "(KV cache; same probabilities to float rounding); false, or a model without "
                                   "DynamicCache support: every sequence whole")
    backend: str = setting("transformers", "transformers (this process's forwards) or vllm (a vLLM engine with "
                           "prefix caching; probabilities to kernel rounding; GPU only)", choices=BACKENDS)


class PairwiseLMJudge(Judge):
    """A generative pairwise judge (Llama-3-OffsetBias-8B format) read from next-token probabilities.

    For a comparison (x, y) the judge sees the instruction, Output (a) = x, Output (b) = y,
    then the forced answer prefix "Output (", and p_xy = p("a") / (p("a") + p("b")) at that
    position. Both orders are judged and averaged to cancel position bias:

        P(x ≻ y) = ½ (p_xy + 1 − p_yx),

    computed for the canonical order (the smaller text first) and returned as 1 − P for the
    reversed one, so P(a ≻ b) + P(b ≻ a) = 1 exactly. Identical responses get 0.5 without a
    forward pass. A comparison fails (counted, nan) when, in either order, p("a") + p("b")
    is below ``min_answer_mass`` or not finite, or the prompt cannot be cut to
    ``max_length``. Over-long prompts are cut in the responses (longest first), then in the
    instruction, never in the question format.
    """

    name = "pairwise_lm"
    runs_model = True
    backend = "transformers"

    def __init__(
        self,
        model,
        tokenizer,
        *,
        batch_size: int = 8,
        max_length: int = 4096,
        min_answer_mass: float = 1e-3,
        user_template: str = OFFSETBIAS_USER_TEMPLATE,
        system_prompt: str | None = None,
        answer_prefix: str = OFFSETBIAS_ANSWER_PREFIX,
        choices=OFFSETBIAS_CHOICES,
        use_chat_template: bool = True,
        device=None,
        share_prefixes: bool = True,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_length, self.min_answer_mass = batch_size, max_length, min_answer_mass
        self.user_template = user_template
        self.answer_prefix = answer_prefix
        self.chunk_size = max(256, 32 * batch_size)
        self.renderer = ChatRenderer(tokenizer, system_prompt, use_chat_template)
        self.pad_id = pad_id(tokenizer)
        ids_a = tokenizer.encode(answer_prefix + choices[0], add_special_tokens=False)
        ids_b = tokenizer.encode(answer_prefix + choices[1], add_special_tokens=False)
        common = 0
        while common < min(len(ids_a), len(ids_b)) and ids_a[common] == ids_b[common]:
            common += 1
        if common == len(ids_a) or common == len(ids_b):
            raise ValueError(f"choices {choices!r} do not start with different tokens after {answer_prefix!r}")
        # Tokens the judge would itself generate before the choice ("Output", " ("), then the
        # first token where the two answers differ.
        self.forced_ids = ids_a[:common]
        self.choice_ids = (ids_a[common], ids_b[common])
        self._setup_model(model, device, share_prefixes)
        self.tokens_run = 0  # token positions the unshared path ran (padding included), over its lifetime
        self.overhead = len(self._encode_texts([self._conversation("", "", "")])[0]) + len(self.forced_ids)
        self._head = self._tokenized_head()
        self.failures = 0  # comparisons failed over this judge's lifetime
        self._low_masses: list[float] = []  # answer masses below min_answer_mass, over its lifetime
        self._too_long = 0
        self._masses = np.zeros(0)

    def _setup_model(self, model, device, share_prefixes: bool) -> None:
        """What the forwards need to know of the model (the vLLM backend has none of it)."""
        import inspect

        self.device = device if device is not None else next(model.parameters()).device
        parameters = inspect.signature(model.forward).parameters
        self._keep_last = "logits_to_keep" in parameters
        self._positions = "position_ids" in parameters
        self._prefixes = None  # runs prefix-shared forwards (linepo.stages.judges.prefix), when the model can
        cache_name = cache_argument(model) if share_prefixes else None
        if cache_name is not None:
            self._prefixes = PrefixRunner(model, cache_name, self.batch_size, self.pad_id, self.device,
                                          self._keep_last)

    @classmethod
    def _load(cls, s: PairwiseLMSettings, source: str, model: str) -> tuple:
        """``(model, tokenizer, device)`` of a checked config."""
        device, dtype = device_and_dtype(s, source)
        lm, tokenizer = load_causal_lm(source, model, s.trust_remote_code, device, dtype, s.allow_pickle_weights)
        return lm, tokenizer, device

    @classmethod
    def from_config(cls, config: dict, source: str) -> PairwiseLMJudge:
        s = read_settings(PairwiseLMSettings, config, source)
        if s.backend != cls.backend:  # make_judge picks the class of the backend
            raise judge_error(source, "backend", f"{cls.__name__} runs backend {cls.backend}, not {s.backend}")
        model = model_source(s, source)
        template = s.user_template
        try:
            template.format(input="", output_1="", output_2="")
        except (KeyError, IndexError, ValueError) as err:
            raise judge_error(source, "user_template",
                              f"needs exactly the fields {{input}}, {{output_1}}, {{output_2}} ({err})") from err
        if any(f"{{{f}}}" not in template for f in ("input", "output_1", "output_2")):
            raise judge_error(source, "user_template", "must contain {input}, {output_1} and {output_2}")
        choices = s.choices
        if len(choices) != 2 or not all(isinstance(c, str) and c for c in choices) or choices[0] == choices[1]:
            raise judge_error(source, "choices", f"must be two different non-empty strings, got {choices!r}")
        lm, tokenizer, device = cls._load(s, source, model)
        require_chat_template(tokenizer, s, source, model)
        try:
            judge = cls(lm, tokenizer, batch_size=s.batch_size, max_length=s.max_length,
                        min_answer_mass=s.min_answer_mass, user_template=template, system_prompt=s.system_prompt,
                        answer_prefix=s.answer_prefix, choices=tuple(choices), use_chat_template=s.use_chat_template,
                        device=device, share_prefixes=s.share_prefixes)
        except ValueError as err:
            raise judge_error(source, "choices", str(err)) from err
        if judge.overhead + 16 > s.max_length:
            raise judge_error(source, "max_length", f"{s.max_length} leaves no room: the question format alone "
                                                    f"takes {judge.overhead} tokens")
        return judge

    # -- text

    def _conversation(self, instruction: str, first: str, second: str) -> str:
        return self.renderer(self.user_template.format(input=instruction, output_1=first, output_2=second))

    def describe(self) -> dict:
        """What the judgments file records of this judge beyond its config: the chat template used, the backend."""
        return {"backend": self.backend,
                "chat_template_sha256": template_sha256(self.tokenizer) if self.renderer.templated else None}

    def format_prompt(self, instruction: str, first: str, second: str) -> str:
        """The exact text the judge reads for Output (a) = first, Output (b) = second."""
        return self._conversation(instruction, first, second) + self.tokenizer.decode(self.forced_ids)

    def _encode_texts(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=self.renderer.add_special_tokens)["input_ids"]

    # The fixed text before the instruction (chat header and judging rules, ~300 tokens for
    # OffsetBias) is most of every prompt; it is tokenized once and only the rest per prompt.
    # That is exact when no token spans the cut, which holds for regex pre-tokenizers when
    # the instruction starts with a letter or digit after the head's final newline; probes
    # check this tokenizer, and other instructions are tokenized whole.
    _HEAD_PROBES = ("Hello world", "What is 2+2?", "x", "\u00dcber alles", "123 go", "Q?\n# Output (a):\nA\n")

    def _tokenized_head(self) -> tuple[str, list[int]] | None:
        marker = "\ue000linepo-instruction\ue000"
        template = self.user_template
        if self.renderer.parts is None or template.count("{input}") != 1 or not (
                template.index("{input}") < min(template.index("{output_1}"), template.index("{output_2}"))):
            return None
        rendered = self._conversation(marker, "", "")
        if rendered.count(marker) != 1:
            return None
        head = rendered.split(marker)[0]
        head_ids = self._encode_texts([head])[0]
        for probe in self._HEAD_PROBES:
            whole = self._encode_texts([head + probe])[0]
            tail = self.tokenizer(probe, add_special_tokens=False)["input_ids"]
            if whole != head_ids + tail:
                return None
        return head, head_ids

    def _encode_conversations(self, triples: list[tuple[str, str, str]]) -> list[list[int]]:
        """Token ids of each (instruction, first, second) conversation, without the forced answer.

        The instruction and the responses are encoded as text: a response spelling
        ``<|eot_id|><|start_header_id|>assistant<|end_header_id|>`` cannot end the judge's
        user turn and answer for it (:mod:`linepo.stages.text`).
        """
        encoded: list[list[int]] = [[] for _ in triples]
        spelled = [i for i, t in enumerate(triples) if any(spells_a_special_token(self.tokenizer, x) for x in t)]
        for i in spelled:
            encoded[i] = self._encode_as_text(*triples[i])
        plain = [i for i in range(len(triples)) if i not in set(spelled)]
        texts = {i: self._conversation(*triples[i]) for i in plain}
        if self._head is None:
            cached, whole = [], plain
        else:
            head, head_ids = self._head
            cached = [i for i in plain if triples[i][0][:1].isalnum()]
            whole = [i for i in plain if not triples[i][0][:1].isalnum()]
        if cached:
            tails = self.tokenizer([texts[i][len(head):] for i in cached], add_special_tokens=False)["input_ids"]
            for i, ids in zip(cached, tails):
                encoded[i] = head_ids + ids
        if whole:
            for i, ids in zip(whole, self._encode_texts([texts[i] for i in whole])):
                encoded[i] = ids
        return encoded

    def _encode_as_text(self, instruction: str, first: str, second: str) -> list[int]:
        """One conversation with its three texts encoded as text, the template around them as tokens."""
        user = self.user_template.format(input=marker(0), output_1=marker(1), output_2=marker(2))
        return encode_rendered(self.tokenizer, self.renderer(user), [instruction, first, second],
                               add_special_tokens=self.renderer.add_special_tokens)

    def _truncated(self, instruction: str, first: str, second: str) -> list[int] | None:
        """Token ids of the prompt cut to ``max_length`` in its texts, or None if it cannot be."""
        pieces = [encode_text(self.tokenizer, t) for t in (instruction, first, second)]
        budget = self.max_length - self.overhead - 4  # slack: tokens may merge across the cuts
        for _ in range(4):
            floor = min(64, max(budget, 0) // 4)
            response_room = min(len(pieces[1]), floor) + min(len(pieces[2]), floor)
            instruction_cap = min(len(pieces[0]), max(budget - response_room, 0))
            caps = [instruction_cap] + water_fill([len(pieces[1]), len(pieces[2])], budget - instruction_cap)
            texts = [self.tokenizer.decode(p[:c]) if c < len(p) else t
                     for p, c, t in zip(pieces, caps, (instruction, first, second))]
            ids = self._encode_conversations([tuple(texts)])[0] + self.forced_ids
            if len(ids) <= self.max_length:
                return ids
            budget -= len(ids) - self.max_length
        return None

    def _sequences(self, triples: list[tuple[str, str, str]]) -> list[list[int] | None]:
        """The token ids judged for each (instruction, first, second), cut to fit; None: cannot be."""
        sequences = []
        for triple, ids in zip(triples, self._encode_conversations(triples)):
            ids = ids + self.forced_ids
            sequences.append(ids if len(ids) <= self.max_length else self._truncated(*triple))
        return sequences

    # -- model

    @property
    def tokens_computed(self) -> int:
        """Token positions run through the model so far (padding included), both paths."""
        return self.tokens_run + (self._prefixes.tokens if self._prefixes is not None else 0)

    def _first_choice_probs(self, sequences: list[list[int] | None],
                            keys: list[tuple] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """p(first choice) / mass of the two choices, and whether each sequence failed.

        ``keys[i]``: (instruction, first response) of sequence i, the groups whose token
        prefixes the prefix-shared path looks for; without them every sequence runs whole.
        """
        n = len(sequences)
        p_first = np.full(n, np.nan)
        failed = np.ones(n, dtype=bool)
        self._masses = np.full(n, np.nan)  # p(a) + p(b) at the answer, for failure reasons
        rows = [i for i, s in enumerate(sequences) if s is not None]
        if not rows:
            return p_first, failed
        logp = self._choice_logprobs([sequences[i] for i in rows], None if keys is None else [keys[i] for i in rows])
        mass = np.exp(logp).sum(axis=1)
        with np.errstate(over="ignore", invalid="ignore"):
            p = 1.0 / (1.0 + np.exp(logp[:, 1] - logp[:, 0]))
        p_first[rows] = p
        self._masses[rows] = mass
        failed[rows] = ~(np.isfinite(mass) & (mass >= self.min_answer_mass) & np.isfinite(p))
        return p_first, failed

    def _choice_logprobs(self, sequences: list[list[int]], keys: list[tuple] | None) -> np.ndarray:
        """log p of the two choice tokens after each sequence, ``(len(sequences), 2)`` float64, in order."""
        import torch

        choice = torch.tensor(self.choice_ids, device=self.device)
        with torch.inference_mode():
            if self._prefixes is not None and keys is not None:
                return self._prefixes.choice_logprobs(sequences, keys, choice).cpu().numpy()
            # Stay on the device: one copy to the host at the end, not a sync per batch.
            out = torch.empty((len(sequences), 2), dtype=torch.float64, device=self.device)
            for indices, ids, mask, positions in batches(sequences, self.batch_size, self.pad_id, self.device):
                self.tokens_run += ids.numel()
                kwargs = {"input_ids": ids, "attention_mask": mask}
                if self._positions:
                    kwargs["position_ids"] = positions
                if self._keep_last:
                    kwargs["logits_to_keep"] = 1  # the answer position only: no full-vocab logits elsewhere
                logits = self.model(**kwargs).logits[:, -1, :].float()
                out[indices] = torch.log_softmax(logits, dim=-1).index_select(1, choice).double()
            return out.cpu().numpy()

    def _reason(self, sequence_index: int, sequences) -> str:
        """Why one judged sequence failed, in words a user can act on."""
        if sequences[sequence_index] is None:
            return f"too long: does not fit judge.max_length {self.max_length} even cut"
        mass = self._masses[sequence_index]
        if not np.isfinite(mass):
            return "non-finite logits at the answer"
        return f"p(a)+p(b) = {mass:.3g} < judge.min_answer_mass {self.min_answer_mass:g}"

    def failure_summary(self) -> str:
        """Why this judge's comparisons failed so far: the mean answer mass of those below the
        threshold (a judge that does not answer "a" or "b" there: a wrong model, template or
        answer prefix), and how many were too long."""
        parts = []
        if self._low_masses:
            parts.append(f"mean p(a)+p(b) = {np.mean(self._low_masses):.2g} < judge.min_answer_mass = "
                         f"{self.min_answer_mass:g} on {len(self._low_masses)} judged sequences")
        if self._too_long:
            parts.append(f"{self._too_long} sequences do not fit judge.max_length {self.max_length}")
        return "; ".join(parts) or "non-finite logits at the answer"

    def reset_failures(self) -> None:
        self.failures, self._low_masses, self._too_long = 0, [], 0

    def _probabilities(self, prompts, responses_a, responses_b):
        n = len(prompts)
        prob = np.full(n, np.nan)
        failed = np.zeros(n, dtype=bool)
        swapped = np.zeros(n, dtype=bool)
        keys: dict[tuple[str, str, str], int] = {}  # (instruction, first, second) -> sequence index
        pair_of = {}
        for i, (prompt, a, b) in enumerate(zip(prompts, responses_a, responses_b)):
            if a == b:
                prob[i] = 0.5
                continue
            swapped[i] = a > b
            x, y = (b, a) if swapped[i] else (a, b)
            pair_of[i] = (keys.setdefault((prompt, x, y), len(keys)), keys.setdefault((prompt, y, x), len(keys)))
        triples = list(keys)
        sequences = self._sequences(triples)
        p_first, seq_failed = self._first_choice_probs(sequences, [t[:2] for t in triples])
        reasons: list = [None] * n
        for k in np.flatnonzero(seq_failed):
            if sequences[k] is None:
                self._too_long += 1
            elif np.isfinite(self._masses[k]):
                self._low_masses.append(float(self._masses[k]))
        for i, (xy, yx) in pair_of.items():
            if seq_failed[xy] or seq_failed[yx]:
                failed[i] = True
                reasons[i] = self._reason(xy if seq_failed[xy] else yx, sequences)
                continue
            p = 0.5 * (p_first[xy] + (1.0 - p_first[yx]))
            prob[i] = 1.0 - p if swapped[i] else p
        self.failures += int(failed.sum())
        self.last_reasons = reasons
        return prob, failed



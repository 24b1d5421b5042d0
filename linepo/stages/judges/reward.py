"""A Bradley–Terry reward model as a judge: P(a ≻ b) = σ(r(a) − r(b))."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from linepo.settings import setting
from linepo.stages.judges.base import Judge, read_settings
from linepo.stages.judges.hf import (LMJudgeSettings, batches, check_judge_weights, device_and_dtype, judge_error,
                                     load_error, model_source, pad_id, require_chat_template, template_sha256)
from linepo.stages.text import encode_rendered, marker


@dataclass(frozen=True)
class RewardModelSettings(LMJudgeSettings):
    """The keys of a ``type: reward_model`` judge config."""

    max_length: int = setting(4096, "tokens per (prompt, response); longer ones lose their end", low=2)


class RewardModelJudge(Judge):
    """A Bradley–Terry reward model: P(a ≻ b) = σ(r(prompt, a) − r(prompt, b)).

    ``r`` is the single logit of an ``AutoModelForSequenceClassification`` (num_labels = 1)
    at the last token of the chat-rendered (user prompt, assistant response), or of
    ``prompt + "\\n\\n" + response`` when the tokenizer has no chat template. Each distinct
    (prompt, response) is scored once per call, so a tournament costs n forwards per prompt,
    not n(n − 1). Texts over ``max_length`` tokens are cut at the end (the response's tail).
    A non-finite reward fails its comparisons.
    """

    name = "reward_model"
    runs_model = True

    def __init__(self, model, tokenizer, *, batch_size: int = 8, max_length: int = 4096,
                 use_chat_template: bool = True, device=None):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_length = batch_size, max_length
        self.device = device if device is not None else next(model.parameters()).device
        self.chunk_size = max(256, 32 * batch_size)
        self.templated = bool(use_chat_template and getattr(tokenizer, "chat_template", None))
        self.pad_id = pad_id(tokenizer)
        self.failures = 0

    @classmethod
    def from_config(cls, config: dict, source: str) -> RewardModelJudge:
        s = read_settings(RewardModelSettings, config, source)
        model = model_source(s, source)
        device, dtype = device_and_dtype(s, source)
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from linepo.stages.models import load_errors, weight_format_kwargs

        check_judge_weights(source, model, s.allow_pickle_weights)
        try:
            tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=s.trust_remote_code)
            rm = AutoModelForSequenceClassification.from_pretrained(
                model, trust_remote_code=s.trust_remote_code, dtype=getattr(torch, dtype),
                **weight_format_kwargs(s.allow_pickle_weights)
            )
        except (*load_errors(), KeyError) as err:
            raise load_error(source, model, err, s.allow_pickle_weights) from err
        if rm.config.num_labels != 1:
            raise judge_error(source, "model", f"{model}: a reward model needs num_labels = 1, not {rm.config.num_labels}")
        require_chat_template(tokenizer, s, source, model)
        rm.to(device).eval()
        return cls(rm, tokenizer, batch_size=s.batch_size, max_length=s.max_length,
                   use_chat_template=s.use_chat_template, device=device)

    def failure_summary(self) -> str:
        return "the reward model gave a non-finite reward"

    def reset_failures(self) -> None:
        self.failures = 0

    def describe(self) -> dict:
        """What the judgments file records of this judge beyond its config: the chat template used."""
        return {"chat_template_sha256": template_sha256(self.tokenizer) if self.templated else None}

    def format_text(self, prompt: str, response: str) -> str:
        """The exact text the reward model scores."""
        if not self.templated:
            return f"{prompt}\n\n{response}"
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False)

    def encode(self, prompt: str, response: str) -> list[int]:
        """The token ids the reward model scores: prompt and response as text, cut to max_length."""
        if self.templated:
            messages = [{"role": "user", "content": marker(0)}, {"role": "assistant", "content": marker(1)}]
            rendered = self.tokenizer.apply_chat_template(messages, tokenize=False)
            if rendered.replace(marker(0), prompt).replace(marker(1), response) != self.format_text(prompt, response):
                prompt, response = prompt.strip(), response.strip()  # a template that trims its contents
        else:
            rendered = f"{marker(0)}\n\n{marker(1)}"
        ids = encode_rendered(self.tokenizer, rendered, [prompt, response], add_special_tokens=not self.templated)
        return ids[: self.max_length]

    def rewards(self, prompts, responses) -> np.ndarray:
        """The reward r(prompt, response) of each pair (float64; nan if not finite)."""
        import torch

        prompts, responses = list(prompts), list(responses)
        rewards = np.full(len(prompts), np.nan)
        if not prompts:  # nothing to score (e.g. every comparison of a batch had identical texts)
            return rewards
        encoded = [self.encode(p, r) for p, r in zip(prompts, responses)]
        # Pool at the last position ourselves when the model has the usual ``score`` head:
        # left padding puts every sequence's last token there, even if it equals the pad id.
        base = getattr(self.model, getattr(self.model, "base_model_prefix", ""), None)
        manual = base is not None and hasattr(self.model, "score")
        if not manual and self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.pad_id
        rows, results = [], []
        with torch.inference_mode():
            for indices, ids, mask, positions in batches(encoded, self.batch_size, self.pad_id, self.device):
                if manual:
                    hidden = base(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
                    logits = self.model.score(hidden[:, -1, :])
                else:
                    logits = self.model(input_ids=ids, attention_mask=mask).logits
                results.append(logits[:, 0].float())  # stays on the device until the end
                rows.extend(indices)
            rewards[rows] = torch.cat(results).double().cpu().numpy()
        rewards[~np.isfinite(rewards)] = np.nan
        return rewards

    def _probabilities(self, prompts, responses_a, responses_b):
        keys: dict[tuple[str, str], int] = {}
        ia = [keys.setdefault((p, a), len(keys)) for p, a in zip(prompts, responses_a)]
        ib = [keys.setdefault((p, b), len(keys)) for p, b in zip(prompts, responses_b)]
        unique = list(keys)
        rewards = self.rewards([p for p, _ in unique], [r for _, r in unique])
        diff = rewards[ia] - rewards[ib]
        failed = ~np.isfinite(diff)
        self.last_reasons = ["non-finite reward" if f else None for f in failed]
        with np.errstate(over="ignore"):
            prob = 1.0 / (1.0 + np.exp(-np.where(failed, 0.0, diff)))
        self.failures += int(failed.sum())
        return prob, failed



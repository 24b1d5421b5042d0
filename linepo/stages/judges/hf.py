"""What the language-model judges share: their common settings, loading, batching and chat rendering."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from linepo.errors import InputError
from linepo.settings import setting
from linepo.sources import DTYPES, resolve_model


@dataclass(frozen=True)
class LMJudgeSettings:
    """The keys every language-model judge config has."""

    model: str | None = setting(None, "the judge model: a local folder or a Hugging Face hub id")
    trust_remote_code: bool = setting(False, "run the checkpoint's own modelling code")
    allow_pickle_weights: bool = setting(False, "load pytorch_model.bin (pickle) weights when the model folder "
                                         "has no safetensors")
    dtype: str = setting("auto", "auto: bf16 on a GPU, fp32 on a CPU (bf16 is slow there)", choices=DTYPES)
    device: str | None = setting(None, "a torch device, e.g. cuda:1; default cuda when there is one")
    batch_size: int = setting(8, "sequences per forward pass", low=1)
    max_length: int = setting(4096, "tokens per judge input; longer inputs are cut in their texts", low=16)
    use_chat_template: bool = setting(True, "render the input with the tokenizer's chat template")


def judge_error(source: str, key: str, problem: str) -> InputError:
    return InputError(f"{source} key {key}: {problem}")


def model_source(settings: LMJudgeSettings, source: str) -> str:
    """The judge model's folder or hub id, checked before anything loads."""
    if not settings.model:
        raise judge_error(source, "model", "required: a local model folder or a Hugging Face model name")
    try:
        return resolve_model(settings.model, what="judge model")
    except InputError as err:
        raise judge_error(source, "model", str(err)) from None


def device_and_dtype(settings: LMJudgeSettings, source: str) -> tuple:
    """``(torch.device, dtype name)``; "auto" is bf16 on accelerators, fp32 on CPU (bf16 is slow there)."""
    import torch

    device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as err:
        raise judge_error(source, "device", f"not a torch device: {device!r}") from err
    name = settings.dtype
    if name == "auto":
        name = "float32" if device.type == "cpu" else "bfloat16"
    return device, name


def require_chat_template(tokenizer, settings: LMJudgeSettings, source: str, model: str) -> None:
    """An LM judge reads its input in its chat template: a folder without one (transformers 5
    keeps it in ``chat_template.jinja``, which copy scripts miss) is refused, not used in another format.

    Raises:
        InputError: ``use_chat_template`` is on and the tokenizer has no chat template.
    """
    if settings.use_chat_template and not getattr(tokenizer, "chat_template", None):
        raise judge_error(source, "model", f"{model}: the tokenizer has no chat template (a missing "
                          "chat_template.jinja?); set use_chat_template: false to judge in plain text")


def template_sha256(tokenizer) -> str | None:
    """sha256 of the tokenizer's chat template text (recorded with every judgment)."""
    import hashlib

    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return None
    return hashlib.sha256(str(template).encode()).hexdigest()


def load_error(source: str, model: str, err: Exception, allow_pickle_weights: bool = True) -> InputError:
    from linepo.stages.models import load_failure

    return judge_error(source, "model", str(load_failure(model, "judge model", err, allow_pickle_weights,
                                                          pickle_opt_in(source))))


def pickle_opt_in(source: str) -> str:
    """How a judge opts in to pickle weights, in the refusal's words."""
    return f"allow_pickle_weights: true in {source.removeprefix('config key ')}"


def check_judge_weights(source: str, model: str, allow_pickle_weights: bool) -> None:
    """A judge folder with only pickle weights is refused unless its config opts in."""
    from linepo.stages.models import check_weights_format

    try:
        check_weights_format(model, allow_pickle_weights, pickle_opt_in(source))
    except InputError as err:
        raise judge_error(source, "model", str(err)) from None


def load_causal_lm(source: str, model: str, trust_remote_code: bool, device, dtype: str,
                   allow_pickle_weights: bool = False):
    from linepo.stages.models import load_policy  # the one loader of causal LMs (left padding, pad token)

    check_judge_weights(source, model, allow_pickle_weights)
    try:
        return load_policy(model, trust_remote_code=trust_remote_code, dtype=dtype, device=device,
                           allow_pickle_weights=allow_pickle_weights)
    except InputError as err:
        raise judge_error(source, "model", str(err)) from err


def pad_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate if not isinstance(candidate, list) else candidate[0])
    return 0  # pragma: no cover


def batches(sequences: list[list[int]], batch_size: int, pad_id: int, device):
    """Left-padded batches, longest first (an out-of-memory shows at once), with positions.

    Yields ``(indices, input_ids, attention_mask, position_ids)``. Position ids count real
    tokens only, so a sequence gets the same positions whatever it is batched with.
    """
    import torch

    order = sorted(range(len(sequences)), key=lambda i: (-len(sequences[i]), i))
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size]
        width = len(sequences[indices[0]])
        ids = np.full((len(indices), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(indices), width), dtype=np.int64)
        for row, i in enumerate(indices):
            seq = sequences[i]
            ids[row, width - len(seq):] = seq
            mask[row, width - len(seq):] = 1
        positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
        yield (
            indices,
            torch.from_numpy(ids).to(device),
            torch.from_numpy(mask).to(device),
            torch.from_numpy(positions).to(device),
        )


def water_fill(lengths: list[int], budget: int) -> list[int]:
    """Caps ≤ lengths summing to ≤ budget, cutting the longest first (equal shares at the top)."""
    caps = list(lengths)
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    remaining = max(budget, 0)
    for rank, i in enumerate(order):
        share = remaining // (len(order) - rank)
        caps[i] = min(lengths[i], share)
        remaining -= caps[i]
    return caps


class ChatRenderer:
    """Renders one user message (and optional system prompt) through the chat template.

    The template is rendered once around a marker and then filled in by concatenation,
    which is much faster than Jinja per comparison; a probe checks this is exact for the
    tokenizer's template (messages with whitespace at an end, which a template may trim,
    are rendered through it), else every call renders through the template. Without a chat
    template the text is :data:`linepo.stages.models.PLAIN_TEMPLATE` (after the system prompt) and
    a space, so the forced answer reads "Assistant: Output (".
    """

    _MARKER = "\ue000linepo-user-message\ue000"

    def __init__(self, tokenizer, system_prompt: str | None, use_chat_template: bool):
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.templated = bool(use_chat_template and getattr(tokenizer, "chat_template", None))
        self.parts = None
        if self.templated:
            rendered = self._template(self._MARKER)
            if rendered.count(self._MARKER) == 1:
                self.parts = tuple(rendered.split(self._MARKER))
                # Inner whitespace and braces; none at the ends, which templates may trim
                # (Llama-3's does): such messages take the slow path in __call__.
                probe = "Probe: x\n\n  y {z}\n end"
                if self.parts[0] + probe + self.parts[1] != self._template(probe):
                    self.parts = None

    def _template(self, user: str) -> str:
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": user})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def __call__(self, user: str) -> str:
        if not self.templated:
            from linepo.stages.models import PLAIN_TEMPLATE  # the policies' own format for base models

            system = f"{self.system_prompt}\n\n" if self.system_prompt else ""
            return system + PLAIN_TEMPLATE.format(prompt=user) + " "
        if self.parts is not None and user == user.strip():
            return self.parts[0] + user + self.parts[1]
        return self._template(user)

    @property
    def add_special_tokens(self) -> bool:
        # A chat template writes BOS itself; plain text needs the tokenizer's.
        return not self.templated



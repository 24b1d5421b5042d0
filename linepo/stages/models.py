"""Load, save and prompt any Hugging Face causal LM: the one way policies enter and leave linepo.

    from linepo.stages.models import load_policy, save_policy, format_prompt
    model, tokenizer = load_policy("results/embedded/policy")        # a local folder
    model, tokenizer = load_policy("Qwen/Qwen2-1.5B-Instruct", dtype="bfloat16")  # a hub id
    save_policy(model, tokenizer, "results/linepo/round1/policy")

Tokenizers come back ready for batched generation: left padding and a pad token (the
EOS token when the tokenizer has none). Prompts go through the tokenizer's chat
template when it has one, else through :data:`PLAIN_TEMPLATE`; :func:`encode_prompt`
is what samplers and trainers use, so a prompt is tokenized the same way everywhere.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from linepo.errors import InputError
from linepo.numerics import output_history
from linepo.provenance import check_policy_folder, write_folder_provenance
from linepo.sources import DTYPES, resolve_model

#: Used for tokenizers without a chat template (base models).
PLAIN_TEMPLATE = "User: {prompt}\nAssistant:"


def resolve_policy(path_or_name) -> str:
    """The local folder or hub id of a policy, checked without loading (:func:`linepo.sources.resolve_model`).

    Raises:
        InputError: a missing path, a folder with no config.json, an uncached hub id offline.
    """
    return resolve_model(path_or_name, what="policy")


#: Weight files that are pickles (torch.load unpickles them; ``weights_only`` narrows the risk
#: but the promise is safetensors only). Trainer state files (optimizer.pt ...) are not weights.
PICKLE_GLOBS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")
_TRAINER_STATE = ("optimizer.pt", "scheduler.pt", "scaler.pt", "training_args.bin")
#: The opt-in named by the refusal of pickle weights (a judge names its own key).
POLICY_OPT_IN = "policy.allow_pickle_weights: true (flag --allow-pickle-weights)"


def pickle_weights(path_or_name) -> list[str]:
    """The pickle weight files of a local model folder that has no safetensors weights; [] when it
    has safetensors, no pickles, or is not a local folder (a hub id: transformers refuses it)."""
    folder = Path(str(path_or_name)).expanduser()
    if not folder.is_dir() or any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").exists():
        return []
    found = {p.name for pattern in PICKLE_GLOBS for p in folder.glob(pattern) if p.is_file()}
    return sorted(name for name in found if name not in _TRAINER_STATE and not name.startswith("rng_state"))


def pickle_refusal(path_or_name, files, opt_in: str = POLICY_OPT_IN) -> str:
    """The one line that refuses a folder with only pickle weights, saying how to convert or opt in."""
    shown = ", ".join(files[:2]) + (f" and {len(files) - 2} more" if len(files) > 2 else "")
    return (f"{path_or_name}: only pickle weights ({shown}); linepo loads safetensors only: convert them "
            f"(linepo import-policy --allow-pickle-weights --source {path_or_name} --out <folder>) or set {opt_in}")


def check_weights_format(path_or_name, allow_pickle_weights: bool, opt_in: str = POLICY_OPT_IN) -> None:
    """Refuse a local folder whose only weights are pickles unless ``allow_pickle_weights``.

    Raises:
        InputError: :func:`pickle_refusal`'s line.
    """
    files = [] if allow_pickle_weights else pickle_weights(path_or_name)
    if files:
        raise InputError(pickle_refusal(path_or_name, files, opt_in))


def weight_format_kwargs(allow_pickle_weights: bool) -> dict:
    """``from_pretrained`` keywords: safetensors only, unless pickles are allowed (then either)."""
    return {} if allow_pickle_weights else {"use_safetensors": True}


def load_errors() -> tuple:
    """What ``from_pretrained`` raises on a missing, unreadable or corrupt model file: OSError and
    ValueError, safetensors' SafetensorError (a garbage header), pickle's UnpicklingError and
    EOFError (a garbage or cut pytorch_model.bin)."""
    import pickle

    errors = [OSError, ValueError, pickle.UnpicklingError, EOFError]
    try:
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:  # pragma: no cover - safetensors comes with transformers
        pass
    return tuple(errors)


def load_failure(path_or_name, what: str, err: Exception, allow_pickle_weights: bool = True,
                 opt_in: str = POLICY_OPT_IN) -> InputError:
    """The one-line InputError of a failed ``from_pretrained``: the model, what failed, the first line
    of the reason; a hub id without safetensors weights gets the refusal's advice."""
    reason = _first_line(err)
    if isinstance(err, EOFError) or type(err).__name__ in ("UnpicklingError", "SafetensorError"):
        reason = f"a corrupt weights file: {type(err).__name__}: {reason}"
    message = f"{path_or_name}: cannot load the {what} ({reason})"
    if not allow_pickle_weights and "safetensors" in reason:
        message += f"; linepo loads safetensors only: convert pickle weights with linepo import-policy " \
                   f"--allow-pickle-weights, or set {opt_in}"
    return InputError(message)


def load_policy(path_or_name, *, trust_remote_code: bool = False, dtype: str = "auto", device=None,
                allow_pickle_weights: bool = False):
    """Load a causal LM and its tokenizer from a local folder or a hub id.

    Args:
        path_or_name: a folder written by :func:`save_policy` / ``save_pretrained``, or a
            hub id such as ``Qwen/Qwen2-1.5B-Instruct``.
        trust_remote_code: run the repository's own modelling code; off unless asked.
        dtype: "auto" (the checkpoint's dtype), "float32", "bfloat16" or "float16".
        device: where to put the model; default the GPU when there is one, else CPU.
        allow_pickle_weights: load ``pytorch_model.bin`` (a pickle) when there are no
            safetensors; off unless asked (:func:`check_weights_format`).

    Returns:
        ``(model, tokenizer)``: the model in eval mode, the tokenizer padding on the left
        with a pad token set.

    Raises:
        InputError: the path does not exist, is not a model folder, the hub id is not
            cached while offline, only pickle weights without the opt-in, or loading fails
            (a corrupt weights file included; message names ``path_or_name``).
    """
    if dtype not in DTYPES:
        raise InputError(f"dtype: must be one of {', '.join(DTYPES)}, got {dtype!r}")
    source = resolve_policy(path_or_name)  # before the slow imports: bad paths fail fast
    check_weights_format(path_or_name, allow_pickle_weights)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, trust_remote_code=trust_remote_code,
                                                     **weight_format_kwargs(allow_pickle_weights))
    except load_errors() as err:
        raise load_failure(path_or_name, "policy", err, allow_pickle_weights) from err
    check_policy_folder(path_or_name)  # readable weights can still be wrong ones: the files save_policy wrote?
    tokenizer.padding_side = "left"  # generation appends on the right: pad on the left
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise InputError(f"{path_or_name}: the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config.eos_token_id is None and tokenizer.eos_token_id is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    return model, tokenizer


def save_policy(model, tokenizer, path, inputs=None) -> Path:
    """Save ``model`` (safetensors) and ``tokenizer`` to folder ``path`` atomically.

    Everything is written to a temp folder next to ``path`` and renamed onto it, so a
    killed job never leaves a half-written policy; an existing ``path`` is replaced. The
    folder's ``linepo_provenance.json`` records the sha256 of each file and of ``inputs``
    (the artefacts the policy was made from), checked by :func:`load_policy` and ``linepo verify``.
    """
    from linepo.schemas import remove_stale_temporaries

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)  # a killed save's temp folder: a whole policy
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = None
    try:
        # transformers v5 always writes safetensors and dropped the flag; v4 needs it.
        try:
            model.save_pretrained(tmp, safe_serialization=True)
        except TypeError:
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # last: it hashes every file written above; a model folder is always computed by torch
        write_folder_provenance(tmp, inputs, output_history(inputs or [], computed=True))
        # mkdtemp (and some writers) create owner-only files; give the usual umask modes.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        for child in tmp.rglob("*"):
            os.chmod(child, (0o777 if child.is_dir() else 0o666) & ~umask)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
        if old is not None and old.exists():
            if path.exists():
                shutil.rmtree(old)
            else:  # the final rename failed: put the previous policy back
                os.replace(old, path)
    return path


def import_policy(source, out, *, tokenizer=None, dtype: str = "auto", trust_remote_code: bool = False,
                  allow_pickle_weights: bool = False) -> dict:
    """Copy a policy (a folder or a hub id) into ``out`` as safetensors, with its tokenizer.

    ``tokenizer`` names another folder or hub id to take the tokenizer (and its chat template)
    from: the paper's released SFT checkpoint is used with the base model's tokenizer
    (yale-nlp/COMAL loads ``Qwen/Qwen2-1.5B``'s). The weights keep their dtype by default
    ("auto"); training upcasts them to fp32 master weights anyway. ``allow_pickle_weights``
    reads a ``pytorch_model.bin``-only folder: the way to convert one to safetensors.

    Returns:
        facts about the imported policy: source, tokenizer, parameters, dtype, chat template
        (present or not), its end-of-turn and stop tokens.

    Raises:
        InputError: the model or tokenizer cannot be found or loaded; only pickle weights
            without ``allow_pickle_weights``.
    """
    if dtype not in DTYPES:
        raise InputError(f"--dtype: must be one of {', '.join(DTYPES)}, got {dtype!r}")
    model_source = resolve_policy(source)
    check_weights_format(source, allow_pickle_weights, "--allow-pickle-weights (policy.allow_pickle_weights: true)")
    tokenizer_source = resolve_tokenizer(tokenizer) if tokenizer else model_source

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        loaded_tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise InputError(f"{tokenizer_source}: cannot load a tokenizer ({_first_line(err)})") from err
    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_source, dtype="auto" if dtype == "auto" else getattr(torch, dtype),
            trust_remote_code=trust_remote_code, **weight_format_kwargs(allow_pickle_weights))
    except load_errors() as err:
        raise load_failure(source, "policy", err, allow_pickle_weights) from err
    check_policy_folder(source)  # a linepo policy folder: its files as save_policy wrote them
    vocab = model.get_input_embeddings().weight.shape[0]
    if vocab < len(loaded_tokenizer):
        raise InputError(f"{tokenizer_source}: the tokenizer has {len(loaded_tokenizer)} tokens but the model "
                         f"{source} only {vocab} embeddings: not its tokenizer")
    if len(loaded_tokenizer) < vocab // 2:
        # transformers builds an (almost) empty tokenizer for a weights-only Qwen2 folder rather than fail
        raise InputError(f"{tokenizer_source}: no usable tokenizer ({len(loaded_tokenizer)} tokens for a model with "
                         f"{vocab} embeddings); name one with policy.tokenizer (import-policy --tokenizer)")
    save_policy(model.eval(), loaded_tokenizer, out, inputs=[source] + ([tokenizer] if tokenizer else []))
    return {"source": str(source), "tokenizer": str(tokenizer_source),
            "parameters": sum(p.numel() for p in model.parameters()), "dtype": str(model.dtype).removeprefix("torch."),
            "chat_template": bool(getattr(loaded_tokenizer, "chat_template", None)),
            "end_of_turn": end_of_turn_token_ids(loaded_tokenizer),
            "stop_tokens": stop_token_ids(loaded_tokenizer, model.generation_config)}


def resolve_tokenizer(path_or_name) -> str:
    """A tokenizer's local folder or hub id, checked like a policy's (its files instead of config.json)."""
    return resolve_model(path_or_name, what="tokenizer", needs=("tokenizer_config.json", "tokenizer.json"))


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def format_prompt(tokenizer, prompt: str) -> str:
    """The text the model sees before its answer: chat template if any, else PLAIN_TEMPLATE."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return PLAIN_TEMPLATE.format(prompt=prompt)


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Token ids of :func:`format_prompt`'s text, the prompt itself encoded as text.

    A chat template writes its own special tokens (BOS included), so they are not added
    again; the plain template gets the tokenizer's usual ones (e.g. BOS for Llama). A
    special token's spelling in the prompt stays characters (:mod:`linepo.stages.text`):
    ``<|im_start|>`` typed by a user opens no turn.
    """
    from linepo.stages.text import encode_rendered, marker, spells_a_special_token

    has_template = bool(getattr(tokenizer, "chat_template", None))
    text = format_prompt(tokenizer, prompt)
    if not spells_a_special_token(tokenizer, prompt):
        return tokenizer(text, add_special_tokens=not has_template)["input_ids"]
    rendered = format_prompt(tokenizer, marker(0))
    content = prompt if rendered.replace(marker(0), prompt) == text else prompt.strip()  # a template that trims
    return encode_rendered(tokenizer, rendered, [content], add_special_tokens=not has_template)


def end_of_turn_token_ids(tokenizer) -> list[int]:
    """The special token(s) the chat template closes an assistant turn with, or [] without a template.

    Rendered, not guessed: an assistant turn around a marker, and the special token right after
    it (Qwen2's ChatML: ``<|im_end|>``, Llama-3: ``<|eot_id|>``). That is often *not*
    ``tokenizer.eos_token`` (the Qwen2 base tokenizer's is ``<|endoftext|>``), and a sampler
    that stops only on EOS runs past the end of the turn.
    """
    if not getattr(tokenizer, "chat_template", None):
        return []
    marker = "\ue000linepo-turn\ue000"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": marker}], tokenize=False)
    except Exception:  # a template that cannot render an assistant turn: nothing to learn from it
        return []
    if text.count(marker) != 1:
        return []
    after = text.split(marker, 1)[1]
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    added = {i for i, token in getattr(tokenizer, "added_tokens_decoder", {}).items()
             if getattr(token, "special", False)}
    return [ids[0]] if ids and ids[0] in special | added else []


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Every token that ends a response: the generation config's EOS ids, the tokenizer's EOS
    and the chat template's end-of-turn token, in that order, without repeats."""
    found: list[int] = []
    eos = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    for candidate in ([eos] if isinstance(eos, int) else list(eos or [])) + [tokenizer.eos_token_id] \
            + end_of_turn_token_ids(tokenizer):
        if candidate is not None and int(candidate) not in found:
            found.append(int(candidate))
    return found


def first_response_token_probs(model, tokenizer, prompts, batch_size: int = 64):
    """P(first response token | prompt) for every prompt: a float64 tensor (num_prompts, vocab).

    Prompts are encoded as samplers encode them and left-padded, with position ids that
    count real tokens only (as ``generate`` does), so each row is exactly the distribution
    that sampling draws the first token from.
    """
    import torch

    device = next(model.parameters()).device
    rows = []
    for start in range(0, len(prompts), batch_size):
        encoded = [encode_prompt(tokenizer, p) for p in prompts[start : start + batch_size]]
        batch = tokenizer.pad({"input_ids": encoded}, padding=True, return_tensors="pt", padding_side="left")
        mask = batch["attention_mask"].to(device)  # (B, T)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"].to(device), attention_mask=mask, position_ids=positions).logits
        rows.append(torch.softmax(logits[:, -1, :].double(), dim=-1).cpu())  # (B, V)
    return torch.cat(rows) if rows else torch.zeros(0, model.config.vocab_size, dtype=torch.float64)


def first_token_category_probs(model, tokenizer, prompts, category_token_ids, batch_size: int = 64):
    """P(category | prompt) from the first response token, for categories that are sets of tokens.

    ``category_token_ids[c]`` lists the first tokens of category c; the mass on every other
    token is a last "unmatched" column. The one readout of a first-token category mix: the
    toy world's style mix and the exact exploitability both use it.

    Returns:
        numpy ``(num_prompts, k + 1)``, rows summing to 1.
    """
    import numpy as np

    probs = first_response_token_probs(model, tokenizer, prompts, batch_size).numpy()  # (N, V)
    k = len(category_token_ids)
    per_category = np.zeros((len(prompts), k + 1))
    for c, tokens in enumerate(category_token_ids):
        for token in tokens:
            per_category[:, c] += probs[:, token]
    per_category[:, k] = np.clip(1 - per_category[:, :k].sum(axis=1), 0, None)  # unmatched
    if not len(prompts):
        return per_category
    return per_category / per_category.sum(axis=1, keepdims=True)


def first_response_token_ids(tokenizer, words, prompt: str = "Hello.") -> dict[str, int] | None:
    """The token id of each word as the first response token, or None if one is not one token.

    A word counts as one token when appending it to the formatted prompt adds exactly one
    token and leaves the prompt's tokens unchanged.
    """
    base = encode_prompt(tokenizer, prompt)
    text = format_prompt(tokenizer, prompt)
    ids = {}
    for word in words:
        with_word = tokenizer(text + word, add_special_tokens=False)["input_ids"]
        if len(with_word) != len(base) + 1 or with_word[: len(base)] != base:
            return None
        ids[word] = with_word[-1]
    return ids

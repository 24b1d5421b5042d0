"""What `linepo train` writes: the parent's tokenizer and generation config as they were saved
(a policy without a pad token gets none), and a one-off run needs no --resume-dir.

    HF_HUB_OFFLINE=1 python -m pytest tests/test_train_checkpoint.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from helpers import build_tiny_policy, fast_settings, preference_rows, sha256  # noqa: E402

from linepo.cli import main  # noqa: E402
from linepo.commands.train import default_resume_dir  # noqa: E402
from linepo.schemas import write_table  # noqa: E402
from linepo.stages.scoring import score_preferences  # noqa: E402
from linepo.stages.training import train_policy  # noqa: E402

LLAMA3_EOS = [128001, 128009]  # Llama-3-Instruct's generation config: <|end_of_text|>, <|eot_id|>


def _scored(root: Path, policy: Path, num: int = 8) -> Path:
    write_table(preference_rows(num), root / "prefs.parquet", "preferences")
    score_preferences(root / "prefs.parquet", root / "scored.parquet", reference=policy, anchor=policy,
                      batch_size=8, max_length=512, dtype="float32")
    return root / "scored.parquet"


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A tiny Llama with the real Llama-3 tokenizer, which has no pad token, and its scored pairs."""
    import real_models as rm

    from linepo.testing import save_model, tiny_causal_lm

    root = tmp_path_factory.mktemp("llama")
    tokenizer = rm.llama3_tokenizer()
    assert tokenizer.pad_token is None
    save_model(tiny_causal_lm(tokenizer, "llama", seed=0), tokenizer, root / "parent", generation_eos=LLAMA3_EOS)
    return root / "parent", _scored(root, root / "parent")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A tiny Qwen2 with the embedded tokenizer (which has a pad token) and its scored pairs."""
    root = tmp_path_factory.mktemp("toy")
    build_tiny_policy(root / "parent", seed=0)
    return root / "parent", _scored(root, root / "parent")


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.parametrize("validation", [False, True], ids=["last", "best"])
def test_a_policy_without_pad_token_is_saved_without_one(llama, tmp_path, validation):
    from transformers import AutoTokenizer

    parent, scored = llama
    out = tmp_path / "out"
    train_policy(parent, [scored], out, resume_dir=tmp_path / "out.partial", settings=fast_settings(epochs=1),
                 validation=[scored] if validation else ())
    if validation:
        assert (out / "linepo_selection.json").is_file()  # the best checkpoint's folder was installed
    assert AutoTokenizer.from_pretrained(out).pad_token is None
    tokenizer_config = _json(out / "tokenizer_config.json")
    assert tokenizer_config.get("pad_token") is None
    assert tokenizer_config.get("padding_side") == _json(parent / "tokenizer_config.json").get("padding_side")
    assert sha256(out / "tokenizer.json") == sha256(parent / "tokenizer.json")
    generation = _json(out / "generation_config.json")
    assert generation.get("pad_token_id") is None and generation["eos_token_id"] == LLAMA3_EOS
    assert _json(out / "config.json").get("pad_token_id") is None
    assert _json(out / "config.json").get("use_cache") is not False  # training's no-cache is not handed down


def test_one_off_train_needs_no_resume_dir(toy, tmp_path, capsys, monkeypatch):
    from transformers import AutoTokenizer

    import linepo.stages.training as training

    parent, scored = toy
    used = []

    def recording(*args, resume_dir, **kwargs):
        used.append(Path(resume_dir))
        return train_policy(*args, resume_dir=resume_dir, **kwargs)

    monkeypatch.setattr(training, "train_policy", recording)
    out = tmp_path / "y" / "policy"
    code = main(["train", "--policy", str(parent), "--scored", str(scored), "--out", str(out), "--loss", "ipo",
                 "--eta", "8", "--epochs", "1", "--batch-size", "4", "--learning-rate", "1e-3"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert used == [tmp_path / "y" / "policy.partial"]
    assert json.loads(captured.out.strip().splitlines()[-1])["global_step"] == 2
    assert (out / "model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "y").iterdir()) == ["policy"]  # the side folder is gone
    # a tokenizer with its own pad token keeps it
    assert AutoTokenizer.from_pretrained(out).pad_token == AutoTokenizer.from_pretrained(parent).pad_token
    assert _json(out / "generation_config.json") == _json(parent / "generation_config.json")


def test_the_default_resume_dir_is_beside_out(tmp_path, monkeypatch):
    assert default_resume_dir(Path("results/y/policy")) == Path("results/y/policy.partial")
    assert default_resume_dir(Path("results/y/policy/")) == Path("results/y/policy.partial")
    monkeypatch.chdir(tmp_path)
    assert default_resume_dir(Path(".")) == tmp_path.resolve().with_name(tmp_path.name + ".partial")


def test_the_launched_processes_get_the_default_resume_dir(toy, tmp_path, monkeypatch):
    import linepo.commands.train as train_command

    commands = []
    monkeypatch.setattr(train_command, "launch", lambda args, settings: commands.append(
        train_command.launch_command(args, settings, port=1234)) or 0)
    out = tmp_path / "policy"
    parent, scored = toy
    assert main(["train", "--policy", str(parent), "--scored", str(scored), "--out", str(out),
                 "--num-processes", "2"]) == 0
    command = commands[0]
    assert command[command.index("--resume-dir") + 1] == str(tmp_path / "policy.partial")


def test_sft_defaults_its_resume_dir_too(tmp_path, monkeypatch):
    import linepo.stages.sft as sft

    used = []
    monkeypatch.setattr(sft, "train_sft", lambda *args, resume_dir, **kwargs: used.append(resume_dir) or {})
    assert main(["sft", "--base", "b", "--data", "d.jsonl", "--out", str(tmp_path / "sft" / "model")]) == 0
    assert used == [tmp_path / "sft" / "model.partial"]

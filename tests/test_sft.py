"""`linepo sft` and `policy.sft: build`: a base model fine-tuned on chats becomes the SFT policy.

    HF_HUB_OFFLINE=1 python -m pytest tests/test_sft.py -q
"""

from __future__ import annotations

import copy
import json

import pytest
import yaml

torch = pytest.importorskip("torch")

from real_models import qwen2_tokenizer, save_model, tiny_causal_lm  # noqa: E402
from workflow_utils import REPO  # noqa: E402

from linepo.cli import main  # noqa: E402
from linepo.workflow.config import validate_config  # noqa: E402
from linepo.errors import InputError  # noqa: E402
from linepo.workflow.plan import build_plan  # noqa: E402
from linepo.stages.sft import chat_features, load_chats  # noqa: E402

SHARED_ULTRACHAT = REPO.parent / "shared/data/ultrachat/sample.jsonl"
CHATS = [
    [{"role": "user", "content": "Hi there."}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}],
]


def chats_file(tmp_path):
    if SHARED_ULTRACHAT.is_file():
        return SHARED_ULTRACHAT
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps({"prompt": c[0]["content"], "messages": c}) + "\n" for c in CHATS))
    return path


def test_only_assistant_turns_and_their_end_of_turn_are_learned():
    tokenizer = qwen2_tokenizer()
    features = chat_features(tokenizer, CHATS[0], max_length=512)
    learned = tokenizer.decode([t for t, label in zip(features["input_ids"], features["labels"]) if label != -100])
    assert learned == "Hello! How can I help?<|im_end|>Blue.<|im_end|>"
    assert features["labels"][: len(features["labels"]) // 4] == [-100] * (len(features["labels"]) // 4)
    cut = chat_features(tokenizer, CHATS[0], max_length=10)
    assert len(cut["input_ids"]) == len(cut["labels"]) == 10


def test_chats_are_read_in_the_ultrachat_schema(tmp_path):
    chats = load_chats(str(chats_file(tmp_path)), max_examples=2)
    assert len(chats) == 2 and chats[0][0]["role"] == "user" and any(m["role"] == "assistant" for m in chats[0])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "no reply"}]}) + "\n")
    with pytest.raises(InputError, match="no assistant turn"):
        load_chats(str(bad))


def test_linepo_sft_lowers_the_assistant_loss_and_saves_a_policy(tmp_path, capsys):
    tokenizer = qwen2_tokenizer()
    save_model(tiny_causal_lm(tokenizer, "qwen2", seed=0), tokenizer, tmp_path / "base")
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in CHATS * 4))
    args = ["sft", "--base", str(tmp_path / "base"), "--data", str(data), "--out", str(tmp_path / "sft"),
            "--resume-dir", str(tmp_path / "sft.partial"), "--epochs", "10", "--batch-size", "4",
            "--learning-rate", "1e-2", "--warmup-ratio", "0"]
    assert main(args) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["chats"] == 8 and stats["steps"] == 20 and not (tmp_path / "sft.partial").exists()
    from linepo.stages.models import load_policy

    def assistant_nll(folder):
        model, tok = load_policy(folder, device="cpu")
        f = chat_features(tok, CHATS[1], 512)
        with torch.no_grad():
            return float(model(input_ids=torch.tensor([f["input_ids"]]), labels=torch.tensor([f["labels"]])).loss)

    assert assistant_nll(tmp_path / "sft") < assistant_nll(tmp_path / "base") - 3.0  # nats per token
    assert (tmp_path / "sft" / "model.safetensors").is_file()


def test_policy_sft_build_plans_an_sft_build_job():
    base = yaml.safe_load((REPO / "configs/paper.yaml").read_text())
    config = copy.deepcopy(base)
    config["policy"] = {"sft": "build", "tokenizer": "Qwen/Qwen2-1.5B", "dtype": "bfloat16",
                        "build": {"base": "Qwen/Qwen2-1.5B", "max_examples": 1000}}
    plan = build_plan(validate_config(config))
    assert plan.policy_dir(plan.sft) == f"results/sft/{plan.sft}/model"
    with pytest.raises(InputError, match="policy.build.base"):
        validate_config({**copy.deepcopy(base), "policy": {"sft": "build"}})

"""fp32 master weights whatever the policy's dtype, and checkpoint selection on held-out pairs.

    HF_HUB_OFFLINE=1 python -m pytest tests/test_training_precision_and_selection.py -q
"""

from __future__ import annotations

import copy
import json
import logging

import pytest
import yaml

torch = pytest.importorskip("torch")

from helpers import NUM_PAIRS, StopAt, build_tiny_policy, evaluate, fast_settings, preference_rows, sha256  # noqa: E402

from linepo.workflow.config import validate_config  # noqa: E402
from linepo.stages.models import load_policy, save_policy  # noqa: E402
from linepo.workflow.plan import build_plan  # noqa: E402
from linepo.schemas import write_table  # noqa: E402
from linepo.stages.scoring import score_preferences  # noqa: E402
from linepo.stages.training import SELECTION_FILE, TrainSettings, train_policy  # noqa: E402
from workflow_utils import REPO  # noqa: E402


def weights(folder) -> dict:
    model, _ = load_policy(folder, dtype="auto", device="cpu")
    return {name: p.detach().clone() for name, p in model.named_parameters()}


# ----------------------------------------------------------------------------- master weights


@pytest.fixture(scope="module")
def bf16_data(tmp_path_factory):
    """A policy stored in bf16 (as the paper's Qwen2-1.5B is), the same values stored in fp32, pairs."""
    root = tmp_path_factory.mktemp("precision")
    tokenizer = build_tiny_policy(root / "fp32_source", seed=0)
    model, _ = load_policy(root / "fp32_source", dtype="bfloat16", device="cpu")
    save_policy(model, tokenizer, root / "bf16")  # bf16 on disk
    save_policy(model.float(), tokenizer, root / "upcast")  # exactly the bf16 values, in fp32
    write_table(preference_rows(NUM_PAIRS), root / "prefs.parquet", "preferences")
    score_preferences(root / "prefs.parquet", root / "scored.parquet", reference=root / "upcast",
                      anchor=root / "upcast", batch_size=8, max_length=512, dtype="float32")
    return root


def paper_step(**changes) -> TrainSettings:
    """One AdamW step at the paper's learning rate on every pair."""
    return fast_settings(loss="inpo", eta=500.0, eta_tau=1 / 3, epochs=1, batch_size=NUM_PAIRS,
                         learning_rate=5e-7, max_grad_norm=0.0, **changes)


def test_a_bf16_policy_trains_in_fp32_master_weights_by_default(bf16_data, tmp_path):
    root = bf16_data
    assert TrainSettings().master_dtype == "float32"
    train_policy(root / "bf16", [root / "scored.parquet"], tmp_path / "from_bf16", resume_dir=tmp_path / "a.partial",
                 settings=paper_step())
    train_policy(root / "upcast", [root / "scored.parquet"], tmp_path / "from_fp32", resume_dir=tmp_path / "b.partial",
                 settings=paper_step())
    start, from_bf16, from_fp32 = weights(root / "upcast"), weights(tmp_path / "from_bf16"), weights(tmp_path / "from_fp32")
    changed = total = 0
    for name, before in start.items():
        assert from_bf16[name].dtype == torch.float32  # the saved policy keeps the master weights
        torch.testing.assert_close(from_bf16[name], from_fp32[name], rtol=0, atol=1e-9)
        changed += int((from_bf16[name] != before).sum())
        total += before.numel()
    assert changed / total > 0.9  # Adam's first step moves (almost) every weight by ~lr


def test_pure_bf16_training_rounds_the_paper_learning_rate_away(bf16_data, tmp_path):
    """What the bug did: AdamW at 5e-7 on bf16 weights (8 mantissa bits) changes almost nothing."""
    root = bf16_data
    train_policy(root / "bf16", [root / "scored.parquet"], tmp_path / "pure", resume_dir=tmp_path / "p.partial",
                 settings=paper_step(master_dtype="bfloat16"))
    start, pure = weights(root / "bf16"), weights(tmp_path / "pure")
    changed = sum(int((pure[n] != start[n]).sum()) for n in start)
    total = sum(p.numel() for p in start.values())
    assert changed / total < 0.05


def test_the_workflow_trains_the_paper_config_with_fp32_master_weights():
    """policy.dtype (bf16 in configs/paper.yaml) governs sampling and scoring, never the master weights."""
    config = validate_config(yaml.safe_load((REPO / "configs/paper.yaml").read_text()))
    assert config["policy"]["dtype"] == "bfloat16"
    plan = build_plan(config)
    for run in plan.runs.values():
        for step in run:
            settings = plan.train_settings(step.policy)
            assert settings["master_dtype"] == "float32" and "dtype" not in settings
            assert TrainSettings.from_dict(settings).validate().master_dtype == "float32"


def test_grad_clipping_weight_decay_and_warmup_are_config_keys():
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    config = copy.deepcopy(base)
    config["training"].update(max_grad_norm=0.0, weight_decay=0.01, warmup_ratio=0.1)
    plan = build_plan(validate_config(config))
    settings = plan.train_settings(plan.final_policy("inpo"))
    assert (settings["max_grad_norm"], settings["weight_decay"], settings["warmup_ratio"]) == (0.0, 0.01, 0.1)
    defaults = build_plan(validate_config(copy.deepcopy(base)))
    assert defaults.train_settings(defaults.final_policy("inpo"))["max_grad_norm"] == 1.0


def test_warmup_is_passed_the_way_each_transformers_major_takes_it():
    from dataclasses import dataclass, field

    from linepo.stages.training import _warmup_arguments

    @dataclass
    class Version4:  # transformers 4.x: warmup_ratio and an integer warmup_steps
        warmup_ratio: float = 0.0
        warmup_steps: int = 0

    @dataclass
    class Version5:  # transformers 5.x: a float warmup_steps < 1 is the ratio
        warmup_steps: float = field(default=0.0)

    assert _warmup_arguments(Version4, 0.1) == {"warmup_ratio": 0.1}
    assert _warmup_arguments(Version5, 0.1) == {"warmup_steps": 0.1}
    assert _warmup_arguments(Version5, 1.0)["warmup_steps"] < 1


def test_warmup_ratio_warms_up_the_learning_rate(bf16_data, tmp_path, caplog):
    root = bf16_data
    settings = fast_settings(epochs=4, batch_size=4, warmup_ratio=0.5, learning_rate=1e-3, logging_steps=1)
    with caplog.at_level(logging.INFO, logger="linepo.stages.training"):
        train_policy(root / "upcast", [root / "scored.parquet"], tmp_path / "w", resume_dir=tmp_path / "w.partial",
                     settings=settings)
    rates = [float(line.split("learning_rate ")[1].split()[0]) for line in caplog.text.splitlines()
             if "learning_rate" in line]
    assert len(rates) == 12
    assert rates[:6] == sorted(rates[:6]) and rates[0] < rates[5] and rates[6:] == sorted(rates[6:], reverse=True)


# ----------------------------------------------------------------------------- checkpoint selection


@pytest.fixture(scope="module")
def selection_data(tmp_path_factory):
    """Training pairs, and held-out pairs that disagree with them: their loss rises as training
    fits the training pairs, so the lowest validation loss is early, not at the last step."""
    root = tmp_path_factory.mktemp("selection")
    build_tiny_policy(root / "parent", seed=0)
    rows = preference_rows(NUM_PAIRS)
    held_out = preference_rows(8, start=NUM_PAIRS, seed=1)
    for row in held_out:
        row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
    write_table(rows, root / "prefs.parquet", "preferences")
    write_table(held_out, root / "val_prefs.parquet", "preferences")
    for name in ("prefs", "val_prefs"):
        score_preferences(root / f"{name}.parquet", root / f"{name}_scored.parquet", reference=root / "parent",
                          anchor=root / "parent", batch_size=8, max_length=512, dtype="float32")
    return root


def select(root, out, side, **changes):
    settings = fast_settings(loss="ipo", eta=8.0, epochs=3, batch_size=4, eval_steps=2, save_steps=2, **changes)
    stats = train_policy(root / "parent", [root / "prefs_scored.parquet"], out, resume_dir=side, settings=settings,
                         validation=[root / "val_prefs_scored.parquet"])
    return stats, settings


def test_the_lowest_validation_loss_checkpoint_is_kept(selection_data, tmp_path):
    root = selection_data
    stats, settings = select(root, tmp_path / "best", tmp_path / "best.partial")
    summary = json.loads((tmp_path / "best" / SELECTION_FILE).read_text())
    assert summary == stats["validation"]
    steps = [s for s, _ in summary["history"]]
    assert steps == [2, 3, 4, 6, 8, 9]  # every eval_steps=2, each epoch's end (3, 6, 9), the last step
    losses = [v for _, v in summary["history"]]
    best = min(range(len(losses)), key=losses.__getitem__)
    assert summary["selected_step"] == summary["best_step"] == steps[best] < 9
    assert losses[-1] > losses[best]
    kept = evaluate(tmp_path / "best", root / "val_prefs_scored.parquet", "ipo", 8.0, 1.0)["loss"]
    assert kept == pytest.approx(losses[best], rel=1e-5)
    assert not (tmp_path / "best.partial").exists()

    # select_best false: the last weights, the same history
    stats_last, _ = select(root, tmp_path / "last", tmp_path / "last.partial", select_best=False)
    assert stats_last["validation"]["history"] == summary["history"]
    assert stats_last["validation"]["selected_step"] == 9
    last = evaluate(tmp_path / "last", root / "val_prefs_scored.parquet", "ipo", 8.0, 1.0)["loss"]
    assert last == pytest.approx(losses[-1], rel=1e-5)


def test_selection_resumes_after_a_crash_byte_identically(selection_data, tmp_path):
    root = selection_data
    select(root, tmp_path / "full", tmp_path / "full.partial")
    side = tmp_path / "cut.partial"
    settings = fast_settings(loss="ipo", eta=8.0, epochs=3, batch_size=4, eval_steps=2, save_steps=2)
    with pytest.raises(KeyboardInterrupt):  # after the evaluation at step 6 and before the one at 8
        train_policy(root / "parent", [root / "prefs_scored.parquet"], tmp_path / "cut", resume_dir=side,
                     settings=settings, validation=[root / "val_prefs_scored.parquet"], callbacks=[StopAt(7)])
    assert list(side.glob("best-*")) and list(side.glob("checkpoint-*"))
    stats, _ = select(root, tmp_path / "cut", side)
    assert stats["resumed_from_step"] == 6
    for name in ("model.safetensors", SELECTION_FILE):
        assert sha256(tmp_path / "cut" / name) == sha256(tmp_path / "full" / name)
    assert not side.exists()


def test_validation_settings_are_checked(selection_data, tmp_path):
    from linepo.errors import InputError

    with pytest.raises(InputError, match="--eval-steps"):
        fast_settings(eval_steps=0).validate()
    with pytest.raises(InputError, match="--validation .*missing.parquet: file not found"):
        train_policy(selection_data / "parent", [selection_data / "prefs_scored.parquet"], tmp_path / "o",
                     resume_dir=tmp_path / "o.partial", settings=fast_settings(),
                     validation=[tmp_path / "missing.parquet"])
    assert not (tmp_path / "o").exists()

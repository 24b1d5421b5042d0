"""`linepo train` on tiny random Qwen2 policies: each loss learns, errors stop early, resume is exact.

    HF_HUB_OFFLINE=1 python -m pytest tests/test_training.py -q
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from helpers import (LOSS_SETTINGS, NUM_PAIRS, StopAt, build_tiny_policy, evaluate, fast_settings, train_full_and_crashed,  # noqa: E402
                     preference_rows, sha256)

from linepo.cli import main  # noqa: E402
from linepo.errors import InputError  # noqa: E402
from linepo.stages.models import load_policy  # noqa: E402
from linepo.schemas import read_table, write_table  # noqa: E402
from linepo.stages.scoring import score_preferences  # noqa: E402
from linepo.stages.training import (  # noqa: E402
    NonFiniteLossError,
    PairCollator,
    pair_features,
    pair_loss,
    read_scored,
    train_policy,
)

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Parent policy, a second (anchor) policy, and scored sets against both anchors."""
    root = tmp_path_factory.mktemp("train")
    tokenizer = build_tiny_policy(root / "parent", seed=0)
    build_tiny_policy(root / "anchor", seed=1, tokenizer=tokenizer)
    write_table(preference_rows(NUM_PAIRS), root / "prefs.parquet", "preferences")
    score_preferences(root / "prefs.parquet", root / "scored.parquet", reference=root / "parent",
                      anchor=root / "parent", batch_size=8, max_length=512, dtype="float32")
    score_preferences(root / "prefs.parquet", root / "scored_anchor.parquet", reference=root / "parent",
                      anchor=root / "anchor", batch_size=8, max_length=512, dtype="float32")
    return root


_TRAINED: dict = {}


def trained(data, loss: str) -> tuple[Path, Path, dict]:
    """Train the parent once per loss (module cache); returns (out, scored file, stats)."""
    if loss not in _TRAINED:
        eta, eta_tau = LOSS_SETTINGS[loss]
        scored = data / ("scored_anchor.parquet" if loss == "inpo" else "scored.parquet")
        out = data / f"out_{loss}"
        stats = train_policy(data / "parent", [scored], out, resume_dir=data / f"out_{loss}.partial",
                             settings=fast_settings(loss=loss, eta=eta, eta_tau=eta_tau, epochs=3))
        _TRAINED[loss] = (out, scored, stats)
    return _TRAINED[loss]


# ----------------------------------------------------------------------------- learning


@pytest.mark.parametrize("loss", sorted(LOSS_SETTINGS))
def test_each_loss_reduces_its_loss(data, loss):
    eta, eta_tau = LOSS_SETTINGS[loss]
    out, scored, stats = trained(data, loss)
    before = evaluate(data / "parent", scored, loss, eta, eta_tau)
    after = evaluate(out, scored, loss, eta, eta_tau)
    assert after["loss"] < 0.5 * before["loss"], (before, after)
    if loss == "dpo":
        assert before["loss"] == pytest.approx(math.log(2), abs=1e-3)  # Δπ = Δref at the start
    assert stats["global_step"] == 9 and stats["resumed_from_step"] == 0
    assert stats["tokens_per_s"] > 0 and stats["pairs"] == NUM_PAIRS


def test_ipo_margins_move_to_half_eta(data):
    eta, _ = LOSS_SETTINGS["ipo"]
    out, scored, _ = trained(data, "ipo")
    before = evaluate(data / "parent", scored, "ipo", eta, 1.0)
    after = evaluate(out, scored, "ipo", eta, 1.0)
    assert before["margin"] == pytest.approx(0.0, abs=1e-3)  # the policy starts at the reference
    assert after["margin"] > before["margin"] + eta / 4  # Δπ − Δref moved toward η/2
    assert abs(after["margin"] - eta / 2) < abs(before["margin"] - eta / 2) / 2


def test_inpo_residual_shrinks_with_distinct_anchor(data):
    eta, eta_tau = LOSS_SETTINGS["inpo"]
    out, scored, _ = trained(data, "inpo")
    anchors = read_table(scored, "scored").to_pylist()
    assert any(r["anchor_chosen_logp"] != r["reference_chosen_logp"] for r in anchors)
    before = evaluate(data / "parent", scored, "inpo", eta, eta_tau)
    after = evaluate(out, scored, "inpo", eta, eta_tau)
    # (Δπ − ητ·Δref − (1−ητ)·Δμ) moves toward η/2
    assert after["inpo_residual"] < 0.5 * before["inpo_residual"], (before, after)


def test_step_zero_policy_logprobs_equal_scored_reference(data):
    """Training's log-probs (right-padded, concatenated pairs) equal scoring's (left-padded)."""
    model, tokenizer = load_policy(data / "parent", dtype="float32", device="cpu")
    table = read_scored([data / "scored.parquet"])
    batch = PairCollator(tokenizer.pad_token_id)(pair_features(tokenizer, table, 512))
    with torch.no_grad():
        _, _, logps = pair_loss(model, batch, "ipo", eta=1.0, tau=0.0)
    n = logps.shape[0] // 2
    torch.testing.assert_close(logps[:n], batch["reference_chosen_logp"], rtol=1e-5, atol=2e-3)
    torch.testing.assert_close(logps[n:], batch["reference_rejected_logp"], rtol=1e-5, atol=2e-3)


def test_output_is_safetensors_only_and_side_folder_removed(data):
    out, _, _ = trained(data, "ipo")
    names = {p.name for p in out.iterdir()}
    assert "model.safetensors" in names and "config.json" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert not (data / "out_ipo.partial").exists()
    load_policy(out, device="cpu")  # loads back


def test_gradient_accumulation_counts_optimizer_steps(data, tmp_path):
    stats = train_policy(data / "parent", [data / "scored.parquet"], tmp_path / "out", resume_dir=tmp_path / "side",
                         settings=fast_settings(batch_size=4, gradient_accumulation_steps=2, epochs=1))
    assert stats["global_step"] == NUM_PAIRS // 4 and stats["tokens"] > 0  # batch_size is the global batch


# ----------------------------------------------------------------------------- errors


def test_non_finite_loss_stops_and_writes_nothing(data, tmp_path):
    with pytest.raises(NonFiniteLossError, match="loss is inf"):
        train_policy(data / "parent", [data / "scored.parquet"], tmp_path / "out", resume_dir=tmp_path / "side",
                     settings=fast_settings(loss="ipo", eta=1e20))
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_non_finite_loss_cli_exits_nonzero_with_one_line(data, tmp_path, capsys):
    code = main(["train", "--policy", str(data / "parent"), "--scored", str(data / "scored.parquet"),
                 "--out", str(tmp_path / "out"), "--resume-dir", str(tmp_path / "side"), "--loss", "ipo",
                 "--eta", "1e20", "--batch-size", "4", "--learning-rate", "1e-3"])
    assert code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("linepo train: error: ipo loss is inf")
    assert not (tmp_path / "out").exists()


def test_nan_in_scored_file_is_input_error(data, tmp_path):
    rows = read_table(data / "scored.parquet", "scored").to_pylist()
    rows[1]["reference_rejected_logp"] = float("nan")
    write_table(rows, tmp_path / "bad.parquet", "scored")
    with pytest.raises(InputError, match="reference_rejected_logp.*non-finite"):
        train_policy(data / "parent", [tmp_path / "bad.parquet"], tmp_path / "out", resume_dir=tmp_path / "side",
                     settings=fast_settings())
    assert not (tmp_path / "out").exists() and not (tmp_path / "side").exists()


@pytest.mark.parametrize("flags, message", [
    (["--eta", "0"], "--eta"),
    (["--eta", "-1"], "--eta"),
    (["--eta-tau", "0"], "--eta-tau"),
    (["--eta-tau", "1.5"], "--eta-tau"),
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "5", "--gradient-accumulation-steps", "2"], "do not divide evenly"),
    (["--config-json", '{"nope": 1}'], "unknown training setting"),
    (["--config-json", "[1"], "--config-json"),
    (["--lr-scheduler-type", "nope"], "--lr-scheduler-type"),
    (["--missing-scored"], "file not found"),
    (["--missing-policy"], "not found"),
    (["--side-inside-out"], "--resume-dir"),
])
def test_cli_bad_input_exits_2_and_writes_nothing(data, tmp_path, capsys, flags, message):
    scored, policy, side = data / "scored.parquet", data / "parent", tmp_path / "side"
    if flags == ["--missing-scored"]:
        scored, flags = tmp_path / "nope.parquet", []
    elif flags == ["--missing-policy"]:
        policy, flags = tmp_path / "no_policy", []
    elif flags == ["--side-inside-out"]:
        side, flags = tmp_path / "out" / "partial", []
    code = main(["train", "--policy", str(policy), "--scored", str(scored), "--out", str(tmp_path / "out"),
                 "--resume-dir", str(side), "--loss", "inpo", "--eta", "3", "--eta-tau", "0.5", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("linepo train: error:") and message in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_cli_unknown_loss_exits_2(data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--policy", str(data / "parent"), "--scored", str(data / "scored.parquet"),
              "--out", str(tmp_path / "out"), "--resume-dir", str(tmp_path / "side"), "--loss", "kto"])
    assert exit_info.value.code == 2
    assert "--loss" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_settings_merge_config_json_then_flags():
    from linepo.cli import build_parser
    from linepo.commands.train import settings_from_args

    args = build_parser().parse_args([
        "train", "--policy", "p", "--scored", "s.parquet", "--out", "o", "--resume-dir", "o.partial", "--eta", "4",
        "--config-json", json.dumps({"batch_size": 8, "learning_rate": 1e-4, "eta": 2.0, "bf16": "false",
                                     "warmup_ratio": 0.1})])
    settings = settings_from_args(args)
    assert settings.batch_size == 8 and settings.per_device_batch_size(2) == 4 and settings.learning_rate == 1e-4
    assert settings.eta == 4.0 and settings.tau == pytest.approx((1 / 3) / 4.0) and settings.beta == 0.25
    assert settings.use_bf16() is False and settings.warmup_ratio == 0.1


# ----------------------------------------------------------------------------- resume


def test_resume_after_crash_is_byte_identical(data, tmp_path, caplog):
    settings = fast_settings(batch_size=5, epochs=3, save_steps=2)  # 3 steps/epoch, last batch short
    full, side = train_full_and_crashed(data / "parent", [data / "scored_anchor.parquet"], tmp_path, settings)
    assert not (tmp_path / "cut").exists()
    assert sorted(p.name for p in side.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    with caplog.at_level(logging.INFO, logger="linepo.stages.training"):
        resumed = train_policy(data / "parent", [data / "scored_anchor.parquet"], tmp_path / "cut", resume_dir=side,
                               settings=settings)
    assert resumed["resumed_from_step"] == 4  # mid-epoch 2: data position, optimizer and schedule restored
    assert "resuming from" in caplog.text and "global step 4" in caplog.text
    assert resumed["global_step"] == full["global_step"] == 9
    assert sha256(tmp_path / "cut" / "model.safetensors") == sha256(tmp_path / "full" / "model.safetensors")
    assert not side.exists()


def test_checkpoints_of_other_settings_are_not_resumed(data, tmp_path):
    side = tmp_path / "side"
    with pytest.raises(KeyboardInterrupt):
        train_policy(data / "parent", [data / "scored.parquet"], tmp_path / "out", resume_dir=side,
                     settings=fast_settings(), callbacks=[StopAt(3)])
    assert list(side.glob("checkpoint-*"))
    stats = train_policy(data / "parent", [data / "scored.parquet"], tmp_path / "out", resume_dir=side,
                         settings=fast_settings(learning_rate=2e-3))
    assert stats["resumed_from_step"] == 0 and not side.exists()


def test_incomplete_newest_checkpoint_is_skipped(data, tmp_path):
    side = tmp_path / "side"
    settings = fast_settings()
    with pytest.raises(KeyboardInterrupt):
        train_policy(data / "parent", [data / "scored.parquet"], tmp_path / "out", resume_dir=side,
                     settings=settings, callbacks=[StopAt(3)])
    partial = side / "checkpoint-4"  # as if killed while writing it: no trainer_state.json
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    stats = train_policy(data / "parent", [data / "scored.parquet"], tmp_path / "out", resume_dir=side,
                         settings=settings)
    assert stats["resumed_from_step"] == 2


def _complete_checkpoints(side: Path) -> list[Path]:
    found = []
    for path in side.glob("checkpoint-*"):
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        found.append(path)
    return found


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_and_matches_uninterrupted_run(data, tmp_path, capsys):
    """The real thing: the CLI in a subprocess, SIGKILLed once a checkpoint exists, then rerun."""
    args = ["--policy", str(data / "parent"), "--scored", str(data / "scored.parquet"), "--loss", "ipo",
            "--eta", "8", "--epochs", "10", "--batch-size", "1", "--learning-rate", "1e-4", "--save-steps", "10",
            "--logging-steps", "50"]  # 120 optimizer steps
    out, side = tmp_path / "out", tmp_path / "out.partial"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "linepo.cli", "train", *args, "--out", str(out),
                             "--resume-dir", str(side)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not _complete_checkpoints(side) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "training finished before it could be killed: make it longer"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists() and _complete_checkpoints(side)

    assert main(["train", *args, "--out", str(out), "--resume-dir", str(side)]) == 0
    resumed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert resumed["resumed_from_step"] >= 10 and resumed["global_step"] == 120
    assert not side.exists()

    assert main(["train", *args, "--out", str(tmp_path / "ref"), "--resume-dir", str(tmp_path / "ref.partial")]) == 0
    reference = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert reference["resumed_from_step"] == 0
    assert sha256(out / "model.safetensors") == sha256(tmp_path / "ref" / "model.safetensors")

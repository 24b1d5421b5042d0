"""`linepo train --num-processes 2` on CPU (accelerate launch, DDP over gloo) against one process.

    HF_HUB_OFFLINE=1 python -m pytest tests/test_training_multiprocess.py -q

``--batch-size`` is the global batch, so one process with 8 pairs per forward and two
processes with 4 each (or 2 each and 2 accumulation steps) train on the same pairs per
optimizer step and must end at the same weights, up to the float rounding of the gradient
all-reduce. Each launch costs ~10 s of process start-up on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")

from safetensors.torch import load_file  # noqa: E402
from helpers import build_tiny_policy, preference_rows  # noqa: E402

from linepo.cli import main  # noqa: E402
from linepo.schemas import read_table, write_table  # noqa: E402
from linepo.stages.scoring import score_preferences  # noqa: E402

NUM_PAIRS = 16
#: 16 pairs, global batch 8, 2 epochs: 4 optimizer steps; lr large enough to move every weight
TRAIN_FLAGS = ["--loss", "ipo", "--eta", "8", "--epochs", "2", "--batch-size", "8", "--learning-rate", "1e-3",
               "--logging-steps", "1", "--save-steps", "2"]
#: the all-reduce sums gradients in another order than one process: float32 rounding only
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("mp")
    build_tiny_policy(root / "parent", seed=0)
    write_table(preference_rows(NUM_PAIRS), root / "prefs.parquet", "preferences")
    score_preferences(root / "prefs.parquet", root / "scored.parquet", reference=root / "parent",
                      anchor=root / "parent", batch_size=8, max_length=512, dtype="float32")
    return root


def train(data: Path, out: Path, *extra: str, scored: Path | None = None) -> subprocess.CompletedProcess:
    """The CLI in a fresh process, as the workflow runs it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "linepo.cli", "train", "--policy", str(data / "parent"),
               "--scored", str(scored or data / "scored.parquet"), "--out", str(out),
               "--resume-dir", f"{out}.partial", *TRAIN_FLAGS, *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def max_weight_difference(a: Path, b: Path) -> float:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    return max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)


@pytest.fixture(scope="module")
def one_process(data):
    out = data / "one"
    result = train(data, out)
    assert result.returncode == 0, result.stderr[-2000:]
    return out, json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--gradient-accumulation-steps", "2"]], ids=["2x4", "2x2x2acc"])
def test_two_processes_match_one_process(data, one_process, extra, tmp_path, capsys):
    reference, reference_stats = one_process
    out = tmp_path / "two"
    result = train(data, out, "--num-processes", "2", *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "launching 2 processes (CPU, gloo)" in result.stderr
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    assert stats["global_step"] == reference_stats["global_step"] == 4
    assert stats["tokens"] == reference_stats["tokens"]  # summed over both processes: the same pairs
    assert stats["train_loss"] == pytest.approx(reference_stats["train_loss"], rel=1e-4)
    moved = max_weight_difference(reference, data / "parent")
    difference = max_weight_difference(reference, out)
    with capsys.disabled():
        print(f"\n1 vs 2 processes ({' '.join(extra) or 'per-device batch 4'}): max |Δw| = {difference:.3g} "
              f"(training moved weights by up to {moved:.3g})")
    assert moved > 1e-3, "training must move the weights for the comparison to mean anything"
    assert difference < TOLERANCE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two"]  # the side folder is gone
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_non_finite_loss_in_one_process_stops_both(data, tmp_path):
    """Pair 0's reference log-prob overflows its loss to inf in whichever process draws it: every
    process stops at that step (none waits forever in the all-reduce), exit 1, one error line, no policy."""
    rows = read_table(data / "scored.parquet", "scored").to_pylist()
    rows[0]["reference_chosen_logp"] = 1e30
    write_table(rows, tmp_path / "bad.parquet", "scored")
    result = train(data, tmp_path / "out", "--num-processes", "2", scored=tmp_path / "bad.parquet")
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("linepo train: error:")]
    assert len(errors) == 1 and "ipo loss is inf" in errors[0], result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == errors[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "6", "--num-processes", "4"], "do not divide evenly among 4 process(es)"),
    (["--num-processes", "0"], "--num-processes"),
    (["--num-processes", "2", "--accelerate-config", "nope.yaml"], "--accelerate-config nope.yaml: file not found"),
    (["--num-processes", "2", "--missing-scored"], "file not found"),
])
def test_bad_input_is_caught_before_launching(data, tmp_path, capsys, flags, message):
    scored = data / "scored.parquet"
    if "--missing-scored" in flags:
        flags = [f for f in flags if f != "--missing-scored"]
        scored = tmp_path / "nope.parquet"
    code = main(["train", "--policy", str(data / "parent"), "--scored", str(scored), "--out", str(tmp_path / "out"),
                 "--resume-dir", str(tmp_path / "side"), *TRAIN_FLAGS, *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("linepo train: error:") and message in err[0], err
    assert not list(tmp_path.iterdir())


def test_launch_command_uses_the_accelerate_config(data, tmp_path):
    from argparse import Namespace

    from linepo.commands.train import launch_command
    from linepo.stages.training import TrainSettings

    config = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "fsdp.yaml"
    args = Namespace(policy="p", scored=[Path("a.parquet"), Path("b.parquet")], out=Path("o"),
                     resume_dir=Path("o.partial"), num_processes=4, accelerate_config=config,
                     validation=[Path("v.parquet")])
    command = launch_command(args, TrainSettings(batch_size=32), port=12345)
    assert command[1:3] == ["-m", "accelerate.commands.launch"]
    assert command[command.index("--config_file") + 1] == str(config) and "--multi_gpu" not in command
    assert command[command.index("--num_processes") + 1] == "4"
    assert command[command.index("--main_process_port") + 1] == "12345"
    tail = command[command.index("linepo.cli") + 1:]
    assert tail[:2] == ["train", "--policy"] and tail[-2:] == ["--num-processes", "4"]
    assert json.loads(tail[tail.index("--config-json") + 1])["batch_size"] == 32
    assert tail[tail.index("--validation") + 1] == "v.parquet"  # every process evaluates the held-out pairs
    plain = launch_command(Namespace(**{**vars(args), "accelerate_config": None}), TrainSettings(), port=1)
    assert "--multi_gpu" in plain and "--config_file" not in plain


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc): the launcher, torchrun's agent and the workers."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find the worker processes")
def test_two_process_run_killed_mid_training_resumes(data, tmp_path):
    """SIGKILL to every process of a 2-process run once a checkpoint exists; the rerun resumes
    from it (rank 0 checked and wrote the side folder, every rank its RNG state) and ends where an
    uninterrupted 2-process run ends."""
    import signal
    import time

    flags = ["--loss", "ipo", "--eta", "8", "--epochs", "40", "--batch-size", "8", "--learning-rate", "1e-4",
             "--save-steps", "5", "--logging-steps", "100", "--num-processes", "2"]  # 80 optimizer steps
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    out, side = tmp_path / "cut", tmp_path / "cut.partial"

    def command(target: Path) -> list[str]:
        return [sys.executable, "-m", "linepo.cli", "train", "--policy", str(data / "parent"), "--scored",
                str(data / "scored.parquet"), "--out", str(target), "--resume-dir", f"{target}.partial", *flags]

    proc = subprocess.Popen(command(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            if any((p / "trainer_state.json").is_file() for p in side.glob("checkpoint-*")):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "training ended before it could be killed: make it longer"
        for pid in [proc.pid, *_descendants(proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    finally:
        proc.wait()
    time.sleep(0.5)
    assert not out.exists() and list(side.glob("checkpoint-*"))

    resumed = subprocess.run(command(out), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    stats = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert stats["resumed_from_step"] >= 5 and stats["global_step"] == 80
    assert not side.exists()
    full = subprocess.run(command(tmp_path / "full"), env=env, capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr[-3000:]
    assert max_weight_difference(out, tmp_path / "full") < TOLERANCE

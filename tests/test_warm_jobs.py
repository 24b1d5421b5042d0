"""Warm local jobs (linepo.warm): a command run by the fork server ends as the cold command would.

Directly: the same stdout, stderr and exit codes (success, bad input, bad arguments), a
command whose environment differs runs cold, and a signal to the client (SIGTERM) or its
death (SIGKILL) ends the forked child; messages waiting together on the socket are read one
at a time. Through Snakemake: a tiny workflow run warm, with
one training job's process SIGKILLed after a checkpoint and the run resumed, ends byte-identical to a cold
run, its logs equal up to timings.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workflow_utils import REPO, tiny_config, workflow_with_config

from linepo.warm import server
from linepo.warm.client import receive_message, send_message

CLIENT = [sys.executable, "-c", "import sys; from linepo.cli import main; sys.exit(main())"]
COMMANDS = [
    ["game", "--algorithm", "linepo", "--json", "--iterations", "50"],  # exit 0
    ["game", "--algorithm", "linepo", "--matrix", "[[0.5, 2], [0, 0.5]]"],  # InputError: exit 2
    ["game", "--no-such-flag"],  # argparse: exit 2
]


def run(args, **env):
    return subprocess.run([*CLIENT, *args], capture_output=True, text=True, timeout=120, env={**os.environ, **env})


def served(log: Path) -> list[str]:
    return re.findall(r"\] \d+ \['(\S+)'\] -> (-?\d+)", log.read_text())


def wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return found


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] in "ZX"
    except FileNotFoundError:
        return True


@pytest.fixture
def warm(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    assert server.start(True)
    yield tmp_path / server.LOG
    server.stop()
    assert "LINEPO_WARM_SOCKET" not in os.environ


def test_a_warm_command_prints_and_exits_as_a_cold_one_and_other_environments_run_cold(warm):
    for args in COMMANDS:
        hot, cold = run(args), run(args, LINEPO_WARM="0")
        assert (hot.returncode, hot.stdout, hot.stderr) == (cold.returncode, cold.stdout, cold.stderr), args
    assert [code for _, code in served(warm)] == ["0", "2", "2"]
    other = run(COMMANDS[0], SOME_SETTING="1")  # libraries may read any variable at import
    assert other.returncode == 0 and other.stdout == run(COMMANDS[0]).stdout
    assert "environment differs: SOME_SETTING" in warm.read_text()
    assert len(served(warm)) == 4


def test_messages_waiting_together_are_read_one_at_a_time():
    """A quick command's {"pid"} and {"exit"} can both be waiting when the client reads:
    each read takes one message (not "Extra data"), the descriptors come with theirs."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        send_message(ours, {"pid": 12345}, fds=(0,))
        send_message(ours, {"exit": 0})
        send_message(ours, {"big": "x" * 200_000})
        message, fds = receive_message(theirs, maxfds=3)
        assert message == {"pid": 12345} and len(fds) == 1
        os.close(fds[0])
        assert receive_message(theirs) == ({"exit": 0}, [])
        assert receive_message(theirs) == ({"big": "x" * 200_000}, [])
        ours.close()
        assert receive_message(theirs) == (None, [])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_a_signal_to_the_client_ends_its_forked_command(warm, signum):
    client = subprocess.Popen([*CLIENT, "game", "--algorithm", "md", "--iterations", "3000000"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = wait_for(lambda: re.search(rf"\] (\d+) \['game'\] started for client {client.pid}$",
                                         warm.read_text() if warm.exists() else "", re.MULTILINE))
    child = int(started.group(1))
    assert not gone(child)
    client.send_signal(signum)
    assert client.wait(30) == -signum  # the same status as the cold command's
    wait_for(lambda: gone(child), timeout=10)
    expected = -signum if signum == signal.SIGTERM else -signal.SIGKILL
    wait_for(lambda: re.search(rf"\] {child} \['game'\] -> {expected}", warm.read_text()))


def sha256_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def logs(root: Path) -> dict[str, str]:
    """Each job's log with its numbers masked (rates and durations differ between runs)."""
    return {str(p.relative_to(root)): re.sub(r"\d+(\.\d+)?", "N", p.read_text()) for p in sorted(root.rglob("*.log"))}


@pytest.mark.slow
def test_a_warm_workflow_with_a_sigkilled_job_resumes_to_the_cold_runs_bytes(tmp_path):
    config = tiny_config(runs={"inpo": {"algorithm": "inpo", "eta": 4.0, "eta_tau": 0.6, "rounds": 1}},
                         prompts={"source": "embedded", "max_prompts": 24, "num_splits": 1, "seed": 0},
                         training={"epochs": 2, "batch_size": 1, "learning_rate": 5.0e-4, "save_steps": 2})
    cold, hot = workflow_with_config(tmp_path / "cold", config), workflow_with_config(tmp_path / "warm", config)
    target = ["results/runs/inpo/replicate-0/steps.tsv", "--cores", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(["snakemake", *target], cwd=cold, env={**env, "LINEPO_WARM": "0"},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (cold / server.LOG).exists()

    process = subprocess.Popen(["snakemake", *target], cwd=hot, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    log = hot / server.LOG
    started = wait_for(lambda: re.search(r"\] (\d+) \['train'\] started for client (\d+)$",
                                         log.read_text() if log.exists() else "", re.MULTILINE), timeout=300)
    child, client = int(started.group(1)), int(started.group(2))
    wait_for(lambda: list(hot.glob("results/policies/r1/*/*/model.partial/checkpoint-*/trainer_state.json")))
    os.kill(client, signal.SIGKILL)  # the job's own process, as an OOM killer would
    output, _ = process.communicate(timeout=300)
    assert process.returncode != 0 and "Error in rule train" in output, output[-3000:]
    assert gone(child)
    assert f"{child} ['train'] -> -9" in log.read_text() and log.read_text().rstrip().endswith("stopped")

    result = subprocess.run(["snakemake", *target, "--rerun-incomplete"], cwd=hot, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sha256_tree(hot / "results") == sha256_tree(cold / "results")
    hot_logs, cold_logs = logs(hot / "logs"), logs(cold / "logs")
    assert hot_logs.keys() == cold_logs.keys()
    differ = [name for name in hot_logs if hot_logs[name] != cold_logs[name]]
    assert len(differ) == 1 and differ[0].startswith("policies/"), differ  # the rerun resumed: "resumed at N"
    jobs = served(log)
    assert {"embedded", "prompts", "sample", "judge", "pairs", "score", "train", "run-steps"} <= {k for k, _ in jobs}
    assert sorted(code for _, code in jobs if code != "0") == ["-9"], jobs

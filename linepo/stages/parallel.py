"""Several processes for one workflow step: data-parallel shards and the training launcher.

    linepo sample ... --data-parallel 4       # 4 workers, one per visible GPU, then one merged file
    linepo judge ... --data-parallel 4
    linepo train ... --num-processes 4 [--accelerate-config configs/accelerate/fsdp.yaml]

Sampling and judging are embarrassingly parallel over prompts. A sharded command cuts its
rows into contiguous blocks of *whole prompts* (:func:`shard_bounds`: sizes differ by at
most one, so no prompt is ever dropped, unlike cutting ``len // shards`` rows each), writes
each block to a temp folder beside the output, runs the ordinary single-process command
on it in a worker process pinned to its own GPU(s) through ``CUDA_VISIBLE_DEVICES``
(:func:`device_groups`), and concatenates the workers' outputs in block order, which is
prompt order. Every random draw is seeded per row (sampling: ``row_seed(seed, prompt_id,
k)``; the judge's oracle coin: a hash of seed, prompt and both texts), so the merged file
equals the unsharded one. The output is written once, atomically, after every worker
succeeded; the temp folder is always removed.

:func:`run_workers` runs the workers (or the training launcher), prefixes their log lines
with the shard, stops the others as soon as one fails, and hands back the failing
worker's one-line ``linepo <cmd>: error: ...`` message, so the command still ends with
exactly one error line. Nothing here imports torch at module level.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from linepo.errors import InputError

_ERROR_LINE = re.compile(r"^linepo [\w-]+: error: ")

def shard_count(execution: dict, gpus, gpus_per_shard: int = 1) -> int:
    """Data-parallel shards of a step: its ``data_parallel`` execution key when set (see
    linepo.workflow.config.EXECUTION_KEYS), else one shard per ``gpus_per_shard`` of the GPUs
    its job was given (``resources.<stage>.gpu``), at least 1."""
    explicit = execution.get("data_parallel")
    if explicit is not None:
        return int(explicit)
    try:
        gpus = int(gpus or 0)
    except (TypeError, ValueError):
        gpus = 0
    return max(1, gpus // max(1, int(gpus_per_shard)))


def shard_bounds(num_items: int, num_shards: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]``: ``num_items`` cut into at most ``num_shards`` contiguous, non-empty blocks.

    The first ``num_items % num_shards`` blocks hold one item more; with fewer items than
    shards there is one block per item. Every item is in exactly one block, in order.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    shards = min(num_shards, num_items)
    if shards == 0:
        return []
    size, extra = divmod(num_items, shards)
    bounds, start = [], 0
    for k in range(shards):
        stop = start + size + (k < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


def visible_devices() -> list[str]:
    """The CUDA devices this process may use: ``CUDA_VISIBLE_DEVICES`` (as SLURM sets it) or all.

    Counting them creates no CUDA context, so the parent holds no GPU memory.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return []
    return [str(i) for i in range(torch.cuda.device_count())]


def device_groups(num_shards: int, per_shard: int, option: str) -> list[str | None]:
    """``CUDA_VISIBLE_DEVICES`` for each shard: ``per_shard`` devices each, disjoint.

    Without GPUs every shard gets None (the workers share the CPU).

    Raises:
        InputError: GPUs are visible but fewer than ``num_shards × per_shard``.
    """
    devices = visible_devices()
    if not devices:
        return [None] * num_shards
    need = num_shards * per_shard
    if len(devices) < need:
        raise InputError(f"{option}: {num_shards} shard(s) x {per_shard} GPU(s) each need {need} GPUs, "
                         f"but {len(devices)} are visible ({','.join(devices)})")
    return [",".join(devices[k * per_shard:(k + 1) * per_shard]) for k in range(num_shards)]


def worker_env(devices: str | None, num_workers: int) -> dict:
    """The environment of one worker: its GPUs, or its share of the CPU threads."""
    env = dict(os.environ)
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = devices
    elif "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // num_workers))
    return env


def free_port() -> int:
    """A TCP port free on this host now (for torch.distributed's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def linepo_command(*args: str) -> list[str]:
    """``python -m linepo.cli ARGS``, with this interpreter (works without an installed entry point)."""
    return [sys.executable, "-m", "linepo.cli", *args]


@dataclass
class WorkerResult:
    label: str
    returncode: int
    error: str | None  # the worker's own one-line error, without its "linepo <cmd>: error: " prefix
    stdout: list[str]  # lines it printed to stdout (e.g. its JSON stats)


def _pump(stream, prefix: str, sink, result: WorkerResult, keep: list | None) -> None:
    for line in stream:
        line = line.rstrip("\n").split("\r")[-1]  # a progress bar's last state only
        if not line.strip():
            continue
        if result.error is None and _ERROR_LINE.match(line):
            result.error = _ERROR_LINE.sub("", line, count=1)
            continue  # the parent prints it, once
        if keep is not None:
            keep.append(line)
        print(f"{prefix}{line}", file=sink, flush=True)


def run_workers(commands: list[list[str]], envs: list[dict], labels: list[str], *,
                echo_stdout: bool = False) -> list[WorkerResult]:
    """Run ``commands`` at once; return each one's result (in order) once all have ended.

    Their stderr lines are echoed to ours, prefixed with ``[label]`` when there are
    several; their stdout lines are kept (and echoed to our stdout when ``echo_stdout``).
    When one fails, the others are terminated (their results then say so).
    """
    prefixes = [f"[{label}] " if len(commands) > 1 else "" for label in labels]
    results = [WorkerResult(label, -1, None, []) for label in labels]
    procs, threads = [], []
    try:
        for command, env, prefix, result in zip(commands, envs, prefixes, results):
            proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    bufsize=1, errors="replace")
            procs.append(proc)
            for stream, sink, keep in ((proc.stderr, sys.stderr, None),
                                       (proc.stdout, sys.stdout if echo_stdout else _Null(), result.stdout)):
                thread = threading.Thread(target=_pump, args=(stream, prefix, sink, result, keep), daemon=True)
                thread.start()
                threads.append(thread)
        failed = False
        while any(p.poll() is None for p in procs):
            if not failed and any(p.poll() not in (None, 0) for p in procs):
                failed = True
                for p in procs:
                    if p.poll() is None:
                        p.terminate()
            time.sleep(0.05)
    finally:
        for p in procs:  # only on an exception above (e.g. KeyboardInterrupt): leave no orphan
            if p.poll() is None:
                p.kill()
                p.wait()
    for thread in threads:
        thread.join(timeout=10)
    for proc, result in zip(procs, results):
        result.returncode = proc.returncode
    return results


class _Null:
    def write(self, _text):  # noqa: D401 - file protocol
        return 0

    def flush(self):
        return None


def first_failure(results: list[WorkerResult]) -> WorkerResult | None:
    """The worker that failed on its own (not one terminated because another failed)."""
    failed = [r for r in results if r.returncode != 0]
    if not failed:
        return None
    # A worker that exited by itself (code > 0) with its own error line, before those we terminated.
    for keep in (lambda r: r.error is not None and r.returncode > 0, lambda r: r.returncode > 0,
                 lambda r: r.error is not None):
        own = [r for r in failed if keep(r)]
        if own:
            return own[0]
    return failed[0]


def exit_code(result: WorkerResult) -> int:
    """Input errors (2) stay input errors; anything else is 1."""
    return 2 if result.returncode == 2 else 1


def run_shards(command: str, bounds: list[tuple[int, int]], devices: list[str | None], worker_args) -> int | None:
    """Run ``linepo <command> *worker_args(k)`` for every shard k, each pinned to its devices.

    Returns None when every worker succeeded; otherwise prints the first failure's one line
    (``linepo <command>: error: shard k/N ...: reason``) and returns the exit code to give.
    """
    commands, envs, labels = [], [], []
    for k, ((lo, hi), device) in enumerate(zip(bounds, devices)):
        commands.append(linepo_command(command, *worker_args(k)))
        envs.append(worker_env(device, len(bounds)))
        labels.append(f"shard {k + 1}/{len(bounds)} prompts {lo}-{hi - 1}"
                      + (f" cuda:{device}" if device is not None else ""))
    failure = first_failure(run_workers(commands, envs, labels))
    if failure is None:
        return None
    reason = failure.error or f"exited with code {failure.returncode}"
    print(f"linepo {command}: error: {failure.label}: {reason}", file=sys.stderr)
    return exit_code(failure)


def last_json(lines: list[str]) -> dict:
    for line in reversed(lines):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return {}


@contextmanager
def shard_folder(out: Path):
    """A temp folder beside ``out`` (same file system, so no large copies through /tmp), always removed."""
    from linepo.schemas import remove_stale_temporaries

    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)  # a killed run's shards
    folder = Path(tempfile.mkdtemp(prefix=f".{out.name}.shards-", dir=out.parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Merged:
    """What the workers of a sharded command wrote, in shard (= prompt) order."""

    rows: list[dict]
    metadata: list[dict]  # each shard's file metadata
    seconds: float


def run_sharded_command(command: str, out: Path, bounds: list[tuple[int, int]], per_shard: int, option: str, *,
                        write_input, worker_args, kind: str) -> "Merged | int":
    """The one sharded run-and-merge of ``linepo sample`` and ``linepo judge``.

    Writes each shard's input with ``write_input(k, lo, hi, path)`` into a temp folder beside
    ``out``, runs ``linepo <command> *worker_args(input, output)`` for every shard pinned to
    its ``per_shard`` devices, and reads the outputs (artefact ``kind``) back in order.

    Returns:
        the merged rows and metadata, or the exit code of the first failing worker (its one
        error line already printed).
    """
    from linepo.schemas import read_metadata, read_table

    devices = device_groups(len(bounds), per_shard, option)
    start = time.perf_counter()
    with shard_folder(out) as folder:
        for k, (lo, hi) in enumerate(bounds):
            write_input(k, lo, hi, folder / f"input-{k}.parquet")
        failed = run_shards(command, bounds, devices, lambda k: worker_args(folder / f"input-{k}.parquet",
                                                                             folder / f"output-{k}.parquet"))
        if failed is not None:
            return failed
        rows, metadata = [], []
        for k in range(len(bounds)):
            path = folder / f"output-{k}.parquet"
            rows.extend(read_table(path, kind).to_pylist())
            metadata.append(read_metadata(path))
    return Merged(rows, metadata, time.perf_counter() - start)

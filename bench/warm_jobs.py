"""Warm local jobs (linepo.warm): a workflow's wall time cold vs warm, and what each job pays to start.

    HF_HUB_OFFLINE=1 python bench/warm_jobs.py                     # a tiny config (~3 min on 2 cores)
    HF_HUB_OFFLINE=1 python bench/warm_jobs.py --config default    # the embedded default (~25 min)
    HF_HUB_OFFLINE=1 python bench/warm_jobs.py --config default --replicates 1 --also-replicates 2 --keep DIR

Runs the same config twice in fresh copies of the workflow, in one process so that both
see the same machine: cold (``LINEPO_WARM=0``: every job imports torch and transformers)
and warm (the fork server of ``onstart``). Prints both wall times, their ratio (goal:
warm ≤ ½ cold), whether ``results/`` is byte-identical, the mean job time per rule from
each job's ``benchmarks/*.tsv``, and the per-job start cost: cold, the interpreter plus
``linepo`` plus the torch/transformers imports a model job starts with; warm, a ``linepo``
command's round trip through a running server (client start, hand-over, fork, exit).
``--also-replicates N`` adds a third run, warm, of the same config with N replicates, timed
against the cold one (does warm make room for replicates at today's cost?). ``--keep DIR``
keeps the workflow copies (their results and logs) in DIR.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])

import yaml  # noqa: E402

from linepo.warm import server  # noqa: E402
from workflow_utils import tiny_config, workflow_with_config  # noqa: E402

COLD_IMPORTS = ("import linepo.cli, torch, transformers; "
                "from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer")
#: the tiny config's runs: those of tests/test_workflow_llm.py (one INPO run, 2 rounds x 2 splits)
TINY_RUNS = {"inpo": {"algorithm": "inpo", "eta": 4.0, "eta_tau": 0.6, "rounds": 2}}
CLIENT = [sys.executable, "-c", "import sys; from linepo.cli import main; sys.exit(main())"]


def digest(root: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        sha.update(str(path.relative_to(root)).encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return sha.hexdigest()


def job_times(root: Path) -> dict[str, list[float]]:
    """Seconds of every job by rule folder (benchmarks/<rule>/...tsv, column s)."""
    times = defaultdict(list)
    for path in root.glob("benchmarks/**/*.tsv"):
        rows = path.read_text().splitlines()
        if len(rows) > 1:
            times[path.relative_to(root / "benchmarks").parts[0]].append(float(rows[1].split("\t")[0]))
    return times


def run_workflow(directory: Path, warm: bool, cores: int) -> float:
    env = {**os.environ, "LINEPO_WARM": "1" if warm else "0"}
    begun = time.monotonic()
    result = subprocess.run(["snakemake", "--cores", str(cores)], cwd=directory, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - begun
    if result.returncode != 0:
        sys.exit(f"{'warm' if warm else 'cold'} run failed:\n{result.stderr[-3000:]}")
    return seconds


def median_seconds(command: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        begun = time.monotonic()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.monotonic() - begun)
    return statistics.median(times)


def start_costs(directory: Path, repeats: int) -> tuple[float, float]:
    """(cold, warm) seconds before a model job's first line of work."""
    cold = median_seconds([sys.executable, "-c", COLD_IMPORTS], repeats)
    previous = Path.cwd()
    os.chdir(directory)
    try:
        server.start(True)
        subprocess.run([*CLIENT, "--help"], check=True, capture_output=True)  # the server imports once
        warm = median_seconds([*CLIENT, "--help"], repeats)
    finally:
        server.stop()
        os.chdir(previous)
    return cold, warm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=["tiny", "default"], default="tiny")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="start-cost measurements (median)")
    parser.add_argument("--keep", metavar="DIR", help="run in DIR/cold and DIR/warm and keep them (default: a temporary folder)")
    parser.add_argument("--replicates", type=int, help="the cold and warm runs' replicates (default: the config's)")
    parser.add_argument("--also-replicates", type=int, metavar="N",
                        help="then a third run, warm, with N replicates, timed against the cold run")
    args = parser.parse_args()
    config = (yaml.safe_load((REPO / "config.yaml").read_text()) if args.config == "default"
              else tiny_config(runs=TINY_RUNS))
    if args.replicates:
        config["replicates"] = args.replicates
    with (contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory(prefix="warm-jobs-")) as tmp:
        cold_dir = workflow_with_config(Path(tmp) / "cold", config)
        warm_dir = workflow_with_config(Path(tmp) / "warm", config)
        cold = run_workflow(cold_dir, warm=False, cores=args.cores)
        warm = run_workflow(warm_dir, warm=True, cores=args.cores)
        identical = digest(cold_dir / "results") == digest(warm_dir / "results")
        cold_jobs, warm_jobs = job_times(cold_dir), job_times(warm_dir)
        if args.also_replicates:
            more_dir = workflow_with_config(Path(tmp) / f"warm-{args.also_replicates}-replicates",
                                            {**config, "replicates": args.also_replicates})
            more = run_workflow(more_dir, warm=True, cores=args.cores)
            more_jobs = sum(len(v) for v in job_times(more_dir).values())
        cold_start, warm_start = start_costs(Path(tmp), args.repeats)
    jobs = sum(len(v) for v in cold_jobs.values())
    print(f"config {args.config}: {jobs} jobs, --cores {args.cores}")
    print(f"wall time   cold {cold:7.1f} s   warm {warm:7.1f} s   warm/cold {warm / cold:.2f} (goal <= 0.50)")
    print(f"results/    byte-identical: {identical}")
    if args.also_replicates:
        print(f"warm with {args.also_replicates} replicates ({more_jobs} jobs): {more:7.1f} s, "
              f"{more / cold:.2f} of the cold run (goal <= 1.00)")
    print(f"start cost  cold {cold_start:7.2f} s   warm {warm_start:7.2f} s   per job (median of {args.repeats})")
    print("mean job seconds by rule (benchmarks/*.tsv)   cold    warm")
    for rule in sorted(cold_jobs):
        c, w = statistics.mean(cold_jobs[rule]), statistics.mean(warm_jobs.get(rule, [float("nan")]))
        print(f"  {rule:<20} x{len(cold_jobs[rule]):<3}                    {c:6.2f}  {w:6.2f}")
    if not identical:
        sys.exit("results differ between the cold and the warm run")


if __name__ == "__main__":
    main()

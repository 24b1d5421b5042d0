"""scripts/gpu_smoke.py on the CPU with tiny sizes: one LINE-PO round end to end, throughput per stage.

    HF_HUB_OFFLINE=1 python -m pytest tests/test_gpu_smoke.py -q

On a GPU machine the lead runs ``PYTHONPATH=. python scripts/gpu_smoke.py`` (default sizes).
The script must run from a bare checkout with PYTHONPATH=. (no installed package, no
snakemake, datasets, scipy or matplotlib): the test runs it so and checks linepo imported none.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("accelerate")

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--device", "cpu", "--prompts", "6", "--splits", "2", "--n", "3", "--max-new-tokens", "8", "--hidden", "32",
        "--layers", "1", "--sft-steps", "2", "--train-batch-size", "6"]

# Run the script, then list which of the packages it must not need linepo imported (beyond what
# torch, transformers and accelerate import by themselves where those packages are installed).
FORBIDDEN = ("snakemake", "datasets", "scipy", "matplotlib", "vllm", "jsonschema", "yaml")
WRAPPER = """
import json, runpy, sys
sys.argv = sys.argv[1:]
forbidden = set(%r)
# What torch, transformers' Trainer and accelerate import by themselves where installed:
import torch, accelerate, transformers.generation
from transformers import Trainer, TrainingArguments
before = {name.split('.')[0] for name in sys.modules} & forbidden
try:
    runpy.run_path(sys.argv[0], run_name='__main__')
except SystemExit as exit:
    code = exit.code
else:
    code = 0
after = {name.split('.')[0] for name in sys.modules} & forbidden
print('IMPORTED ' + json.dumps(sorted(after - before)), file=sys.stderr)
sys.exit(code)
""" % (FORBIDDEN,)


def run_script(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=".", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TMPDIR=str(tmp_path))
    return subprocess.run([sys.executable, "-c", WRAPPER, "scripts/gpu_smoke.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def imported(result) -> list[str]:
    line = [line for line in result.stderr.splitlines() if line.startswith("IMPORTED ")][-1]
    return json.loads(line[len("IMPORTED "):])


@pytest.mark.slow
def test_smoke_round_on_cpu_reports_every_stage(tmp_path):
    result = run_script(*TINY, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    stages = [row["stage"] for row in report["stages"]]
    assert stages == ["build+sft"] + [f"s{s} {stage}" for s in range(2)
                                      for stage in ("sample", "judge", "pairs", "score", "train")]
    by_stage = {row["stage"]: row for row in report["stages"]}
    assert by_stage["s0 sample"]["samples"] == 6 * 3 and by_stage["s0 sample"]["tokens_per_s"] > 0
    assert by_stage["s0 judge"]["comparisons"] == 6 * 3  # 3 pairs per prompt
    assert by_stage["s1 train"]["tokens_per_s"] > 0 and by_stage["s1 train"]["steps"] >= 1
    assert by_stage["s1 score"]["pairs"] == 2 * by_stage["s1 pairs"]["pairs"]  # π_ref ≠ μ_2: two models
    assert all("peak_rss_mib" in row for row in report["stages"])
    assert report["samples"] == 2 * 6 * 3 and report["pairs"] > 0
    for line in ("s0 sample", "s1 train", "round done"):
        assert line in result.stdout
    assert not list(tmp_path.glob("linepo-gpu-smoke-*")), "the temp folder is removed"
    assert imported(result) == [], "linepo's code paths import none of these"


def test_bad_arguments_exit_2_with_one_line(tmp_path):
    result = run_script("--n", "1", "--device", "cpu", tmp_path=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[0] == "gpu_smoke: error: --n must be at least 2 (pairs need two samples)"

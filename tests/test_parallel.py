"""Data-parallel sampling and judging (linepo.stages.parallel): no prompt dropped, sharded == unsharded.

    HF_HUB_OFFLINE=1 python -m pytest tests/test_parallel.py -q

The paper's public code gives each of N GPUs ``len(prompts) // N`` prompts and drops the
rest; here 1,001 prompts on 4 shards must all come back, in order, and the merged file must
be byte-identical to the one a single process writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from linepo import toy as embedded
from linepo.errors import InputError
from linepo.stages.parallel import device_groups, shard_bounds, shard_count
from linepo.schemas import read_metadata, read_table, write_table

NUM_PROMPTS = 1001
SHARDS = 4


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "linepo.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600)


# ----------------------------------------------------------------------------- units


def test_shard_bounds_cover_every_item_once_in_order():
    bounds = shard_bounds(NUM_PROMPTS, SHARDS)
    assert bounds == [(0, 251), (251, 501), (501, 751), (751, 1001)]
    for n in range(0, 30):
        for k in range(1, 9):
            got = shard_bounds(n, k)
            assert [i for lo, hi in got for i in range(lo, hi)] == list(range(n))
            assert all(hi > lo for lo, hi in got) and len(got) == min(n, k)
            sizes = [hi - lo for lo, hi in got]
            assert not sizes or max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError):
        shard_bounds(3, 0)


def test_shard_count_from_config_or_job_gpus():
    assert shard_count({}, 0) == 1 and shard_count({}, None) == 1
    assert shard_count({}, 4) == 4 and shard_count({}, "4") == 4
    assert shard_count({}, 8, gpus_per_shard=2) == 4  # vLLM tensor parallelism 2: 4 engines on 8 GPUs
    assert shard_count({"data_parallel": 3}, 8) == 3


def test_execution_keys_leave_their_sections_once_at_validation():
    """How a step runs (workers, launcher) is kept apart from what it computes: node ids,
    rule params and judge configs never see it."""
    import copy

    import yaml

    from linepo.workflow.config import validate_config
    from linepo.workflow.plan import build_plan
    from workflow_utils import REPO

    base = yaml.safe_load((REPO / "config.yaml").read_text())
    spread = copy.deepcopy(base)
    spread["sampling"]["data_parallel"] = 4
    spread["judge"]["data_parallel"] = 2
    config = validate_config(spread)
    assert "data_parallel" not in config["sampling"] and "data_parallel" not in config["judge"]
    assert config["_execution"]["sampling"] == {"data_parallel": 4} and config["_execution"]["judge"] == {"data_parallel": 2}
    assert config["evaluation"]["judge"] == config["judge"]
    plain = build_plan(validate_config(base))
    assert build_plan(config).policies.keys() == plain.policies.keys()


def test_device_groups(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,6,7")
    assert device_groups(2, 2, "--data-parallel") == ["3,5", "6,7"]
    assert device_groups(3, 1, "--data-parallel") == ["3", "5", "6"]
    with pytest.raises(InputError, match="--data-parallel: 3 shard.*need 6 GPUs, but 4 are visible"):
        device_groups(3, 2, "--data-parallel")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert device_groups(4, 1, "--data-parallel") == [None] * 4  # no GPU: workers share the CPU


# ----------------------------------------------------------------------------- sampling


@pytest.fixture(scope="module")
def policy_and_prompts(tmp_path_factory):
    pytest.importorskip("torch")
    from helpers import build_tiny_policy

    root = tmp_path_factory.mktemp("parallel")
    build_tiny_policy(root / "policy", seed=0)
    topics = [topic for topic, _ in embedded.TOPICS]
    rows = [{"prompt_id": f"q{i:04d}", "prompt": f"Question {i}: explain {topics[i % len(topics)]}.",
             "source": "test"} for i in range(NUM_PROMPTS)]
    write_table(rows, root / "prompts.parquet", "prompts")
    return root


SAMPLE_FLAGS = ["--n", "2", "--temperature", "1.0", "--max-new-tokens", "4", "--seed", "3", "--batch-size", "64",
                "--device", "cpu"]


@pytest.mark.slow
def test_sharded_sampling_keeps_every_prompt_and_equals_unsharded(policy_and_prompts):
    root = policy_and_prompts
    common = ["sample", "--policy", str(root / "policy"), "--prompts", str(root / "prompts.parquet"), *SAMPLE_FLAGS]
    one = cli(*common, "--out", str(root / "one.parquet"))
    assert one.returncode == 0, one.stderr[-2000:]
    four = cli(*common, "--out", str(root / "four.parquet"), "--data-parallel", str(SHARDS),
               env={"CUDA_VISIBLE_DEVICES": ""})
    assert four.returncode == 0, four.stderr[-2000:]
    assert "from 4 shards" in four.stdout
    for k, (lo, hi) in enumerate(shard_bounds(NUM_PROMPTS, SHARDS)):
        assert f"[shard {k + 1}/4 prompts {lo}-{hi - 1}]" in four.stderr  # each worker's log, labelled
    table = read_table(root / "four.parquet", "samples")
    expected = [f"q{i:04d}" for i in range(NUM_PROMPTS) for _ in range(2)]
    assert table.column("prompt_id").to_pylist() == expected  # all 1,001 prompts, in prompt order
    assert table.column("sample_index").to_pylist() == [0, 1] * NUM_PROMPTS
    assert digest(root / "four.parquet") == digest(root / "one.parquet")
    assert not [p for p in root.iterdir() if ".shards-" in p.name]


@pytest.mark.slow
def test_a_failing_worker_fails_the_command_with_one_line_and_no_file(policy_and_prompts, tmp_path):
    root = policy_and_prompts
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    out = tmp_path / "out" / "samples.parquet"
    result = cli("sample", "--policy", str(broken), "--prompts", str(root / "prompts.parquet"), *SAMPLE_FLAGS,
                 "--out", str(out), "--data-parallel", "2", env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("linepo sample: error: shard ") and "cannot load" in errors[0]
    assert result.stderr.strip().splitlines()[-1] == errors[0]
    assert not out.exists() and not any(out.parent.iterdir())  # no output, no shard folder


def test_sharded_sampling_bad_input_exits_before_any_worker(policy_and_prompts, tmp_path, capsys):
    from linepo.cli import main

    root = policy_and_prompts
    out = tmp_path / "samples.parquet"
    base = ["sample", "--prompts", str(root / "prompts.parquet"), *SAMPLE_FLAGS, "--out", str(out)]
    assert main([*base, "--policy", str(tmp_path / "nope"), "--data-parallel", "4"]) == 2
    assert main([*base, "--policy", str(root / "policy"), "--data-parallel", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "policy folder not found" in err[0] and "--data-parallel" in err[1]
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- judging


@pytest.fixture(scope="module")
def styled_samples(tmp_path_factory):
    """3 samples per prompt in the embedded styles, so the synthetic oracle has real preferences."""
    root = tmp_path_factory.mktemp("judge")
    rng = np.random.default_rng(0)
    prompts = embedded.prompts("train")
    rows = []
    for i in range(NUM_PROMPTS):
        for k in range(3):
            style = embedded.STYLES[int(rng.integers(3))]
            rows.append({"prompt_id": f"q{i:04d}", "prompt": prompts[i % len(prompts)] + f" ({i})", "sample_index": k,
                         "response": embedded.response(i % len(prompts), style, rng), "num_tokens": 10,
                         "finish_reason": "stop", "sampler_settings": "{}"})
    write_table(rows, root / "samples.parquet", "samples")
    return root


def test_sharded_judging_keeps_every_prompt_and_equals_unsharded(styled_samples):
    root = styled_samples
    config = json.dumps({"type": "synthetic"})
    one = cli("judge", "--samples", str(root / "samples.parquet"), "--judge-config", config, "--seed", "5",
              "--out", str(root / "one.parquet"))
    assert one.returncode == 0, one.stderr[-2000:]
    four = cli("judge", "--samples", str(root / "samples.parquet"), "--judge-config", config, "--seed", "5",
               "--out", str(root / "four.parquet"), "--data-parallel", str(SHARDS), env={"CUDA_VISIBLE_DEVICES": ""})
    assert four.returncode == 0, four.stderr[-2000:]
    stats = json.loads(four.stdout.strip().splitlines()[-1])
    assert stats["shards"] == 4 and stats["prompts"] == NUM_PROMPTS and stats["comparisons"] == 3 * NUM_PROMPTS
    table = read_table(root / "four.parquet", "judgments")
    assert sorted(set(table.column("prompt_id").to_pylist())) == [f"q{i:04d}" for i in range(NUM_PROMPTS)]
    assert read_metadata(root / "four.parquet") == read_metadata(root / "one.parquet")
    assert read_metadata(root / "one.parquet")["judge"] == {"type": "synthetic"}
    assert digest(root / "four.parquet") == digest(root / "one.parquet")
    outcomes = table.column("outcome").to_pylist()
    assert 0 < sum(outcomes) < len(outcomes)  # real, varied oracle outcomes were merged


def test_sharded_judging_bad_config_is_one_line(styled_samples, tmp_path, capsys):
    from linepo.cli import main

    code = main(["judge", "--samples", str(styled_samples / "samples.parquet"), "--out", str(tmp_path / "j.parquet"),
                 "--judge-config", '{"type": "synthetic", "matrix": [[0.5, 2], [0, 0.5]]}', "--data-parallel", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("linepo judge: error:") and "matrix" in err[0]
    assert not list(tmp_path.iterdir())


def test_first_failure_prefers_the_worker_that_failed_by_itself():
    from linepo.stages.parallel import WorkerResult, exit_code, first_failure

    terminated = WorkerResult("shard 1/2", -15, "cannot load", [])  # printed its error, then was stopped
    failed = WorkerResult("shard 2/2", 2, "cannot load", [])
    ok = WorkerResult("shard 3/3", 0, None, [])
    assert first_failure([terminated, failed, ok]) is failed and exit_code(failed) == 2
    assert first_failure([ok]) is None
    assert exit_code(WorkerResult("x", 1, None, [])) == 1


def test_a_data_parallel_key_in_a_judge_config_is_refused_with_the_flag_to_use(styled_samples, tmp_path, capsys):
    from linepo.cli import main

    code = main(["judge", "--samples", str(styled_samples / "samples.parquet"), "--out", str(tmp_path / "j.parquet"),
                 "--judge-config", '{"type": "synthetic", "data_parallel": 2}'])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].endswith("key data_parallel: not a judge setting; give --data-parallel")
    assert not list(tmp_path.iterdir())

"""The numerics environment in provenance: every artefact a model computed records where, its
history carries its inputs', and a tree or table that mixes environments is named as such.

    HF_HUB_OFFLINE=1 python -m pytest tests/test_numerics.py -q
"""

from __future__ import annotations

import json

import pytest
import torch

from helpers import build_tiny_policy
from linepo import numerics
from linepo.cli import main
from linepo.provenance import PROVENANCE_FILE, recorded_provenance
from linepo.schemas import write_table

OTHER = {"torch": "2.0.0", "threads": 8, "cpu_kernels": "AVX2", "numpy": "1.26.4"}


def prompt_rows(n: int = 3) -> list[dict]:
    return [{"prompt_id": f"p{i}", "prompt": f"Question {i}?", "source": "test"} for i in range(n)]


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("policy") / "model"
    build_tiny_policy(folder)
    return folder


def test_the_job_environment_names_the_torch_build_its_kernels_and_threads():
    env = numerics.job_environment()
    assert env["torch"] == torch.__version__
    assert env["threads"] == torch.get_num_threads()
    assert env["cpu_kernels"] == torch.backends.cpu.get_cpu_capability()
    assert "cuda" not in env  # no GPU was used in this process
    assert numerics.describe(env).startswith(f"torch {torch.__version__}, ")


def test_a_saved_policy_records_its_environment_and_an_output_inherits_its_inputs(policy, tmp_path):
    own = numerics.job_environment()
    assert json.loads((policy / PROVENANCE_FILE).read_text())[numerics.KEY] == [own]
    assert numerics.recorded(policy) == [own]
    # a table no model computed (judging with the oracle, pairing) records only its inputs' histories
    plain = write_table(prompt_rows(), tmp_path / "prompts.parquet", "prompts")
    assert numerics.KEY not in recorded_provenance(plain)
    made = write_table(prompt_rows(), tmp_path / "made.parquet", "prompts", inputs=[str(policy), str(plain)])
    assert recorded_provenance(made)[numerics.KEY] == [own]
    # a computed table made from an input of another environment carries both, in a fixed order
    record = json.loads((policy / PROVENANCE_FILE).read_text())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / PROVENANCE_FILE).write_text(json.dumps({**record, "files": {}, numerics.KEY: [OTHER]}))
    mixed = write_table(prompt_rows(), tmp_path / "mixed.parquet", "prompts", inputs=[str(elsewhere)], computed=True)
    assert recorded_provenance(mixed)[numerics.KEY] == numerics.merge([own, OTHER]) == numerics.merge([OTHER, own])
    assert len(numerics.merge([own, OTHER, dict(own)])) == 2


def test_shards_environments_reach_the_merged_table(tmp_path):
    shard = {"provenance": {"sha256": "x", numerics.KEY: [OTHER]}}
    merged = write_table(prompt_rows(), tmp_path / "merged.parquet", "prompts", shards=[shard, {}])
    assert recorded_provenance(merged)[numerics.KEY] == [OTHER]


def test_the_summary_names_one_environment_or_warns_of_a_mix(policy, tmp_path):
    own = numerics.job_environment()
    assert numerics.summary([policy, tmp_path / "not-yet"]) == f"Computed with {numerics.describe(own)}."
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"exploitability": 0.1, numerics.KEY: [OTHER]}))
    line = numerics.summary([policy, report])
    assert line.startswith("WARNING: these results mix 2 numerics environments")
    assert "CPU kernels AVX2, 8 threads" in line and numerics.describe(own) in line
    assert numerics.summary([tmp_path / "not-yet"]) == ""


def test_verify_names_the_tree_environment(policy, tmp_path, capsys):
    import shutil

    tree = tmp_path / "results"
    shutil.copytree(policy, tree / "policies" / "a")
    (tree / "policies" / ".b.tmp").mkdir()  # a killed save's temp folder is not an artefact
    assert main(["verify", str(tree)]) == 0
    out = capsys.readouterr().out
    assert f"linepo verify: {tree}: Computed with {numerics.describe(numerics.job_environment())}." in out

"""Provenance digests: a readable but wrong artefact is caught where it is read, and `linepo verify`
finds it (and stale outputs) in a whole results tree and prints the command that heals it.

    HF_HUB_OFFLINE=1 python -m pytest tests/test_provenance.py -q
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import build_tiny_policy, sha256
from linepo.cli import main
from linepo.errors import InputError
from linepo.provenance import (PROVENANCE_FILE, check_policy_folder, folder_problems, recorded_provenance,
                               table_digest, verify_tree)
from linepo.schemas import read_metadata, read_table, to_table, write_table
from workflow_utils import planned_jobs, snakemake, tiny_config, workflow_with_config


def sample_rows(n: int = 36) -> list[dict]:
    return [{"prompt_id": f"p{i // 3}", "prompt": f"Question {i // 3}?", "sample_index": i % 3,
             "response": "é" * i, "response_token_ids": None if i % 4 == 0 else list(range(i)), "num_tokens": i,
             "finish_reason": "stop", "stop_token_id": None if i % 2 else 5, "sampler_settings": "{}"}
            for i in range(n)]


def cut_rows(path: Path, keep: int) -> None:
    """The attack: read, slice, rewrite with the original schema metadata (provenance included)."""
    table = pq.read_table(path)
    pq.write_table(table.slice(0, keep), path)
    assert json.loads(pq.read_schema(path).metadata[b"linepo"])["provenance"]["rows"] == table.num_rows


def random_weights(folder: Path) -> None:
    """The attack: other numbers behind an intact safetensors header."""
    import torch
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    torch.manual_seed(1)
    save_file({k: torch.randn_like(v) for k, v in weights.items()}, folder / "model.safetensors",
              metadata={"format": "pt"})


# ----------------------------------------------------------------------------- tables


def test_rows_cut_with_the_metadata_kept_fail_the_read_with_one_line(tmp_path):
    path = tmp_path / "scored.parquet"
    write_table(sample_rows(), path, "samples")
    cut_rows(path, 3)
    with pytest.raises(InputError) as err:
        read_table(path, "samples")
    assert str(err.value) == (f"{path}: content does not match its recorded digest (36 rows recorded, 3 found): the "
                              f"file was changed after it was written; rerun its rule: snakemake --cores all "
                              f"--forcerun {path}")


def test_a_changed_value_fails_and_compression_or_chunks_do_not(tmp_path):
    path = tmp_path / "s.parquet"
    write_table(sample_rows(), path, "samples")
    table = pq.read_table(path)
    pq.write_table(table, path, compression="gzip", row_group_size=5)  # same data, other bytes: still fine
    assert read_table(path, "samples").num_rows == 36
    responses = table.column("response").to_pylist()
    responses[7] = "changed"
    pq.write_table(table.set_column(3, "response", pa.array(responses)), path)
    with pytest.raises(InputError, match=r"\(36 rows recorded, 36 found\)"):
        read_table(path, "samples")
    assert table_digest(to_table(sample_rows()[3:10], "samples")) == table_digest(table.slice(3, 7))


def test_a_hand_made_file_without_a_digest_reads_as_before(tmp_path):
    path = tmp_path / "hand.parquet"
    pq.write_table(pa.table({"prompt_id": ["a"], "prompt": ["Hi?"], "source": ["me"]}), path)
    assert read_table(path, "prompts").num_rows == 1
    assert recorded_provenance(path) is None


def test_outputs_record_their_inputs_and_rewriting_gives_the_same_bytes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_table(sample_rows(), "samples.parquet", "samples", metadata={"n": 3})
    for name in ("a.parquet", "b.parquet"):
        write_table(sample_rows(6), name, "samples", inputs=["samples.parquet", "hub/model-id"])
    assert Path("a.parquet").read_bytes() == Path("b.parquet").read_bytes()
    recorded = recorded_provenance("a.parquet")
    own = recorded_provenance("samples.parquet")
    assert recorded["rows"] == 6 and own["rows"] == 36
    assert recorded["inputs"] == [{"path": "samples.parquet", "sha256": own["sha256"], "rows": 36}]  # no hub id
    assert read_metadata("samples.parquet") == {"kind": "samples", "n": 3}  # the caller's metadata only


def test_verify_finds_a_stale_output_and_an_input_rewritten_outside_linepo(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    results = Path("results")
    write_table(sample_rows(), results / "samples.parquet", "samples")
    write_table(sample_rows(6), results / "made.parquet", "samples", inputs=["results/samples.parquet"])
    assert main(["verify"]) == 0
    write_table(sample_rows(30), results / "samples.parquet", "samples")  # rewritten by linepo: made.parquet is stale
    assert [p for p, _ in verify_tree(results)["problems"]] == ["results/made.parquet"]
    pq.write_table(pq.read_table(results / "samples.parquet").replace_schema_metadata(None).slice(0, 3),
                   results / "samples.parquet")  # and now by something else, no digest left
    report = verify_tree(results)
    assert [p for p, _ in report["problems"]] == ["results/made.parquet", "results/samples.parquet"]
    assert report["rebuild"] == ["results/samples.parquet"]  # made.parquet reruns after it: no need to name it
    (results / "samples.parquet").unlink()
    assert main(["verify", "results"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-3] == "results/made.parquet: made from results/samples.parquet, which is missing"
    assert out[-1] == "  snakemake --cores all --forcerun results/made.parquet"


# ----------------------------------------------------------------------------- model folders


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("policy") / "model"
    build_tiny_policy(folder)
    return folder


def test_weights_overwritten_in_a_saved_policy_fail_the_load_with_one_line(policy, tmp_path):
    from linepo.stages.models import load_policy

    record = json.loads((policy / PROVENANCE_FILE).read_text())
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(record["files"])
    load_policy(policy, device="cpu")  # as saved: loads
    folder = tmp_path / "model"
    shutil.copytree(policy, folder)
    random_weights(folder)
    with pytest.raises(InputError) as err:
        load_policy(folder, device="cpu")
    assert str(err.value) == (f"{folder}: model.safetensors does not match its recorded sha256 "
                              f"({PROVENANCE_FILE}): the folder was changed after it was written; rerun its rule: "
                              f"snakemake --cores all --forcerun {folder}")
    (folder / PROVENANCE_FILE).unlink()  # a folder from elsewhere: nothing recorded, nothing checked
    check_policy_folder(folder)


def test_a_missing_or_added_weights_file_is_named(policy, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(policy, folder)
    (folder / "extra.safetensors").write_bytes(b"x")
    (folder / "tokenizer.json").unlink()
    assert folder_problems(folder) == [
        f"tokenizer.json is recorded in {PROVENANCE_FILE} but missing",
        f"extra.safetensors is not recorded in {PROVENANCE_FILE}: weights added after the folder was written"]


def test_saving_the_same_policy_twice_gives_the_same_bytes(policy, tmp_path):
    from linepo.stages.models import load_policy, save_policy

    model, tokenizer = load_policy(policy, device="cpu", dtype="float32")
    for name in ("a", "b"):
        save_policy(model, tokenizer, tmp_path / name / "model", inputs=[str(policy)])
    assert sha256(tmp_path / "a/model" / PROVENANCE_FILE) == sha256(tmp_path / "b/model" / PROVENANCE_FILE)
    inputs = json.loads((tmp_path / "a/model" / PROVENANCE_FILE).read_text())["inputs"]
    assert inputs == [{"path": str(policy), "sha256": json.loads((policy / PROVENANCE_FILE).read_text())["sha256"],
                       "files": len(json.loads((policy / PROVENANCE_FILE).read_text())["files"])}]


# ----------------------------------------------------------------------------- a workflow's tree

TARGET = "results/runs/dpo/replicate-0/steps.tsv"  # the training chain only: the evaluation adds minutes, nothing new here


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    config = tiny_config(runs={"dpo": {"algorithm": "dpo", "eta": 4.0}},
                         prompts={"source": "embedded", "max_prompts": 12, "num_splits": 1, "seed": 0})
    directory = workflow_with_config(tmp_path_factory.mktemp("provenance"), config)
    result = snakemake(directory, TARGET, "--cores", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return directory


def verify(workdir, monkeypatch, capsys) -> tuple[int, list[str]]:
    monkeypatch.chdir(workdir)
    code = main(["verify", "results"])
    return code, capsys.readouterr().out.splitlines()


@pytest.mark.slow
def test_verify_catches_a_cut_parquet_and_a_changed_policy_and_its_command_heals_them(workdir, monkeypatch, capsys):
    code, out = verify(workdir, monkeypatch, capsys)
    assert code == 0 and out[-1].startswith("linepo verify: results: 5 parquet files and 2 model folders match"), out
    scored = next((workdir / "results/scored").rglob("*.parquet")).relative_to(workdir)
    policy = next((workdir / "results/policies").rglob(PROVENANCE_FILE)).parent.relative_to(workdir)
    before = {p: sha256(workdir / p) for p in (scored, policy / "model.safetensors")}
    cut_rows(workdir / scored, 3)
    random_weights(workdir / policy)

    code, out = verify(workdir, monkeypatch, capsys)
    assert code == 1
    assert out[:2] == [
        f"{scored}: content does not match its recorded digest (36 rows recorded, 3 found): the file was changed "
        "after it was written",
        f"{policy}: model.safetensors does not match its recorded sha256 ({PROVENANCE_FILE}): the folder was changed "
        "after it was written"]
    command = shlex.split(out[-1])
    assert command == ["snakemake", "--cores", "all", "--forcerun", str(scored)]  # the policy is made from it

    planned = {rule for rule, _ in planned_jobs(snakemake(workdir, *command[1:], "-n").stdout)}
    assert {"score", "train"} <= planned  # the printed command is a valid plan of the tampered rules
    alone = snakemake(workdir, "-n", "--cores", "all", "--forcerun", str(policy))  # a directory() output as target
    assert "train" in {rule for rule, _ in planned_jobs(alone.stdout)}, alone.stderr[-2000:]
    healed = snakemake(workdir, TARGET, "--cores", "2", *command[3:])
    assert healed.returncode == 0, healed.stdout[-3000:] + healed.stderr[-3000:]
    code, out = verify(workdir, monkeypatch, capsys)
    assert code == 0, out
    assert {p: sha256(workdir / p) for p in before} == before  # rebuilt byte-identical

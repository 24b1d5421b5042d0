"""Bad inputs fail with one line, not a traceback (issue 13, items 3, 4, 5 and 9).

Through the real command line (:func:`linepo.cli.main`): corrupt weights (safetensors and
pickle), pickle weights without the opt-in (and with it), prompt files that are not UTF-8 or
hold one JSON object, prompts too long for the model, and a full disk. Each failure is exactly
one line on stderr, exit 2, and writes nothing.
"""

from __future__ import annotations

import errno
import json
import logging
import re
import shutil

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from helpers import build_tiny_policy  # noqa: E402

from linepo.cli import main  # noqa: E402
from linepo.errors import InputError, disk_full_message  # noqa: E402
from linepo.schemas import read_table, write_table  # noqa: E402


#: a progress bar's line (transformers' "Loading weights", tqdm): not part of the message
PROGRESS = re.compile(r"\d+%\|")


def run_cli(capsys, *argv) -> tuple[int, list[str], str]:
    """(exit code, stderr lines, stdout) of ``linepo *argv``."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and not PROGRESS.search(line)]
    return code, lines, out


def one_line_error(capsys, *argv) -> str:
    code, lines, _ = run_cli(capsys, *argv)
    assert code == 2, lines
    assert len(lines) == 1, lines
    return lines[0]


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def policies(tmp_path_factory):
    """A tiny safetensors policy, a pickle-only copy of it, and the copies with garbage weights."""
    import torch
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("policies")
    good = root / "good"
    build_tiny_policy(good)
    pickle_only = root / "pickle"
    shutil.copytree(good, pickle_only)
    state = AutoModelForCausalLM.from_pretrained(good).state_dict()
    torch.save(state, pickle_only / "pytorch_model.bin")
    (pickle_only / "model.safetensors").unlink()
    garbage = root / "garbage"
    shutil.copytree(good, garbage)
    (garbage / "model.safetensors").write_bytes(b"not a safetensors file" * 50)
    garbage_pickle = root / "garbage_pickle"
    shutil.copytree(pickle_only, garbage_pickle)
    (garbage_pickle / "pytorch_model.bin").write_bytes(b"not a pickle" * 50)
    for folder in (pickle_only, garbage, garbage_pickle):  # folders from elsewhere: no linepo provenance
        for record in folder.glob("linepo_provenance*"):
            record.unlink()
    return {"good": good, "pickle": pickle_only, "garbage": garbage, "garbage_pickle": garbage_pickle}


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.parquet"
    write_table([{"prompt_id": f"p{i}", "prompt": f"Question {i}?", "source": "test"} for i in range(3)],
                path, "prompts")
    return path


SAMPLE = ("--n", 1, "--max-new-tokens", 4, "--temperature", 0)


# ----------------------------------------------------------------------------- weights


@pytest.mark.parametrize("folder, flags, reason", [
    ("garbage", (), "SafetensorError"),
    ("garbage_pickle", ("--allow-pickle-weights",), "UnpicklingError"),
])
def test_corrupt_weights_are_one_line_naming_the_folder(policies, prompts, tmp_path, capsys, folder, flags, reason):
    out = tmp_path / "samples.parquet"
    line = one_line_error(capsys, "sample", "--policy", policies[folder], "--prompts", prompts, "--out", out,
                          *SAMPLE, *flags)
    assert line.startswith(f"linepo sample: error: {policies[folder]}: cannot load the policy (a corrupt weights file")
    assert reason in line
    assert not out.exists()


def test_pickle_weights_refused_without_the_opt_in(policies, prompts, tmp_path, capsys):
    out = tmp_path / "samples.parquet"
    line = one_line_error(capsys, "sample", "--policy", policies["pickle"], "--prompts", prompts, "--out", out, *SAMPLE)
    assert line.startswith(f"linepo sample: error: {policies['pickle']}: only pickle weights (pytorch_model.bin); "
                           "linepo loads safetensors only")
    assert "linepo import-policy --allow-pickle-weights" in line and "policy.allow_pickle_weights: true" in line
    assert not out.exists()


def test_pickle_weights_load_with_the_opt_in_and_import_policy_converts_them(policies, prompts, tmp_path, capsys):
    out = tmp_path / "samples.parquet"
    code, lines, _ = run_cli(capsys, "sample", "--policy", policies["pickle"], "--prompts", prompts, "--out", out,
                             *SAMPLE, "--allow-pickle-weights")
    assert code == 0, lines
    assert read_table(out, "samples").num_rows == 3

    converted = tmp_path / "converted"
    assert "pickle weights" in one_line_error(capsys, "import-policy", "--source", policies["pickle"], "--out", converted)
    assert not converted.exists()
    code, _, _ = run_cli(capsys, "import-policy", "--source", policies["pickle"], "--out", converted,
                         "--allow-pickle-weights")
    assert code == 0
    assert (converted / "model.safetensors").is_file() and not list(converted.glob("*.bin"))
    from linepo.stages.models import load_policy

    load_policy(converted)  # safetensors now: no opt-in needed


def test_model_judges_refuse_pickle_weights_unless_their_config_opts_in(policies):
    from linepo.stages.judges import make_judge

    for judge_type in ("pairwise_lm", "reward_model"):
        with pytest.raises(InputError) as caught:
            make_judge({"type": judge_type, "model": str(policies["pickle"])}, source="config key judge")
        message = str(caught.value)
        assert message.startswith("config key judge key model: ") and "only pickle weights" in message
        assert "allow_pickle_weights: true in judge" in message
    # with the opt-in the folder loads (as a causal LM judge; the reward model needs a classifier)
    judge = make_judge({"type": "pairwise_lm", "model": str(policies["pickle"]), "allow_pickle_weights": True,
                        "use_chat_template": False}, source="config key judge")
    assert judge is not None


def test_plan_time_check_refuses_pickle_only_folders_unless_opted_in(policies):
    from linepo.workflow.preflight import check_judge_files, check_model_folder

    with pytest.raises(InputError) as caught:
        check_model_folder(str(policies["pickle"]), "policy.sft", what="policy",
                           pickle_key="policy.allow_pickle_weights")
    message = str(caught.value)
    assert message.startswith(f"config key policy.sft: {policies['pickle']}: only pickle weights (pytorch_model.bin)")
    assert "linepo import-policy --allow-pickle-weights" in message and "policy.allow_pickle_weights: true" in message
    check_model_folder(str(policies["pickle"]), "policy.sft", what="policy", pickle_ok=True)
    check_model_folder(str(policies["good"]), "policy.sft", what="policy")

    section = {"type": "pairwise_lm", "model": str(policies["pickle"])}
    with pytest.raises(InputError, match=r"config key judge.model: .*only pickle weights.*judge.allow_pickle_weights"):
        check_judge_files(section, "judge")
    check_judge_files({**section, "allow_pickle_weights": True}, "judge")


def test_config_key_allow_pickle_weights_reaches_only_the_sft_import(policies):
    from workflow_utils import tiny_config

    from linepo.workflow.config import validate_config
    from linepo.workflow.wiring import Wiring

    config = tiny_config()
    config["policy"] = {**config.get("policy", {}), "sft": str(policies["pickle"])}
    with pytest.raises(InputError, match="config key policy.sft: .*only pickle weights"):
        validate_config(json.loads(json.dumps(config)))
    config["policy"]["allow_pickle_weights"] = True
    validated = validate_config(json.loads(json.dumps(config)))
    wiring = Wiring(validated)
    assert wiring.import_flags == "--allow-pickle-weights" and wiring.remote_code == ""
    # not part of node ids: opting in reruns nothing that already exists
    config["policy"]["allow_pickle_weights"] = False
    config["policy"]["sft"] = str(policies["good"])
    baseline = Wiring(validate_config(json.loads(json.dumps(config)))).plan
    config["policy"]["allow_pickle_weights"] = True
    assert Wiring(validate_config(json.loads(json.dumps(config)))).plan.sft == baseline.sft


# ----------------------------------------------------------------------------- prompt files


def test_prompt_file_holding_one_json_object_is_refused(tmp_path, capsys):
    source = tmp_path / "prompts.json"
    source.write_text(json.dumps({"prompt": "Hello?", "other": "a whole record"}))
    out = tmp_path / "out.parquet"
    line = one_line_error(capsys, "prompts", "--source", source, "--out", out)
    assert line == (f"linepo prompts: error: {source}: holds one JSON object, not a list of records: write a list "
                    '([{"prompt": ...}, ...]) or one object per line in a .jsonl file')
    assert not out.exists()
    # a list, and JSON lines in a .json file, still load
    source.write_text(json.dumps([{"prompt": "Hello?"}, {"prompt": "Bye?"}]))
    assert run_cli(capsys, "prompts", "--source", source, "--out", out)[0] == 0
    source.write_text('{"prompt": "Hello?"}\n{"prompt": "Bye?"}\n')
    assert run_cli(capsys, "prompts", "--source", source, "--out", out)[0] == 0
    assert read_table(out, "prompts").num_rows == 2


@pytest.mark.parametrize("name", ["prompts.jsonl", "prompts.json"])
def test_non_utf8_prompt_file_is_one_line(tmp_path, capsys, name):
    source = tmp_path / name
    source.write_bytes('{"prompt": "caf\u00e9?"}\n'.encode("latin-1"))
    out = tmp_path / "out.parquet"
    line = one_line_error(capsys, "prompts", "--source", source, "--out", out)
    assert line == f"linepo prompts: error: {source}: not UTF-8 text (byte 0xe9 near byte 15); save it as UTF-8"
    assert leftovers(tmp_path) == [name]


def test_non_utf8_judge_config_is_one_line(tmp_path, capsys):
    from linepo.stages.judges import load_judge_config

    path = tmp_path / "judge.yaml"
    path.write_bytes("type: synthetic  # caf\u00e9\n".encode("latin-1"))
    with pytest.raises(InputError, match=rf"^{path}: not UTF-8 text"):
        load_judge_config(str(path))


def test_prompts_longer_than_max_prompt_chars_are_dropped_and_counted(tmp_path, capsys):
    source = tmp_path / "prompts.jsonl"
    source.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["Short?", "x" * 20001, "Also short?"]))
    out = tmp_path / "out.parquet"
    code, lines, _ = run_cli(capsys, "prompts", "--source", source, "--out", out)
    assert code == 0
    assert lines == ["linepo prompts: dropped 1 of 3 prompts longer than 20000 characters (--max-prompt-chars, "
                     "config key max_prompt_chars)"]
    table = read_table(out, "prompts")
    assert table.column("prompt").to_pylist() == ["Short?", "Also short?"]
    assert run_cli(capsys, "prompts", "--source", source, "--out", out, "--max-prompt-chars", 0)[0] == 0
    assert read_table(out, "prompts").num_rows == 3
    out.unlink()
    line = one_line_error(capsys, "prompts", "--source", source, "--out", out, "--max-prompt-chars", 3)
    assert line.startswith(f"linepo prompts: error: {source}: all 3 prompts are longer than 3 characters")
    assert not out.exists()


# ----------------------------------------------------------------------------- prompt length vs the model


def test_sampling_drops_prompts_too_long_for_the_model(policies, tmp_path, capsys, caplog):
    prompts = tmp_path / "prompts.parquet"
    rows = [{"prompt_id": "short", "prompt": "Question?", "source": "t"},
            {"prompt_id": "long", "prompt": "word " * 10000, "source": "t"},  # ~50,000 characters, 512 positions
            {"prompt_id": "short2", "prompt": "Another question?", "source": "t"}]
    write_table(rows, prompts, "prompts")
    out = tmp_path / "samples.parquet"
    with caplog.at_level(logging.WARNING, logger="linepo.stages.sampling"):
        code, _, _ = run_cli(capsys, "sample", "--policy", policies["good"], "--prompts", prompts, "--out", out,
                             *SAMPLE[:2], "--max-new-tokens", 12, "--temperature", 0)
    assert code == 0
    assert read_table(out, "samples").column("prompt_id").to_pylist() == ["short", "short2"]
    assert "dropped 1 of 3 prompts longer than 500 tokens (model max 512 - max_new_tokens 12)" in caplog.text

    write_table(rows[1:2], prompts, "prompts")
    out.unlink()
    line = one_line_error(capsys, "sample", "--policy", policies["good"], "--prompts", prompts, "--out", out,
                          *SAMPLE[:2], "--max-new-tokens", 12)
    assert line == (f"linepo sample: error: {prompts}: all 1 prompts are longer than 500 tokens (model max 512 "
                    "- max_new_tokens 12); use shorter prompts or fewer max_new_tokens")
    assert not out.exists()
    line = one_line_error(capsys, "sample", "--policy", policies["good"], "--prompts", prompts, "--out", out,
                          *SAMPLE[:2], "--max-new-tokens", 600)
    assert line.startswith("linepo sample: error: --max-new-tokens 600: the model takes 512 positions in all")


def test_data_parallel_sampling_drops_long_prompts_once_before_sharding(policies, tmp_path, caplog):
    from types import SimpleNamespace

    from linepo.commands.sample import fitting_prompts
    from linepo.stages.sampling import SamplerSettings

    rows = [{"prompt_id": "a", "prompt": "Question?", "source": "t"},
            {"prompt_id": "b", "prompt": "word " * 10000, "source": "t"}]
    table = read_table(write_table(rows, tmp_path / "p.parquet", "prompts"), "prompts")
    args = SimpleNamespace(policy=str(policies["good"]), trust_remote_code=False, prompts="p.parquet")
    with caplog.at_level(logging.WARNING, logger="linepo.stages.sampling"):
        kept = fitting_prompts(args, table, SamplerSettings(max_new_tokens=12))
    assert kept.column("prompt_id").to_pylist() == ["a"] and "dropped 1 of 2 prompts" in caplog.text


def test_max_positions_reads_the_config_then_a_sane_tokenizer_length():
    from types import SimpleNamespace

    from linepo.stages.fit import max_positions

    assert max_positions(SimpleNamespace(max_position_embeddings=512), SimpleNamespace(model_max_length=99)) == 512
    assert max_positions(SimpleNamespace(), SimpleNamespace(model_max_length=1024)) == 1024
    assert max_positions(SimpleNamespace(), SimpleNamespace(model_max_length=int(1e30))) is None


def test_a_prompt_dropped_from_both_generations_is_not_compared():
    """The eval comparison pairs (prompt_id, sample_index) keys: a prompt both generations lack is
    simply absent; one that only one generation has is a one-line error naming it."""
    from linepo.evaluation.winrates import compare
    from linepo.stages.judges import make_judge

    def rows(ids):
        return {(pid, 0): {"prompt_id": pid, "sample_index": 0, "prompt": f"{pid}?", "response": "Sure."}
                for pid in ids}

    judge = make_judge({"type": "synthetic"})
    compared = compare(rows(["a", "c"]), rows(["a", "c"]), judge)
    assert [r["prompt_id"] for r in compared] == ["a", "c"]
    with pytest.raises(InputError, match="prompt c sample 0 is in one only"):
        compare(rows(["a", "c"]), rows(["a"]), judge)


# ----------------------------------------------------------------------------- a full disk


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    import pyarrow.parquet as pq

    source = tmp_path / "in" / "prompts.jsonl"
    source.parent.mkdir()
    source.write_text('{"prompt": "Hello?"}\n')
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def full(table, where, **kwargs):
        with open(where, "wb") as handle:
            handle.write(b"PAR1 half")  # a partial temporary, as a real full disk leaves it
        raise OSError(errno.ENOSPC, "No space left on device", str(where))

    monkeypatch.setattr(pq, "write_table", full)
    line = one_line_error(capsys, "prompts", "--source", source, "--out", out_dir / "prompts.parquet")
    assert line.startswith("linepo prompts: error: no space left on device while writing ")
    assert str(out_dir) in line and line.endswith("; free some space and rerun")
    assert leftovers(out_dir) == []


def test_a_full_disk_while_saving_a_policy_leaves_no_folder(policies, tmp_path, capsys, monkeypatch):
    from transformers import PreTrainedTokenizerBase

    def full(self, folder, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", f"{folder}/tokenizer.json")

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", full)
    out_parent = tmp_path / "sft"
    line = one_line_error(capsys, "import-policy", "--source", policies["good"], "--out", out_parent / "model")
    assert line.startswith("linepo import-policy: error: no space left on device while writing ")
    assert leftovers(out_parent) == []


def test_disk_full_message_finds_the_cause_in_wrapped_errors():
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded", "ckpt/optimizer.pt")
        except OSError as err:
            raise RuntimeError("saving the checkpoint failed") from err
    except RuntimeError as wrapped:
        assert disk_full_message(wrapped) == "no space left on device while writing ckpt/optimizer.pt; " \
                                             "free some space and rerun"
    rust = Exception('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left" })')
    assert disk_full_message(rust).startswith("no space left on device (Exception: Error while serializing")
    assert disk_full_message(ValueError("bad value")) is None

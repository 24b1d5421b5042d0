"""Faults injected into the writers: SIGKILL inside an atomic write, a full disk, a judge with no signal.

A killed writer leaves its temporary beside the output (``.NAME.<rand>.tmp``, ``.NAME.old-<pid>``);
the next writer of that output removes it, so a rerun ends byte-identical to a clean write,
temporaries included. The workflow-level kill (SIGKILL of the whole run mid-training, lock
refusal while it runs, ``--unlock``, ``--rerun-incomplete``) is in tests/test_workflow_llm.py,
which shares its two workflow runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import build_tiny_policy
from linepo.cli import main
from linepo.schemas import remove_stale_temporaries, write_table

REPO = Path(__file__).resolve().parents[1]


def tree(root: Path) -> dict[str, str]:
    """Every entry under ``root``, hidden ones and empty folders included: sha256 of each file."""
    return {str(p.relative_to(root)): "folder" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def child(tmp_path: Path, source: str, *args: str) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(source))
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen([sys.executable, str(script), *args], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_when_ready(process: subprocess.Popen, ready: Path, timeout: float = 180) -> None:
    """SIGKILL ``process`` (its whole group) once it has touched ``ready``, i.e. while it blocks mid-write."""
    deadline = time.time() + timeout
    while not ready.exists():
        assert process.poll() is None, f"the child ended before blocking: {process.stderr.read()[-3000:]}"
        assert time.time() < deadline, "the child never reached the write"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL


# ----------------------------------------------------------------------------- which names are ours


def test_only_this_outputs_own_temporaries_are_removed(tmp_path, caplog):
    stale = [".model.abc_1234.tmp", ".model.old-4242", ".model.shards-x9y8z7w6", ".model.saving"]
    kept = ["model", "model.partial", ".model.partial", ".model.abc.tmp", ".model.abcdefghi.tmp",
            ".model.ABCDEFGH.tmp", ".model.old-", ".model.old-12x", ".model2.abcdefgh.tmp",
            ".model.json.abcdefgh.tmp", "x.model.abcdefgh.tmp", ".modelXabcdefgh.tmp", "other"]
    for name in stale[:2] + kept[:3]:  # folders, with something inside
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"weights")
    for name in stale[2:] + kept[3:]:
        (tmp_path / name).write_bytes(b"x")
    with caplog.at_level(logging.WARNING):
        removed = remove_stale_temporaries(tmp_path / "model")
    assert sorted(p.name for p in removed) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
    assert (tmp_path / "model.partial" / "model.safetensors").exists()  # the resume side folder: never touched
    assert [r.getMessage() for r in caplog.records] == [
        f"removed stale temporary {tmp_path / name} (left by a killed job)" for name in sorted(stale)]
    assert remove_stale_temporaries(tmp_path / "missing" / "model") == []  # no folder: nothing to do


# ----------------------------------------------------------------------------- SIGKILL inside a write

SAVE_POLICY_CHILD = """
    import os, sys, time
    from pathlib import Path
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from linepo.stages.models import save_policy

    where, source, out, ready = sys.argv[1:]
    model, tokenizer = AutoModelForCausalLM.from_pretrained(source), AutoTokenizer.from_pretrained(source)

    def block():
        Path(ready).touch()
        time.sleep(600)

    if where == "weights":  # the weights are written into the temp folder, the tokenizer not yet
        save_weights = model.save_pretrained
        model.save_pretrained = lambda folder, **kwargs: (save_weights(folder, **kwargs), block())
    else:  # between moving the previous policy aside and renaming the new one in
        rename = os.replace
        os.replace = lambda a, b: (rename(a, b), ".old-" in str(b) and block())
    save_policy(model, tokenizer, out)
"""


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    """A tiny policy folder, and a clean save of it through ``save_policy`` (what a rerun must equal)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from linepo.stages.models import save_policy

    root = tmp_path_factory.mktemp("policy")
    build_tiny_policy(root / "source")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(root / "source"), AutoTokenizer.from_pretrained(root / "source")
    save_policy(model, tokenizer, root / "clean" / "model")
    return root / "source", model, tokenizer, tree(root / "clean")


@pytest.mark.parametrize("where", ["weights", "rename"])
def test_a_save_policy_killed_midway_leaves_nothing_after_the_next_save(policy, tmp_path, where):
    from linepo.stages.models import save_policy

    source, model, tokenizer, clean = policy
    folder = tmp_path / "results"
    if where == "rename":  # a previous policy there, so the save moves it aside first
        build_tiny_policy(folder / "model", seed=1)
    process = child(tmp_path, SAVE_POLICY_CHILD, where, str(source), str(folder / "model"), str(tmp_path / "ready"))
    kill_when_ready(process, tmp_path / "ready")
    left = sorted(p.name for p in folder.iterdir())
    # What the kill left: a temp folder holding the new weights (+ the previous policy, moved aside).
    assert [n for n in left if n.startswith(".model.") and n.endswith(".tmp")], left
    assert where == "weights" or ("model" not in left and [n for n in left if n.startswith(".model.old-")]), left

    save_policy(model, tokenizer, folder / "model")  # the rerun's save
    assert tree(folder) == clean


ATOMIC_PATH_CHILD = """
    import sys, time
    from pathlib import Path
    from linepo.schemas import atomic_path

    out, ready = sys.argv[1:]
    with atomic_path(out) as tmp:
        tmp.write_bytes(b"PAR1 half a parquet file")
        Path(ready).touch()
        time.sleep(600)
"""

PROMPT_ROWS = [{"prompt_id": f"p{i}", "prompt": f"Prompt {i}?", "source": "test"} for i in range(5)]


def test_an_atomic_write_killed_midway_leaves_nothing_after_the_next_write(tmp_path):
    folder = tmp_path / "results"
    process = child(tmp_path, ATOMIC_PATH_CHILD, str(folder / "prompts.parquet"), str(tmp_path / "ready"))
    kill_when_ready(process, tmp_path / "ready")
    assert [p.name.startswith(".prompts.parquet.") for p in folder.iterdir()] == [True]

    write_table(PROMPT_ROWS, folder / "prompts.parquet", "prompts")  # the rerun's write
    write_table(PROMPT_ROWS, tmp_path / "clean" / "prompts.parquet", "prompts")
    assert tree(folder) == tree(tmp_path / "clean")


# ----------------------------------------------------------------------------- a full disk

DISK_FULL_CHILD = """
    import hashlib, json, subprocess, sys
    from pathlib import Path
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from linepo.schemas import write_table
    from linepo.stages.models import save_policy

    disk, source, report = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    model, tokenizer = AutoModelForCausalLM.from_pretrained(source), AutoTokenizer.from_pretrained(source)
    rows = [{"prompt_id": f"p{i}", "prompt": f"Prompt {i}?", "source": "test"} for i in range(5)]
    big = [{"prompt_id": f"b{i}", "prompt": hashlib.sha256(str(i).encode()).hexdigest() * 8, "source": "t"}
           for i in range(2000)]  # ~1 MB that zstd cannot shrink below the disk
    listing = lambda: sorted(str(p.relative_to(disk)) for p in disk.rglob("*"))
    facts = {}
    for name, write in (("policy", lambda: save_policy(model, tokenizer, disk / "model")),
                        ("table", lambda: write_table(big, disk / "big.parquet", "prompts"))):
        try:
            write()
            facts[name] = "written"
        except Exception as err:  # OSError, safetensors' SafetensorError, or linepo's InputError wording it
            facts[name] = str(err)
        facts[name + " left"] = listing()
    subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)  # space freed
    save_policy(model, tokenizer, disk / "model")
    write_table(rows, disk / "prompts.parquet", "prompts")
    facts["tree"] = {str(p.relative_to(disk)): "folder" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
                     for p in sorted(disk.rglob("*"))}
    Path(report).write_text(json.dumps(facts))
"""


def private_mount_namespace(where: Path) -> list[str] | None:
    """The ``unshare`` options that let this process mount a tmpfs privately (as root: -m; else a user namespace)."""
    for options in (["-m"], ["-rm"]):
        probe = ["unshare", *options, "sh", "-c", f"mount -t tmpfs -o size=48k tmpfs {where}"]
        if shutil.which("unshare") and subprocess.run(probe, capture_output=True).returncode == 0:
            return options
    return None


def test_a_full_disk_leaves_nothing_half_written_and_the_next_write_recovers(policy, tmp_path):
    """On a real 48 KiB tmpfs (a private mount namespace; skipped where one cannot be made)."""
    options = private_mount_namespace(tmp_path)
    if options is None:
        pytest.skip("cannot mount a tmpfs in a private mount namespace here")
    source, model, tokenizer, clean = policy
    disk, report = tmp_path / "disk", tmp_path / "report.json"
    disk.mkdir()
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(DISK_FULL_CHILD))
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run(["unshare", *options, "sh", "-c", 'mount -t tmpfs -o size=48k tmpfs "$1" && shift && '
                             'exec "$@"', "sh", str(disk), sys.executable, str(script), str(disk), str(source),
                             str(report)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    facts = json.loads(report.read_text())
    assert "No space left on device" in facts["policy"] and facts["policy left"] == [], facts
    assert "No space left on device" in facts["table"] and facts["table left"] == [], facts
    write_table(PROMPT_ROWS, tmp_path / "clean" / "prompts.parquet", "prompts")
    assert facts["tree"] == {**clean, **tree(tmp_path / "clean")}


# ----------------------------------------------------------------------------- a judge with no signal


@pytest.fixture
def samples(tmp_path):
    rows = [{"prompt_id": f"p{k}", "prompt": f"Prompt {k}?", "sample_index": i, "response": f"answer {k}.{i}",
             "num_tokens": 2, "finish_reason": "stop", "sampler_settings": "{}"} for k in range(3) for i in range(3)]
    path = tmp_path / "samples.parquet"
    write_table(rows, path, "samples")
    return path


def tied_judgments(path: Path, signal_on_one: bool = False) -> Path:
    rows = [{"prompt_id": f"p{k}", "index_a": a, "index_b": b, "prob_a_wins": 0.5, "outcome": 1,
             "failed": False} for k in range(3) for a, b in ((0, 1), (0, 2), (1, 2))]
    if signal_on_one:
        rows[0]["prob_a_wins"] = 0.9
    write_table(rows, path, "judgments")
    return path


def pairs(samples, judgments, out, *options):
    return main(["pairs", "--samples", str(samples), "--judgments", str(judgments), "--out", str(out), *options])


def test_an_all_ties_judge_under_best_vs_worst_fails_with_one_line(samples, tmp_path, capsys):
    judgments, out = tied_judgments(tmp_path / "judgments.parquet"), tmp_path / "prefs.parquet"
    assert pairs(samples, judgments, out, "--selection", "best_vs_worst") == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"linepo pairs: error: {judgments}: every comparison is a tie (P = 0.5), so no pairs from 3 "
                   "prompts (dropped: 3 tied scores): the judge tells the samples apart by nothing; check the judge "
                   "and its config"), err
    assert not out.exists() and not list(tmp_path.glob(".prefs*"))


@pytest.mark.parametrize("options", [["--selection", "all_pairs"], ["--selection", "best_vs_worst", "--use-outcomes"]])
def test_an_all_ties_judge_that_still_gives_pairs_is_warned_about(samples, tmp_path, caplog, options):
    """Pairs with label ½ (or ranked by coin-flip outcomes) are written, with a warning: with
    p = ½ every loss still has the right minimiser (the step of a game where all responses
    tie: INPO/LINE-PO move toward the reference, DPO/IPO/SPPO stay put), so it is no error."""
    out = tmp_path / "prefs.parquet"
    with caplog.at_level(logging.WARNING):
        assert pairs(samples, tied_judgments(tmp_path / "judgments.parquet"), out, *options) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "every comparison is a tie (P = 0.5)" in warnings[0], warnings
    assert "teach no preference (check the judge)" in warnings[0] and out.exists()

    caplog.clear()
    with caplog.at_level(logging.WARNING):  # one comparison with signal: no warning
        assert pairs(samples, tied_judgments(tmp_path / "some.parquet", signal_on_one=True), out, *options) == 0
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]

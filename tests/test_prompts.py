"""Prompt loading, de-duplication and sharding (linepo.stages.prompts, ``linepo prompts``).

    HF_HUB_OFFLINE=1 python -m pytest tests/test_prompts.py -q

The real-schema samples are read from /work/shared/data (or $LINEPO_SHARED_DATA);
those tests skip where the folder is absent. Nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from linepo.cli import main
from linepo.errors import InputError
from linepo.stages.prompts import load_prompts, split_prompts, take
from linepo.schemas import read_metadata, read_table


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def shared_data(*parts: str) -> Path:
    root = Path(os.environ.get("LINEPO_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    path = root.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data sample {path} not present")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def chat(*turns: tuple[str, str]) -> list[dict]:
    return [{"role": role, "content": content} for role, content in turns]


# --- layouts -------------------------------------------------------------------------


def test_ultrafeedback_layout_keeps_its_prompt_id(tmp_path):
    rows = [
        {"prompt": "p1", "prompt_id": "id-1", "chosen": chat(("user", "p1"), ("assistant", "a")),
         "rejected": chat(("user", "p1"), ("assistant", "b")), "messages": chat(("user", "p1")),
         "score_chosen": 8.0, "score_rejected": 3.0},
        {"prompt": "p2", "prompt_id": "id-2", "chosen": chat(("user", "p2"), ("assistant", "a")),
         "rejected": chat(("user", "p2"), ("assistant", "b")), "messages": chat(("user", "p2")),
         "score_chosen": 8.5, "score_rejected": 8.5},
    ]
    src = str(write_jsonl(tmp_path / "uf.jsonl", rows))
    got = load_prompts(src, split="train_prefs")
    assert got == [
        {"prompt_id": "id-1", "prompt": "p1", "source": src},
        {"prompt_id": "id-2", "prompt": "p2", "source": src},
    ]


def test_alpaca_eval_layout_uses_instruction_and_keeps_dataset(tmp_path):
    rows = [
        {"dataset": "oasst", "instruction": "Say hi.", "output": "hi", "generator": "gpt4_turbo"},
        {"dataset": "koala", "instruction": "Count to 3.", "output": "1 2 3", "generator": "gpt4_turbo"},
    ]
    src = tmp_path / "eval_set.json"
    src.write_text(json.dumps(rows, indent=2))  # a JSON list, as AlpacaEval ships it
    got = load_prompts(str(src))
    assert [r["prompt"] for r in got] == ["Say hi.", "Count to 3."]
    assert [r["prompt_id"] for r in got] == [sha("Say hi."), sha("Count to 3.")]
    assert [r["dataset"] for r in got] == ["oasst", "koala"]


def test_alpaca_instruction_with_input_is_refused(tmp_path):
    src = write_jsonl(tmp_path / "alpaca.jsonl", [{"instruction": "Translate.", "input": "Hallo", "output": "Hello"}])
    with pytest.raises(InputError, match="'input'"):
        load_prompts(str(src))


def test_messages_only_layout_takes_first_user_turn(tmp_path):
    rows = [
        {"messages": chat(("system", "be nice"), ("user", "first question"), ("assistant", "a"), ("user", "second"))},
        {"messages": chat(("assistant", "no user turn"))},  # dropped: no prompt
    ]
    got = load_prompts(str(write_jsonl(tmp_path / "chats.jsonl", rows)))
    assert [(r["prompt"], r["prompt_id"]) for r in got] == [("first question", sha("first question"))]


def test_plain_prompt_parquet(tmp_path):
    src = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b", "c"]}), src)
    got = load_prompts(str(src))
    assert [r["prompt"] for r in got] == ["a", "b", "c"]
    assert [r["prompt_id"] for r in got] == [sha("a"), sha("b"), sha("c")]


def test_prompt_column_text_and_chat(tmp_path):
    rows = [{"question": "q1", "prompt_id": "not-for-question", "chosen": chat(("user", "c1"), ("assistant", "x"))}]
    src = str(write_jsonl(tmp_path / "custom.jsonl", rows))
    got = load_prompts(src, prompt_column="question")
    assert got == [{"prompt_id": sha("q1"), "prompt": "q1", "source": src}]  # the id of another column is not kept
    assert load_prompts(src, prompt_column="chosen")[0]["prompt"] == "c1"
    uf = str(write_jsonl(tmp_path / "uf.jsonl", [{"prompt": "p", "prompt_id": "own", "question": "q"}]))
    assert load_prompts(uf, prompt_column="prompt")[0]["prompt_id"] == "own"
    with pytest.raises(InputError, match="--prompt-column 'nope'.*columns"):
        load_prompts(src, prompt_column="nope")


def test_split_slice_on_a_local_file(tmp_path):
    src = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"p{i}"} for i in range(10)])
    assert [r["prompt"] for r in load_prompts(str(src), split="train_prefs[:3]")] == ["p0", "p1", "p2"]


def test_empty_prompts_dropped_and_duplicates_keep_first(tmp_path):
    texts = ["b", "", "a", "  \n", "b", None, "c", "a"]
    src = write_jsonl(tmp_path / "dups.jsonl", [{"prompt": t} for t in texts])
    first = load_prompts(str(src))
    assert [r["prompt"] for r in first] == ["b", "a", "c"]
    assert load_prompts(str(src)) == first


def test_same_source_id_for_different_prompts_is_refused(tmp_path):
    src = write_jsonl(tmp_path / "ids.jsonl", [{"prompt": "x", "prompt_id": "1"}, {"prompt": "y", "prompt_id": "1"}])
    with pytest.raises(InputError, match="same prompt_id"):
        load_prompts(str(src))


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("missing.jsonl", None, "file not found"),
        ("unknown.jsonl", '{"foo": 1, "bar": 2}\n', r"unknown column layout \['foo', 'bar'\]"),
        ("blank.jsonl", '{"prompt": " "}\n{"prompt": ""}\n', "no prompts"),
        ("empty.jsonl", "", "empty file"),
        ("broken.jsonl", '{"prompt": "a"}\n{"prompt": \n', "cannot load"),
        ("corrupt.parquet", "PAR1 this is not parquet", "not a readable .parquet file"),
        ("prompts.txt", "hello\n", "not a .jsonl, .json or .parquet file"),
    ],
)
def test_bad_files_raise_input_error_naming_the_file(tmp_path, name, content, match):
    src = tmp_path / name
    if content is not None:
        src.write_text(content)
    with pytest.raises(InputError, match=match) as info:
        load_prompts(str(src))
    assert str(info.value).startswith(str(src))


def test_hub_dataset_goes_through_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return datasets.DatasetDict({"eval": datasets.Dataset.from_dict({"instruction": ["x", "y"], "dataset": ["a", "b"]})})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    got = load_prompts("tatsu-lab/alpaca_eval", name="alpaca_eval", revision="main")
    assert [r["prompt"] for r in got] == ["x", "y"] and got[0]["source"] == "tatsu-lab/alpaca_eval"
    assert calls == [("tatsu-lab/alpaca_eval", {"name": "alpaca_eval", "split": None, "revision": "main"})]


# --- real-schema samples -------------------------------------------------------------


def test_real_ultrafeedback_sample():
    src = shared_data("ultrafeedback", "sample.jsonl")
    got = load_prompts(str(src), split="train_prefs")
    assert len(got) == 16
    assert got[0]["prompt"] == "how can i develop a habit of drawing daily"
    assert all(r["prompt_id"] == sha(r["prompt"]) for r in got)


def test_real_ultrachat_sample():
    src = shared_data("ultrachat", "sample.jsonl")
    got = load_prompts(str(src), split="train_sft")
    assert len(got) == 20 and got[0]["prompt_id"].startswith("f0e37e9f")
    assert all(r["prompt_id"] == sha(r["prompt"]) for r in got)  # `prompt` wins over messages[0]
    # Without the `prompt` column the first user turn is the prompt (2 of 20 differ in case only).
    chats = load_prompts(str(src), prompt_column="messages")
    assert len(chats) == 20
    assert sum(a["prompt"] != b["prompt"] for a, b in zip(got, chats)) <= 2


def test_real_alpaca_eval_set_via_the_hub_code_path(monkeypatch, tmp_path):
    import datasets

    src = shared_data("alpaca_eval", "eval_set.json")
    direct = load_prompts(str(src))
    assert len(direct) == 805 and len({r["prompt_id"] for r in direct}) == 805
    assert Counter(r["dataset"] for r in direct) == {
        "selfinstruct": 252, "oasst": 188, "koala": 156, "helpful_base": 129, "vicuna": 80,
    }
    # The same rows when the file stands in for the hub dataset tatsu-lab/alpaca_eval.
    real_load = datasets.load_dataset

    def as_hub(path, **kwargs):
        assert path == "tatsu-lab/alpaca_eval"
        return real_load("json", data_files={"eval": str(src)}, split=kwargs["split"], cache_dir=str(tmp_path))

    monkeypatch.setattr(datasets, "load_dataset", as_hub)
    hub = load_prompts("tatsu-lab/alpaca_eval", split="eval")
    assert [r["prompt"] for r in hub] == [r["prompt"] for r in direct]


# --- sharding ------------------------------------------------------------------------


def many(n: int) -> list[dict]:
    return [{"prompt_id": sha(f"prompt {i}"), "prompt": f"prompt {i}", "source": "test"} for i in range(n)]


def test_1001_prompts_on_4_shards_lose_none():
    rows = many(1001)
    shards = split_prompts(rows, 4, seed=0)
    assert [len(s) for s in shards] == [251, 250, 250, 250]
    ids = [r["prompt_id"] for s in shards for r in s]
    assert sorted(ids) == sorted(r["prompt_id"] for r in rows)


def test_shards_are_deterministic_and_depend_on_seed():
    rows = many(1001)
    assert split_prompts(rows, 4, seed=7) == split_prompts(list(rows), 4, seed=7)
    assert split_prompts(rows[::-1], 4, seed=7) == split_prompts(rows, 4, seed=7)  # input order does not matter
    assert split_prompts(rows, 4, seed=8) != split_prompts(rows, 4, seed=7)
    first = split_prompts(rows, 4, seed=7)[0]
    assert first != rows[:251]  # shuffled, not cut in order


@pytest.mark.parametrize(("n", "k"), [(1, 1), (5, 5), (10, 3), (7, 1)])
def test_shard_sizes_differ_by_at_most_one(n, k):
    sizes = [len(s) for s in split_prompts(many(n), k, seed=1)]
    assert sum(sizes) == n and max(sizes) - min(sizes) <= 1


def test_bad_shard_counts():
    for k in (0, 4):
        with pytest.raises(InputError, match="num_shards"):
            split_prompts(many(3), k, seed=0)


def test_take():
    rows = many(5)
    assert take(rows, None) == rows and take(rows, 2) == rows[:2] and take(rows, 10) == rows
    with pytest.raises(InputError):
        take(rows, 0)


# --- command -------------------------------------------------------------------------


def test_cli_writes_shards(tmp_path, capsys):
    src = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"p{i}"} for i in range(11)] + [{"prompt": "p0"}])
    out = tmp_path / "shards"
    assert main(["prompts", "--source", str(src), "--shards", "3", "--seed", "5", "--max-prompts", "10", "--out-dir", str(out)]) == 0
    assert "3 shards (4/3/3)" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["shard-0.parquet", "shard-1.parquet", "shard-2.parquet"]
    tables = [read_table(out / f"shard-{i}.parquet", "prompts") for i in range(3)]
    assert sorted(p for t in tables for p in t.column("prompt").to_pylist()) == sorted(f"p{i}" for i in range(10))
    meta = read_metadata(out / "shard-1.parquet")
    assert (meta["shard"], meta["num_shards"], meta["seed"], meta["num_prompts"], meta["num_loaded"]) == (1, 3, 5, 10, 11)
    # A rerun with fewer shards would leave shard-2 behind: refused before writing.
    assert main(["prompts", "--source", str(src), "--shards", "2", "--out-dir", str(out)]) == 2
    assert "shard-2.parquet" in capsys.readouterr().err


def test_cli_single_file_keeps_source_order(tmp_path):
    src = write_jsonl(tmp_path / "p.jsonl", [{"instruction": f"i{i}", "dataset": "x"} for i in range(5)])
    out = tmp_path / "eval" / "prompts.parquet"
    assert main(["prompts", "--source", str(src), "--out", str(out)]) == 0
    assert read_table(out, "prompts").column("prompt").to_pylist() == [f"i{i}" for i in range(5)]


BAD_INPUTS = [
    ("missing.jsonl", None),
    ("unknown.jsonl", '{"foo": 1}\n'),
    ("blank.jsonl", '{"prompt": "  "}\n'),
    ("corrupt.parquet", "garbage, not parquet"),
]


@pytest.mark.parametrize(
    ("name", "content", "target"),
    [(n, c, t) for n, c in BAD_INPUTS for t in (["--out-dir", "{out}", "--shards", "2"], ["--out", "{out}/p.parquet"])]
    + [("few.jsonl", '{"prompt": "a"}\n{"prompt": "b"}\n', ["--out-dir", "{out}", "--shards", "3"])],
)
def test_cli_bad_input_exits_2_with_one_line_and_no_output(tmp_path, capsys, name, content, target):
    src = tmp_path / name
    if content is not None:
        src.write_text(content)
    out = tmp_path / "result"
    target = [arg.format(out=out) for arg in target]
    assert main(["prompts", "--source", str(src), *target]) == 2
    err = capsys.readouterr().err
    assert err.startswith("linepo prompts: error: ") and err.count("\n") == 1, err
    assert not out.exists() or not any(out.iterdir())


def test_cli_options_checked(tmp_path, capsys):
    src = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}])
    for argv, match in [
        (["--out-dir", str(tmp_path / "o")], "--shards: required"),
        (["--out", str(tmp_path / "o.parquet"), "--shards", "2"], "--shards: only with --out-dir"),
        (["--out", str(tmp_path / "o.txt")], "must end in .parquet"),
        (["--out", str(tmp_path / "o.parquet"), "--max-prompts", "0"], "--max-prompts 0"),
    ]:
        assert main(["prompts", "--source", str(src), *argv]) == 2
        assert match in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.parquet").exists()


def test_cli_offline_hub_dataset_is_one_clear_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = tmp_path / "o"
    proc = subprocess.run(
        [sys.executable, "-m", "linepo.cli", "prompts", "--source", "HuggingFaceH4/ultrafeedback_binarized",
         "--split", "train_prefs", "--shards", "2", "--out-dir", str(out)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("linepo prompts: error: HuggingFaceH4/ultrafeedback_binarized: ")
    assert "HF_HUB_OFFLINE" in lines[0] and not out.exists()

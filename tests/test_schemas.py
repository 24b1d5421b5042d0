"""Parquet artefacts: atomic writes, validated reads, and the generated column reference."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from linepo.errors import InputError
from linepo.schemas import markdown_reference, read_metadata, read_table, write_table
from workflow_utils import REPO

ROW = {"prompt_id": "p", "prompt": "Hi?", "source": "test"}


def test_round_trip_with_metadata_is_byte_deterministic(tmp_path):
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    write_table([ROW], a, "prompts", metadata={"seed": 1})
    write_table([ROW], b, "prompts", metadata={"seed": 1})
    assert a.read_bytes() == b.read_bytes()
    assert read_table(a, "prompts").to_pylist() == [ROW]
    assert read_metadata(a) == {"kind": "prompts", "seed": 1}
    assert not list(tmp_path.glob(".*tmp"))


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(Exception):
        write_table([{"prompt_id": "p"}], tmp_path / "x.parquet", "prompts")
    assert list(tmp_path.iterdir()) == []


def test_reader_names_the_file_and_the_column(tmp_path):
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"prompt_id": ["p"], "prompt": [1], "source": ["s"]}), wrong)
    with pytest.raises(InputError, match=r"wrong.parquet: column 'prompt' has type int64"):
        read_table(wrong, "prompts")
    missing = tmp_path / "missing.parquet"
    pq.write_table(pa.table({"prompt_id": ["p"]}), missing)
    with pytest.raises(InputError, match=r"missing.parquet: missing column 'prompt'"):
        read_table(missing, "prompts")
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match="corrupt.parquet: not a readable parquet file"):
        read_table(corrupt, "prompts")
    with pytest.raises(InputError, match="absent.parquet: file not found"):
        read_table(tmp_path / "absent.parquet", "prompts")


def test_the_artefact_reference_is_current():
    assert (REPO / "docs/artefacts.md").read_text() == markdown_reference(), (
        "regenerate: python -c \"from linepo.schemas import markdown_reference; "
        "open('docs/artefacts.md','w').write(markdown_reference())\""
    )

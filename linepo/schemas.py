"""Typed parquet artefacts: every file the workflow passes between stages, in one place.

Each artefact kind has a pyarrow schema and a one-line meaning per column (``COLUMN_DOCS``),
which `docs/artefacts.md` is generated from. Files are written atomically (a temp file in
the same folder, then ``os.replace``) so that a killed job never leaves a file that looks
complete, and read back through :func:`read_table`, which rejects a file whose columns do
not match with a message naming the file and the column.

    from linepo.schemas import write_table, read_table
    write_table(rows, "results/x/samples.parquet", "samples", metadata={"sampler": {...}})
    table = read_table("results/x/samples.parquet", "samples")
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from linepo.errors import InputError

#: kind -> list of (column, pyarrow type, nullable, meaning)
_COLUMNS: dict[str, list[tuple[str, pa.DataType, bool, str]]] = {
    "prompts": [
        ("prompt_id", pa.string(), False, "stable id: sha256 of the prompt text (hex), unless the source gave one"),
        ("prompt", pa.string(), False, "the user instruction, plain text (no chat template applied)"),
        ("source", pa.string(), False, "where the prompt came from: dataset name or file path"),
    ],
    "samples": [
        ("prompt_id", pa.string(), False, "id of the prompt answered"),
        ("prompt", pa.string(), False, "the prompt text, repeated so a file is self-contained"),
        ("sample_index", pa.int32(), False, "0..n-1: which of the n samples of this prompt"),
        ("response", pa.string(), False, "generated response text, special tokens removed (for judges and people)"),
        ("response_token_ids", pa.list_(pa.int32()), True,
         "the sampled token ids, stop token excluded: what scoring and training use (null in hand-made files: "
         "the text is tokenized)"),
        ("num_tokens", pa.int32(), False, "number of generated tokens (EOS included when emitted)"),
        ("finish_reason", pa.string(), False, "'stop' (a stop token emitted) or 'length' (max_new_tokens reached)"),
        ("stop_token_id", pa.int32(), True,
         "the token that ended the response (EOS or the chat template's end of turn, e.g. <|im_end|>); "
         "null when cut at max_new_tokens. Scoring appends exactly this token"),
        ("sampler_settings", pa.string(), False, "JSON of the sampler's settings (backend, temperature, top_p, ...)"),
    ],
    "judgments": [
        ("prompt_id", pa.string(), False, "id of the prompt whose samples are compared"),
        ("index_a", pa.int32(), False, "sample_index of response a"),
        ("index_b", pa.int32(), False, "sample_index of response b"),
        ("prob_a_wins", pa.float64(), True, "judge's P(a ≻ b) in [0, 1]; null when the comparison failed"),
        ("outcome", pa.int8(), True, "sampled oracle outcome: 1 if a won, 0 if b won; null when failed"),
        ("failed", pa.bool_(), False, "true when the judge could not give a probability (counted, never a coin flip)"),
        ("failure", pa.string(), True, "why it failed, e.g. 'p(a)+p(b) = 1.6e-05 < judge.min_answer_mass 0.001'"),
    ],
    "preferences": [
        ("prompt_id", pa.string(), False, "id of the prompt"),
        ("prompt", pa.string(), False, "the prompt text"),
        ("chosen", pa.string(), False, "the preferred response y+"),
        ("rejected", pa.string(), False, "the dispreferred response y-"),
        ("chosen_index", pa.int32(), False, "sample_index of the chosen response"),
        ("rejected_index", pa.int32(), False, "sample_index of the rejected response"),
        ("chosen_finished", pa.bool_(), False, "the chosen sample ended with a stop token; false when cut at max_new_tokens"),
        ("rejected_finished", pa.bool_(), False, "the rejected sample ended with a stop token (scored without one if not)"),
        ("chosen_stop_token_id", pa.int32(), True, "the stop token the chosen sample emitted (null: cut)"),
        ("rejected_stop_token_id", pa.int32(), True, "the stop token the rejected sample emitted (null: cut)"),
        ("chosen_token_ids", pa.list_(pa.int32()), True, "the chosen sample's token ids as sampled (null: tokenize the text)"),
        ("rejected_token_ids", pa.list_(pa.int32()), True, "the rejected sample's token ids as sampled (null: tokenize the text)"),
        ("chosen_win_rate", pa.float64(), False, "mean P(chosen ≻ other samples of the prompt): SPPO's P̂(y+ ≻ μ)"),
        ("rejected_win_rate", pa.float64(), False, "mean P(rejected ≻ other samples of the prompt): SPPO's P̂(y- ≻ μ)"),
        ("label_probability", pa.float64(), False,
         "P(chosen ≻ rejected) the loss is fitted to: 1.0 for a hard label, the judge's probability for a soft one"),
    ],
    # A preference set plus the summed response log-probs the losses need, computed
    # without gradients before training so the trainer holds only the policy in memory.
    "scored": [
        ("prompt_id", pa.string(), False, "id of the prompt"),
        ("prompt", pa.string(), False, "the prompt text"),
        ("chosen", pa.string(), False, "the preferred response y+"),
        ("rejected", pa.string(), False, "the dispreferred response y-"),
        ("chosen_finished", pa.bool_(), False, "y+ ended with a stop token; a cut sample's log-probs have no stop term"),
        ("rejected_finished", pa.bool_(), False, "y- ended with a stop token; a cut sample's log-probs have no stop term"),
        ("chosen_stop_token_id", pa.int32(), True, "the stop token y+ emitted, scored after it (null: cut)"),
        ("rejected_stop_token_id", pa.int32(), True, "the stop token y- emitted, scored after it (null: cut)"),
        ("chosen_token_ids", pa.list_(pa.int32()), True, "y+'s sampled token ids: exactly what was scored (null: its text tokenized)"),
        ("rejected_token_ids", pa.list_(pa.int32()), True, "y-'s sampled token ids: exactly what was scored (null: its text tokenized)"),
        ("chosen_win_rate", pa.float64(), False, "P̂(y+ ≻ μ) from the tournament (SPPO)"),
        ("rejected_win_rate", pa.float64(), False, "P̂(y- ≻ μ) from the tournament (SPPO)"),
        ("label_probability", pa.float64(), False, "P(chosen ≻ rejected) the loss is fitted to (1.0: hard label)"),
        ("reference_chosen_logp", pa.float64(), False, "log π_ref(y+|x), summed over response tokens"),
        ("reference_rejected_logp", pa.float64(), False, "log π_ref(y-|x), summed over response tokens"),
        ("anchor_chosen_logp", pa.float64(), False, "log μ_k(y+|x) under the policy that sampled the pair (INPO; "
         "EGPO's full step: the prox centre π^t; MNPO: Σ_j λ_j log π_{t−j}(y+|x), metadata scoring.mixture)"),
        ("anchor_rejected_logp", pa.float64(), False, "log μ_k(y-|x) under the policy that sampled the pair (INPO; "
         "EGPO's full step: π^t; MNPO: the mixture)"),
    ],
    # Evaluation: one checkpoint pair judged on every (prompt, sample), both orders.
    "comparisons": [
        ("prompt_id", pa.string(), False, "id of the eval prompt"),
        ("sample_index", pa.int32(), False, "which sample of each generation (sample i of a against sample i of b)"),
        ("prob_a_first", pa.float64(), True, "judge's P(a ≻ b) with a shown first; null when failed"),
        ("prob_b_first", pa.float64(), True, "judge's P(b ≻ a) with b shown first; null when failed"),
        ("prob_a_wins", pa.float64(), True, "½ (prob_a_first + 1 − prob_b_first): position bias cancelled; null when failed"),
        ("failed", pa.bool_(), False, "true when either order failed (left out of win rates, counted)"),
        ("failure", pa.string(), True, "why it failed (null when it did not)"),
    ],
    "trajectory": [
        ("iteration", pa.int32(), False, "0 is the start policy; each iteration is one prox (policy) update"),
        ("round", pa.int32(), False, "outer round: LINE-PO's reference moves between rounds; 1 elsewhere"),
        ("policy", pa.list_(pa.float64()), False, "the policy over the n responses after this iteration"),
        ("duality_gap", pa.float64(), False, "max_j P(y_j ≻ π) − min_j P(π ≻ y_j): 0 exactly at a Nash policy"),
        ("kl_to_nash", pa.float64(), False, "KL(π* ‖ π) to the LP Nash policy π*"),
    ],
}

# Evaluation: the comparisons that one job judged with one judge load (linepo.evaluation.batches),
# each row with its comparison id; each comparison's metadata is under "comparisons".
_COLUMNS["comparison_batch"] = [
    ("comparison", pa.string(), False, "the comparison (two generations × eval judge) the row belongs to"),
    *_COLUMNS["comparisons"],
]

COLUMN_DOCS: dict[str, dict[str, str]] = {
    kind: {name: doc for name, _, _, doc in columns} for kind, columns in _COLUMNS.items()
}


def schema(kind: str, metadata: dict | None = None) -> pa.Schema:
    """The pyarrow schema of an artefact kind, with optional JSON metadata under b"linepo"."""
    if kind not in _COLUMNS:
        raise KeyError(f"unknown artefact kind {kind!r}; known: {sorted(_COLUMNS)}")
    fields = [pa.field(name, dtype, nullable=nullable) for name, dtype, nullable, _ in _COLUMNS[kind]]
    encoded = {b"linepo": json.dumps({"kind": kind, **(metadata or {})}, sort_keys=True).encode()}
    return pa.schema(fields, metadata=encoded)


def _temporary_names(name: str) -> re.Pattern:
    """The names of the temporaries that linepo's atomic writers create beside an output ``name``:
    ``.NAME.<8 chars>.tmp`` (``atomic_path``'s mkstemp, ``save_policy``'s and the selection
    install's mkdtemp), ``.NAME.old-<pid>`` (``save_policy``'s previous folder),
    ``.NAME.shards-<8 chars>`` (sharded sample/judge) and ``.NAME.saving`` (DeepSpeed/FSDP save).
    ``NAME.partial`` (the resume side folder) and other outputs' temporaries never match."""
    random = "[a-z0-9_]{8}"  # tempfile's random name: 8 characters of [a-z0-9_]
    return re.compile(rf"\.{re.escape(name)}\.(?:{random}\.tmp|old-[0-9]+|shards-{random}|saving)")


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove what a killed writer of ``path`` left beside it (a policy's temp folder is GBs).

    Called by each writer before it makes its own temporary: Snakemake's lock lets one job at a
    time write an output, so any temporary of ``path`` found then is a dead writer's, which
    ``--rerun-incomplete`` never removes. Returns what was removed (each one logged).
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = _temporary_names(path.name)
    removed = []
    for stale in sorted(path.parent.iterdir()):
        if not pattern.fullmatch(stale.name):
            continue
        try:
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale)
            else:
                stale.unlink()
        except FileNotFoundError:  # another process of the same job got there first
            continue
        logging.getLogger(__name__).warning("removed stale temporary %s (left by a killed job)", stale)
        removed.append(stale)
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temp path next to ``path``; rename it onto ``path`` only if the block succeeds.

    A temporary that a killed writer of ``path`` left is removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def to_table(rows, kind: str, metadata: dict | None = None) -> pa.Table:
    """Build a table of ``kind`` from a list of row dicts, a dict of columns, or a DataFrame.

    Byte-identical output for identical input: no timestamps, stable column order.
    """
    target = schema(kind, metadata)
    if isinstance(rows, pa.Table):
        return rows.select(target.names).cast(target)
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # pandas DataFrame
        rows = {name: rows[name].tolist() for name in target.names}
    if isinstance(rows, dict):  # a nullable column left out is all null, as from_pylist makes it
        length = len(next(iter(rows.values()), []))
        columns = {f.name: rows[f.name] if f.name in rows or not f.nullable else [None] * length for f in target}
        return pa.Table.from_pydict(columns, schema=target)
    return pa.Table.from_pylist(list(rows), schema=target)


def write_table(rows, path: str | os.PathLike, kind: str, metadata: dict | None = None, inputs=None,
                computed: bool = False, shards=()) -> Path:
    """Write rows as a parquet file of ``kind`` atomically; returns the path.

    The metadata also records the table's provenance (:mod:`linepo.provenance`): the sha256
    of its data and its rows, which :func:`read_table` checks, and ``inputs`` (the paths of
    the artefacts it was made from, as given) with their digests, which ``linepo verify`` checks,
    and the numerics environments behind it (``computed``: this job ran a model; ``shards``: the
    worker files' metadata of a sharded job; :mod:`linepo.numerics`).
    """
    from linepo.numerics import output_history
    from linepo.provenance import table_record

    table = to_table(rows, kind, metadata)
    encoded = json.loads(table.schema.metadata[b"linepo"])
    # replaces a record copied from a shard's metadata
    encoded["provenance"] = table_record(table, inputs, output_history(inputs or [], computed, shards))
    table = table.replace_schema_metadata({b"linepo": json.dumps(encoded, sort_keys=True).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return Path(path)


def read_table(path: str | os.PathLike, kind: str) -> pa.Table:
    """Read a parquet artefact and check it has the columns and types of ``kind``.

    A nullable column the file lacks (an optional one, e.g. ``response_token_ids`` of a
    hand-made samples file) reads as all null.

    Raises:
        InputError: the file is missing, not parquet (corrupted), its data is not what its
            recorded digest says (changed after it was written), or a required column is
            missing or a column has the wrong type; the message names the file and the column.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f"{path}: not a readable parquet file ({err})") from err
    from linepo.provenance import check_table

    check_table(path, table, _provenance(table))  # a file rewritten after it was written (rows cut, values changed)
    expected = schema(kind)
    for field in expected:
        if field.name not in table.column_names:
            if field.nullable:
                table = table.append_column(field, pa.nulls(table.num_rows, field.type))
                continue
            raise InputError(f"{path}: missing column {field.name!r} of a {kind} file")
        actual = table.schema.field(field.name).type
        if actual != field.type:
            raise InputError(f"{path}: column {field.name!r} has type {actual}, a {kind} file needs {field.type}")
    return table.select(expected.names)


def _provenance(table: pa.Table) -> dict | None:
    try:
        recorded = json.loads((table.schema.metadata or {}).get(b"linepo", b"{}")).get("provenance")
    except (ValueError, AttributeError):
        return None
    return recorded if isinstance(recorded, dict) else None


def read_metadata(path: str | os.PathLike) -> dict:
    """The JSON metadata that :func:`write_table` stored in a file (``{}`` if none), its
    provenance record left out (:func:`linepo.provenance.recorded_provenance` reads that)."""
    raw = pq.read_schema(path).metadata or {}
    metadata = json.loads(raw.get(b"linepo", b"{}"))
    metadata.pop("provenance", None)
    return metadata


#: Evaluation outputs that are not parquet: (path, format, content), for docs/artefacts.md.
OTHER_ARTEFACTS = [
    ("results/eval/generations/<id>.parquet", "samples",
     "a checkpoint's answers to the eval prompts (evaluation.decoding), sampled with its own seed int(id, 16); "
     "id: policy × eval prompts × decoding"),
    ("results/eval/comparisons/batches/<id>.parquet", "comparison_batch",
     "the comparisons one job judged with one judge load (evaluation.compare_jobs such jobs); id: its comparison ids"),
    ("results/eval/comparisons/cache/<id>.parquet", "comparisons",
     "two generations judged in both orders, as `linepo compare` writes them; id: the unordered generation pair × "
     "eval judge. A cache, not an output: a batch reuses an entry whose generations' digests and judge match, "
     "else judges the pair again, so deleting it costs time only"),
    ("results/eval/alpaca_eval/<checkpoint>/model_outputs.json", "JSON list",
     "AlpacaEval model outputs: `instruction`, `output` (sample 0), `generator` (the checkpoint's label), `dataset`"),
    ("results/summary/win_rates.csv", "CSV",
     "row-vs-column win rate (%) in Table 2 order, plus Avg (row mean, diagonal included); a cell whose "
     "failed comparisons exceed the judge's max_failed_fraction is empty (missing, never 50%), and so is its Avg; "
     "with replicates the mean over replicates of their matrices, cell by cell (missing where any replicate's is)"),
    ("results/summary/win_rates_se.csv", "CSV", "standard errors (%) of win_rates.csv: bootstrap over prompts; with "
     "replicates, over replicates (sample std / √n)"),
    ("results/summary/win_rates_hard.csv", "CSV",
     "hard row-vs-column win rate (%): each comparison scored 1, 0 or ½ as P(row ≻ column) is above, below or "
     "exactly ½, averaged per prompt then over prompts; plus Avg"),
    ("results/summary/win_rates_hard_se.csv", "CSV", "standard errors (%) of win_rates_hard.csv, as win_rates_se.csv"),
    ("results/summary/win_rates_pairs.tsv", "TSV",
     "one line per ordered pair: win rate and SE, hard win rate and SE, prompts, judged and failed comparisons, "
     "missing (above the failure limit), comparison id, the judge's failure summary; with replicates: means, SEs over "
     "replicates, `replicates`, counts summed, each replicate's rate and comparison"),
    ("results/summary/win_rates_counts.csv", "CSV", "judged/failed comparisons per cell (e.g. 800/3), diagonal '-'; "
     "summed over replicates"),
    ("results/summary/win_rates.png", "PNG", "heatmap of the matrix with SEs, failure counts, missing cells grey, "
     "and the Avg column"),
    ("results/policies/r<r>/s<s>/<id>/model/linepo_provenance.json", "JSON",
     "sha256 of each file of the policy folder (weights, config, tokenizer) and of the artefacts it was made "
     "from; checked whenever the folder is loaded, and by `linepo verify` (also in results/sft/<id>/model)"),
    ("results/policies/r<r>/s<s>/<id>/model/linepo_selection.json", "JSON",
     "with validation: the validation loss at each evaluated step, the step kept and the last step"),
    ("results/summary/curves.tsv", "TSV", "Figure 3: per run and iteration, win rate vs SFT (± SE) and mean generated tokens; "
     "with replicates the means over replicates, `se` and `avg_tokens_se` over replicates, `replicates`"),
    ("results/summary/curves.png", "PNG", "Figure 3: those curves, red lines at round ends; with replicates "
     "± SE bands"),
    ("results/summary/replicates/<name>-<r>.csv, .tsv, .png", "CSV, TSV, PNG",
     "replicate r's win_rates, win_rates_se, win_rates_hard, win_rates_hard_se, win_rates_counts, "
     "win_rates_pairs, curves and evaluation files: those of results/summary/ for its own checkpoints alone, "
     "bootstrap SEs over prompts; results/summary/ pools them (one replicate: byte for byte)"),
    ("results/runs/<run>/replicate-<r>/prox_fidelity.tsv", "TSV",
     "synthetic oracle: per step of the run, KL(trained ‖ exact Prox target) (mean and max over eval prompts) and "
     "TV, the exploitability measured, of the target and of the exact analogue trajectory, KL(trained ‖ analogue) "
     "(linepo.evaluation.prox_fidelity)"),
    ("results/runs/<run>/replicate-<r>/category_probs.json", "JSON",
     "the exact per-prompt category distribution (eval prompts) of SFT and of every step's policy of the run"),
    ("results/summary/replicates/prox_fidelity-<r>.tsv", "TSV", "replicate r: every run's prox_fidelity.tsv, "
     "one row per step"),
    ("results/summary/replicates/prox_fidelity_runs-<r>.tsv", "TSV",
     "replicate r, per run: median and max KL to the Prox target over its steps, median TV, start and final "
     "exploitability measured, on the exact analogue and one step ahead (the exact step from the measured μ_K−1), "
     "the KL per step"),
    ("results/summary/prox_fidelity.tsv", "TSV", "the per-step tables pooled over replicates: each number's mean "
     "and `<number>_se` (sample std over replicates / √n; nan for one), `replicates` (n); no policy column"),
    ("results/summary/prox_fidelity_runs.tsv", "TSV", "the per-run tables pooled over replicates: means, `_se` "
     "columns, `replicates`; `kl_per_step` of the pooled steps"),
    ("results/summary/prox_fidelity.png", "PNG", "KL to the Prox target per step; exploitability measured vs "
     "the exact analogue; ± one standard error over replicates as bands"),
    ("results/summary/replicates/exploitability-<r>.tsv", "TSV", "replicate r, synthetic oracle: per run (and "
     "SFT) the last iterate's exploitability, its stderr over prompts (Monte Carlo; 0 when exact), method, "
     "category mix, policy folder"),
    ("results/summary/exploitability.tsv", "TSV", "pooled over replicates: per run `exploitability` (mean), "
     "`exploitability_se` (sample std over replicates / √n; nan for one), `replicates`, method, the category mix "
     "as mean ± SE, `per_replicate` values"),
    ("results/summary/evaluation.tsv", "TSV",
     "per checkpoint: Avg and worst win rate (robust alignment; nan when a cell of its row is missing), "
     "missing_cells, the same for the hard win rate, comparisons judged and failed in its row, the checkpoints' "
     "meta-game (`meta_nash`: its mass in the maximum-entropy Nash of the win-rate matrix; `pool_exploitability`: "
     "the best win rate any checkpoint has against it − ½; `nash_averaged`: its margin against that Nash mixture; "
     "empty when a cell is missing), mean tokens, "
     "exploitability and category mix (synthetic oracle); with replicates each number's mean, `<number>_se` over "
     "replicates, `replicates`, counts summed, the category mix as mean ± SE, no policy column"),
]


def markdown_reference() -> str:
    """Every artefact kind and column with its meaning, as Markdown (docs/artefacts.md)."""
    lines = ["# Parquet artefacts", "", "Generated from `linepo/schemas.py`; do not edit by hand.", ""]
    for kind, columns in _COLUMNS.items():
        lines += [f"## {kind}", "", "| column | type | nullable | meaning |", "|---|---|---|---|"]
        lines += [f"| `{n}` | {t} | {'yes' if nl else 'no'} | {d} |" for n, t, nl, d in columns]
        lines.append("")
    lines += ["# Evaluation outputs", "", "| path | format | content |", "|---|---|---|"]
    lines += [f"| `{path}` | {fmt} | {doc} |" for path, fmt, doc in OTHER_ARTEFACTS]
    lines.append("")
    return "\n".join(lines)

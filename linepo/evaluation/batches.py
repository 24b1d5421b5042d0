"""Comparisons judged in batches: one job, one judge load, many pairs, and a per-pair cache so
that a rerun judges only the pairs it has not judged yet.

    linepo compare-batch --pairs '{"<id>": {"a": a.parquet, "b": b.parquet}, ...}' \
        --judge-config '{"type": "synthetic"}' --cache-dir results/eval/comparisons/cache --out batch.parquet

The workflow (rules/evaluate.smk) deals the comparisons into ``evaluation.compare_jobs`` batches
by a hash of their ids (:meth:`linepo.workflow.evalplan.EvalPlan.batches`). Snakemake deletes a
job's outputs before it runs it, so the per-pair files cannot be outputs: each pair is judged
exactly as ``linepo compare`` judges it (:func:`linepo.evaluation.winrates.compare_files`, the
judge's failure count restarted per pair) and written to ``<cache-dir>/<id>.parquet``,
atomically, as soon as it is done, so a batch killed midway keeps the pairs it finished. The
batch output (every pair's rows with a ``comparison`` column; each pair's metadata under
``comparisons``) is written last and is what the win-rate tables read.

A cached pair is reused only when it reads back cleanly (its recorded digest, :mod:`linepo.provenance`)
and records the same two generation files (their digests, in order) and the same judge, up to
:data:`RUN_ONLY_JUDGE_KEYS`; otherwise it is judged again. The cache is an accelerator, never
the truth: deleting it costs time only. Its folder holds a ``CACHEDIR.TAG``, so ``linepo verify``
(and backup tools) leave it alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

from linepo.errors import InputError

#: judge keys that say how the judge runs, not what it answers (execution keys of the config):
#: a pair cached under another value is reused. ``max_failed_fraction`` decides what the
#: win-rate tables keep, recorded per pair from the current config.
RUN_ONLY_JUDGE_KEYS = ("share_prefixes", "max_failed_fraction", "data_parallel")

#: https://bford.info/cachedir/: the folder is a cache (linepo verify and backup tools skip it)
CACHEDIR_TAG = ("Signature: 8a477f597d28d172789f06886806bc55\n"
                "# A cache of linepo compare-batch (one file per comparison): deleting it costs time only.\n")


def judge_identity(config: dict) -> dict:
    """What decides a judge's answers: its config less :data:`RUN_ONLY_JUDGE_KEYS`."""
    return {key: value for key, value in config.items() if key not in RUN_ONLY_JUDGE_KEYS}


def cache_path(cache_dir, comparison: str) -> Path:
    return Path(cache_dir) / f"{comparison}.parquet"


def _digests(paths) -> list:
    from linepo.provenance import current_record

    return [(current_record(path) or {}).get("sha256") for path in paths]


def cached_pair(path, a, b, judge_config: dict):
    """``((table, metadata), None)`` for a reusable cache entry of generations ``a`` and ``b``
    under ``judge_config``, else ``(None, why not)``."""
    import pyarrow as pa

    from linepo.provenance import recorded_provenance
    from linepo.schemas import read_metadata, read_table

    path = Path(path)
    if not path.exists():
        return None, "not cached"
    try:
        table = read_table(path, "comparisons")
        meta = read_metadata(path)
    except (InputError, OSError, ValueError, pa.ArrowException) as err:
        return None, f"unreadable or changed ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    recorded = [item.get("sha256") for item in (recorded_provenance(path) or {}).get("inputs") or []
                if isinstance(item, dict)]
    if len(recorded) != 2 or recorded != _digests([a, b]):
        return None, "made from other generation files (their digests differ)"
    if not isinstance(meta.get("judge"), dict) or judge_identity(meta["judge"]) != judge_identity(judge_config):
        return None, "judged by another judge"
    return (table, meta), None


def parse_pairs(text: str, option: str = "--pairs") -> dict[str, dict]:
    """``--pairs``: inline JSON or a JSON file, ``{comparison id: {"a": path, "b": path}}``."""
    from linepo.sources import json_object_argument

    pairs, source = json_object_argument(text, option)
    if not pairs:
        raise InputError(f'{source}: must be a non-empty JSON object {{comparison id: {{"a": path, "b": path}}}}')
    for cid, pair in pairs.items():
        if not isinstance(pair, dict) or not all(isinstance(pair.get(k), str) for k in ("a", "b")):
            raise InputError(f'{source}: comparison {cid!r} must be {{"a": path, "b": path}}')
        if "/" in cid or cid.startswith("."):
            raise InputError(f"{source}: comparison id {cid!r} is not a file name")
    return pairs


def judge_batch(pairs: dict, judge_config: dict, cache_dir, out, *, source: str = "--judge-config",
                log=None) -> dict:
    """Judge every pair not cached (loading the judge once, and only if one is needed), then
    write the batch file ``out``.

    Args:
        pairs: ``{comparison id: {"a": generation path, "b": generation path}}``.
        log: called with one line per pair and a last one with the counts (default: stderr).

    Returns:
        ``{"pairs", "judged", "reused", "judge_loads", "failed"}``.

    Raises:
        InputError: as ``linepo compare`` for a pair (named); the pairs judged before it stay cached.
    """
    import pyarrow as pa

    from linepo.evaluation.winrates import compare_files
    from linepo.schemas import read_metadata, read_table, write_table
    from linepo.stages.judges import make_judge
    from linepo.stages.judges.base import config_failure_limit

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    limit = config_failure_limit(judge_config, source)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tag = cache_dir / "CACHEDIR.TAG"
    if not tag.exists():
        tag.write_text(CACHEDIR_TAG)
    judge, judged, reused, tables, metas = None, 0, 0, [], {}
    for cid in sorted(pairs):
        a, b = pairs[cid]["a"], pairs[cid]["b"]
        path = cache_path(cache_dir, cid)
        hit, why = cached_pair(path, a, b, judge_config)
        if hit is None:
            if judge is None:
                log(f"loading the judge ({judge_config.get('type')}): once for this batch")
                judge = make_judge(judge_config, source=source)
            try:
                stats = compare_files(a, b, judge_config, path, source=source, judge=judge)
            except InputError as err:
                raise InputError(f"comparison {cid}: {err}") from None
            table, meta = read_table(path, "comparisons"), read_metadata(path)
            judged += 1
            log(f"judged {cid} ({why}): {stats['comparisons']} comparisons, {stats['failed']} failed")
        else:
            table, meta = hit
            reused += 1
            log(f"reused {cid} from {path}")
        tables.append(table.add_column(0, "comparison", pa.array([cid] * table.num_rows, pa.string())))
        metas[cid] = {"a": a, "b": b, "judge": meta["judge"], "failed": meta.get("failed", 0),
                      "max_failed_fraction": limit,
                      **({"failure_summary": meta["failure_summary"]} if meta.get("failure_summary") else {})}
    batch = pa.concat_tables(tables)
    generations = sorted({p for pair in pairs.values() for p in (pair["a"], pair["b"])})
    write_table(batch, out, "comparison_batch", metadata={"judge": judge_config, "comparisons": metas},
                inputs=generations)
    stats = {"pairs": len(pairs), "judged": judged, "reused": reused, "judge_loads": int(judge is not None),
             "failed": sum(m["failed"] for m in metas.values())}
    log(f"compare-batch: {len(pairs)} pairs: {judged} judged, {reused} reused from {cache_dir}; "
        f"judge loaded {'once' if judge is not None else 'never (all cached)'}")
    return stats


# ----------------------------------------------------------------------------- reading


def read_batch(path) -> dict[str, dict]:
    """A batch file's comparisons: ``{id: {"table": its comparisons table, "a", "b", "judge",
    "failed", "max_failed_fraction", "failure_summary"}}``, rows in the order judged."""
    import pyarrow.compute as pc

    from linepo.schemas import read_metadata, read_table, schema

    table = read_table(path, "comparison_batch")
    metas = read_metadata(path).get("comparisons")
    if not isinstance(metas, dict):
        raise InputError(f"{path}: no 'comparisons' metadata: not a comparison batch written by linepo compare-batch")
    columns, ids = schema("comparisons").names, table.column("comparison")
    return {cid: {**meta, "table": table.filter(pc.equal(ids, cid)).select(columns)} for cid, meta in metas.items()}


def load_comparisons(entries: dict, limit: float | None = None) -> dict[str, dict]:
    """The comparisons a win-rate spec names, as :func:`linepo.evaluation.winrates.win_rate_matrix` reads them.

    Args:
        entries: ``{id: {"batch": batch file}}`` (what the workflow writes), ``{id: {"path":
            comparisons file}}`` or ``{id: comparisons file}`` (``linepo compare``'s); other
            keys (``a``, ``b``) are kept.
        limit: the failure limit of every cell; None: the one each comparison recorded.

    Returns:
        ``{id: {..., "table", "max_failed_fraction", "failure_summary"}}``.
    """
    from linepo.schemas import read_metadata, read_table

    batches, out = {}, {}
    for cid, entry in entries.items():
        entry = {"path": entry} if isinstance(entry, str) else dict(entry)
        if "batch" in entry:
            path = entry.pop("batch")
            if path not in batches:
                batches[path] = read_batch(path)
            if cid not in batches[path]:
                raise InputError(f"{path}: comparison {cid} is not in this batch: rerun its rule "
                                 f"(snakemake --cores all --forcerun {path})")
            found = batches[path][cid]
            table, meta = found["table"], found
        else:
            path = entry.pop("path")
            table, meta = read_table(path, "comparisons"), read_metadata(path)
        out[cid] = {**entry, "table": table,
                    "max_failed_fraction": meta.get("max_failed_fraction") if limit is None else limit,
                    "failure_summary": meta.get("failure_summary")}
    return out

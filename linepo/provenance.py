"""Content digests of artefacts, so that a readable but wrong file never spreads silently.

Snakemake reruns a job when a file's mtime or recipe changes, not when its content does: a
parquet file cut to 3 of its rows and rewritten, or weights overwritten inside a policy
folder (a ``directory()`` output, whose mtime does not move), would be read by every later
job. So every artefact records what it is and what it was made from:

- a parquet table (:func:`linepo.schemas.write_table`) keeps, in its linepo metadata,
  ``provenance = {sha256, rows, inputs}``: the sha256 of its data (:func:`table_digest`:
  column names, types and values; not the compression nor the metadata) and its row count;
  :func:`linepo.schemas.read_table` recomputes it on every read.
- a model folder (:func:`linepo.stages.models.save_policy`) keeps ``linepo_provenance.json``:
  the sha256 of each of its files (weights, config, tokenizer) and the inputs it was made
  from; :func:`check_policy_folder` rehashes them whenever a policy is loaded.
- ``inputs`` lists ``{path, sha256, rows|files}`` of the artefacts an output was made from,
  path as the job was given it (relative in the workflow). A job trusts its inputs' own
  checks; ``linepo verify`` (:func:`verify_tree`) checks a whole tree, chains included: an
  output whose input has changed since is stale.

Files without a recorded digest (hand-made inputs) are read as they are.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from linepo.errors import InputError

#: Written by save_policy into every model folder, next to the weights.
PROVENANCE_FILE = "linepo_provenance.json"
#: A file with one of these suffixes that a folder's provenance does not list was added later.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".msgpack", ".h5")
#: The schema metadata key linepo.schemas writes its JSON under.
METADATA_KEY = b"linepo"


def forcerun_hint(paths) -> str:
    """The command that rebuilds ``paths`` and everything made from them (run where snakemake runs)."""
    return "snakemake --cores all --forcerun " + " ".join(str(p) for p in paths)


def _rerun(path) -> str:
    return f"rerun its rule: {forcerun_hint([path])}"


def file_sha256(path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


# ---------------------------------------------------------------- tables


def table_digest(table) -> str:
    """sha256 over a table's column names, types and values, in order.

    Independent of the chunking, the parquet compression and the schema metadata, so a
    table hashes the same before it is written and after it is read back.
    """
    h = hashlib.sha256(f"linepo-table-1 rows={table.num_rows}\n".encode())
    for name, column in zip(table.column_names, table.columns):
        h.update(f"column {name}: {_type_name(column.type)}\n".encode())
        _hash_array(h, column.combine_chunks())
    return h.hexdigest()


def _type_name(kind) -> str:
    """The type without a list's item field name (pyarrow writes "item", parquet reads "element")."""
    import pyarrow as pa

    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return f"list<{_type_name(kind.value_type)}>"
    return str(kind)


def _hash_array(h, array) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = array.type
    h.update(f"n={len(array)} nulls={array.null_count}\n".encode())
    if array.null_count:
        h.update(np.packbits(array.is_null().to_numpy(zero_copy_only=False)).tobytes())
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        h.update(pc.list_value_length(array).fill_null(0).to_numpy().astype("<i8").tobytes())
        _hash_array(h, pc.list_flatten(array))
    elif pa.types.is_string(kind) or pa.types.is_binary(kind) or pa.types.is_large_string(kind) \
            or pa.types.is_large_binary(kind):
        h.update(pc.binary_length(array).fill_null(0).to_numpy().astype("<i8").tobytes())
        if len(array):
            width = 8 if pa.types.is_large_string(kind) or pa.types.is_large_binary(kind) else 4
            offsets = np.frombuffer(array.buffers()[1], dtype=f"<i{width}", count=len(array) + 1,
                                    offset=array.offset * width)
            data = array.buffers()[2]
            if data is not None:
                h.update(memoryview(data)[int(offsets[0]):int(offsets[-1])])
    elif pa.types.is_boolean(kind):
        h.update(array.fill_null(False).to_numpy(zero_copy_only=False).astype("u1").tobytes())
    elif pa.types.is_integer(kind) or pa.types.is_floating(kind):
        values = array.fill_null(0).to_numpy(zero_copy_only=False)
        h.update(values.astype(values.dtype.newbyteorder("<")).tobytes())
    else:  # no artefact has one today: canonical JSON of the values
        h.update(json.dumps(array.to_pylist(), sort_keys=True, default=str).encode())


def table_record(table, inputs=None, environments=None) -> dict:
    """The ``provenance`` entry of a table's metadata: its digest, rows, inputs' records and the
    numerics environments behind it (:mod:`linepo.numerics`; left out when none is known)."""
    record = {"sha256": table_digest(table), "rows": table.num_rows, "inputs": describe_inputs(inputs or [])}
    return {**record, "environments": environments} if environments else record


def recorded_provenance(path) -> dict | None:
    """The provenance a parquet file's metadata records, or None (a hand-made file, or not parquet)."""
    import pyarrow.parquet as pq

    try:
        raw = (pq.read_schema(path).metadata or {}).get(METADATA_KEY)
        provenance = json.loads(raw).get("provenance") if raw else None
    except (OSError, ValueError):
        return None
    return provenance if isinstance(provenance, dict) and "sha256" in provenance else None


def table_problem(table, recorded: dict | None) -> str | None:
    """Why ``table`` (as read) does not match the provenance its file recorded, or None."""
    if not recorded or "sha256" not in recorded:
        return None
    if table_digest(table) == recorded["sha256"]:
        return None
    return (f"content does not match its recorded digest ({recorded.get('rows')} rows recorded, "
            f"{table.num_rows} found): the file was changed after it was written")


def check_table(path, table, recorded: dict | None) -> None:
    """Raise the one-line InputError when a table read from ``path`` is not what was written."""
    problem = table_problem(table, recorded)
    if problem:
        raise InputError(f"{path}: {problem}; {_rerun(path)}")


# ---------------------------------------------------------------- model folders


def folder_files(folder) -> dict[str, str]:
    """sha256 of every file in ``folder`` (relative POSIX names), its provenance file excepted."""
    folder = Path(folder)
    return {path.relative_to(folder).as_posix(): file_sha256(path)
            for path in sorted(folder.rglob("*")) if path.is_file() and path.name != PROVENANCE_FILE}


def files_digest(files: dict) -> str:
    """A folder's digest: sha256 of its files' canonical JSON (what an output made from it records)."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def write_folder_provenance(folder, inputs=None, environments=None) -> Path:
    """Record the sha256 of every file in ``folder`` (and its inputs) in its provenance file,
    with the numerics ``environments`` behind it (:mod:`linepo.numerics`).

    Called on the temp folder just before its atomic rename, after every other file is written.
    """
    files = folder_files(folder)
    record = {"sha256": files_digest(files), "files": files, "inputs": describe_inputs(inputs or [])}
    if environments:
        record["environments"] = environments
    path = Path(folder) / PROVENANCE_FILE
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return path


def read_folder_provenance(folder) -> dict | None:
    """A folder's recorded provenance, or None when it has none (hand-made, or from the hub)."""
    path = Path(folder) / PROVENANCE_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"files": None}
    return record if isinstance(record, dict) else {"files": None}


def folder_problems(folder, record: dict | None = None) -> list[str]:
    """Why ``folder``'s files do not match its provenance file ([] when they do, or it has none)."""
    folder = Path(folder)
    record = read_folder_provenance(folder) if record is None else record
    if record is None:
        return []
    files = record.get("files")
    if not isinstance(files, dict):
        return [f"{PROVENANCE_FILE} is not readable JSON with a 'files' entry: the folder was changed after it "
                "was written"]
    problems = []
    for name, digest in sorted(files.items()):
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is recorded in {PROVENANCE_FILE} but missing")
        elif file_sha256(path) != digest:
            problems.append(f"{name} does not match its recorded sha256 ({PROVENANCE_FILE}): "
                            "the folder was changed after it was written")
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_file() and path.suffix in WEIGHT_SUFFIXES and name not in files:
            problems.append(f"{name} is not recorded in {PROVENANCE_FILE}: weights added after the folder was written")
    return problems


_CHECKED: dict[str, tuple] = {}


def _signature(folder: Path) -> tuple:
    return tuple((p.name, s.st_size, s.st_mtime_ns, s.st_ino)
                 for p in sorted(folder.rglob("*")) if p.is_file() for s in [p.stat()])


def check_policy_folder(path_or_name) -> None:
    """Before a policy is loaded: its folder's files are the ones its provenance recorded.

    A hub id or a folder without a provenance file passes. A folder is rehashed once per
    process unless its files change (scoring loads two policies; a trainer saves several).

    Raises:
        InputError: one line naming the folder, the file and the rerun command.
    """
    folder = Path(str(path_or_name)).expanduser()
    if not (folder / PROVENANCE_FILE).is_file():
        return
    key, signature = str(folder.resolve()), _signature(folder)
    if _CHECKED.get(key) == signature:
        return
    problems = folder_problems(folder)
    if problems:
        raise InputError(f"{path_or_name}: {problems[0]}; {_rerun(path_or_name)}")
    _CHECKED[key] = signature


# ---------------------------------------------------------------- inputs


def current_record(path) -> dict | None:
    """``{sha256, rows|files}`` of an artefact as it is now, or None when ``path`` is not local.

    A parquet file or model folder with recorded provenance gives its recorded digest (its
    own check, at read or load, compares that with the content); others are hashed.
    """
    import pyarrow.parquet as pq

    path = Path(str(path)).expanduser()
    if path.is_dir():
        record = read_folder_provenance(path)
        if record and isinstance(record.get("files"), dict) and "sha256" in record:
            return {"sha256": record["sha256"], "files": len(record["files"])}
        files = folder_files(path)
        return {"sha256": files_digest(files), "files": len(files)}
    if not path.is_file():
        return None
    if path.suffix == ".parquet":
        recorded = recorded_provenance(path)
        if recorded:
            return {"sha256": recorded["sha256"], "rows": recorded.get("rows")}
        try:
            table = pq.read_table(path)
        except (OSError, ValueError):
            return {"sha256": file_sha256(path)}
        return {"sha256": table_digest(table), "rows": table.num_rows}
    return {"sha256": file_sha256(path)}


def describe_inputs(inputs) -> list[dict]:
    """``[{path, sha256, rows|files}]`` for the local ones of ``inputs`` (paths or records already made).

    Paths are kept as given (relative in the workflow: no temp or absolute paths when the
    caller gives none), so equal jobs record equal bytes. Hub ids are left out.
    """
    records = []
    for item in inputs:
        if isinstance(item, dict):
            records.append(item)
            continue
        current = current_record(item)
        if current is not None:
            records.append({"path": os.path.normpath(str(item)), **current})
    return records


# ---------------------------------------------------------------- a whole tree (linepo verify)


def verify_tree(root) -> dict:
    """Check every artefact under ``root``: parquet digests, model folders, recorded inputs.

    Temp files and folders (``.name...``), training side folders (``*.partial``) and caches
    (a folder with a ``CACHEDIR.TAG``) are skipped. The workflow folder is the working directory when ``root`` lies inside it, else
    ``root``'s parent; recorded relative input paths are resolved from it (else from the
    nearest folder above ``root`` where they exist), and problems are named relative to it.

    Returns:
        ``{"problems": [(path, reason)], "rebuild": [paths to --forcerun: the flagged ones not
        made from another flagged one], "tables": n, "folders": n, "unrecorded": n (parquet
        files without a digest), "workflow": folder, "environments": [each artefact's recorded
        numerics environments (linepo.numerics)]}``
    """
    import pyarrow.parquet as pq

    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: no such folder")
    tables, folders = [], []
    for directory, subdirs, names in os.walk(root):
        if "CACHEDIR.TAG" in names:  # a cache (the comparison batches' pairs): no artefact of its own
            subdirs[:] = []
            continue
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and not d.endswith(".partial"))
        if PROVENANCE_FILE in names:
            folders.append(Path(directory))
        tables += [Path(directory) / n for n in sorted(names) if n.endswith(".parquet") and not n.startswith(".")]
    cwd = Path.cwd()
    workflow = cwd if root.resolve().is_relative_to(cwd) else root.resolve().parent  # where snakemake runs
    bases = [workflow, cwd, *root.resolve().parents]
    problems: list[tuple[str, str]] = []
    flagged: list[Path] = []
    made_of: dict[Path, set[Path]] = {}  # output -> the inputs it records, found
    own: dict[str, dict | None] = {}  # resolved path -> the artefact's own recorded digest (None: none)
    made_from: list[tuple[Path, list]] = []
    now_by_path: dict[str, dict | None] = {}
    unrecorded = 0

    def shown(resolved: Path) -> str:  # paths as snakemake, run in the workflow folder, names them
        return os.path.relpath(resolved, workflow) if resolved.is_relative_to(workflow) else str(resolved)

    def flag(path, reason):
        resolved = Path(path).resolve()
        if (shown(resolved), reason) not in problems:
            problems.append((shown(resolved), reason))
        if resolved not in flagged:
            flagged.append(resolved)

    for path in tables:
        recorded = recorded_provenance(path)
        own[str(path.resolve())] = recorded
        try:
            table = pq.read_table(path)
        except (OSError, ValueError) as err:
            flag(path, f"not a readable parquet file ({str(err).splitlines()[0] if str(err) else type(err).__name__})")
            continue
        if recorded is None:
            unrecorded += 1
            continue
        problem = table_problem(table, recorded)
        if problem:
            flag(path, problem)
        made_from.append((path, recorded.get("inputs") or []))
    for folder in folders:
        record = read_folder_provenance(folder) or {}
        own[str(folder.resolve())] = record if isinstance(record.get("files"), dict) else None
        for problem in folder_problems(folder, record):
            flag(folder, problem)
        made_from.append((folder, record.get("inputs") or []))
    for output, inputs in made_from:
        for item in inputs:
            if not isinstance(item, dict) or "sha256" not in item or "path" not in item:
                continue
            given = Path(item["path"])
            found = given if given.is_absolute() else next((b / given for b in bases if (b / given).exists()), None)
            if found is None or not found.exists():
                flag(output, f"made from {item['path']}, which is missing")
                continue
            made_of.setdefault(Path(output).resolve(), set()).add(found.resolve())
            key = str(found.resolve())
            if key not in own:
                own[key] = None
            if key not in now_by_path:
                now_by_path[key] = current_record(found)
            now = now_by_path[key]
            if now is not None and now["sha256"] != item["sha256"]:
                flag(output, f"stale: made from {item['path']}, whose content has changed since "
                             f"(sha256 {item['sha256'][:12]} recorded, {now['sha256'][:12]} now)")
                if own[key] is None and found.resolve().is_relative_to(root.resolve()):
                    flag(found, "no recorded digest, and not what later files were made from: "
                                "rewritten by something other than linepo")
    rebuild = [shown(p) for p in flagged if not _upstream(p, made_of) & set(flagged)]  # rerun downstream anyway
    return {"problems": problems, "rebuild": rebuild, "tables": len(tables), "folders": len(folders),
            "unrecorded": unrecorded, "workflow": workflow,
            "environments": [record.get("environments") or [] for record in own.values() if record]}


def _upstream(path: Path, made_of: dict) -> set:
    """Every artefact ``path`` was made from, through the recorded inputs, transitively."""
    seen, todo = set(), list(made_of.get(path, ()))
    while todo:
        item = todo.pop()
        if item not in seen:
            seen.add(item)
            todo += made_of.get(item, ())
    return seen

"""Prompt sets for the workflow: load, de-duplicate, cap and shard them (paper §5).

Training prompts come from UltraFeedback-binarized, split into K equal random shards,
one shard per iteration; evaluation uses AlpacaEval's 805 instructions.

    linepo prompts --source HuggingFaceH4/ultrafeedback_binarized --split train_prefs \\
        --shards 3 --seed 0 --out-dir results/prompts/train
    linepo prompts --source alpaca_eval/eval_set.json --out results/prompts/eval.parquet

Local files (.jsonl, .json, .parquet) and hub datasets both go through
``datasets.load_dataset``, so they are read the same way. The column layout is
detected (:data:`LAYOUTS`). A prompt_id is the sha256 of the prompt text unless
the source gives one; UltraFeedback's and UltraChat's own ids are that same hash.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from pathlib import Path

from linepo.errors import InputError
from linepo.sources import looks_local

#: local file suffix -> datasets packaged builder
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}

#: detected layouts, first match wins: (name, column that must exist, where the prompt is)
LAYOUTS = [
    ("prompt", "prompt", "the `prompt` column: UltraFeedback-binarized, UltraChat-200k, plain files"),
    ("alpaca_eval", "instruction", "the `instruction` column: AlpacaEval"),
    ("messages", "messages", "the first user turn of `messages` (list of {role, content})"),
]


def sha256_id(text: str) -> str:
    """The stable prompt id: sha256 of the UTF-8 prompt text, hex."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _looks_local(source: str) -> bool:
    # linepo.sources' rule, plus: a name with a data-file suffix is meant as a file, so a typo
    # gives "file not found", not a hub lookup.
    return Path(source).exists() or Path(source).suffix.lower() in FILE_BUILDERS or looks_local(source)


def _one_line(err: BaseException) -> str:
    # datasets wraps the parse error ("DatasetGenerationError: An error occurred..."): show the cause.
    while err.__cause__ is not None:
        err = err.__cause__
    return " ".join(f"{type(err).__name__}: {err}".split())


def _check_parquet(path: Path, source: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pq.read_metadata(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f"{source}: not a readable .parquet file ({_one_line(err)})") from err


def _check_json_file(path: Path, source: str) -> None:
    """A .json/.jsonl file must be UTF-8 text, and a .json file not one JSON object: datasets
    fails on other bytes with a long traceback, and reads one object as one row (one prompt)."""
    import codecs
    import json

    decoder, offset, first = codecs.getincrementaldecoder("utf-8")(), 0, ""
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            try:
                text = decoder.decode(chunk)
            except UnicodeDecodeError as err:
                raise InputError(f"{source}: not UTF-8 text (byte 0x{err.object[err.start]:02x} near byte "
                                 f"{offset + err.start}); save it as UTF-8") from None
            first = first or text.lstrip()[:1]
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise InputError(f"{source}: not UTF-8 text (it ends inside a character); save it as UTF-8") from None
    if path.suffix.lower() != ".json" or first != "{":
        return
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:  # several objects: JSON lines, which datasets reads row by row
        return
    if isinstance(value, dict):
        raise InputError(f"{source}: holds one JSON object, not a list of records: write a list "
                         '([{"prompt": ...}, ...]) or one object per line in a .jsonl file')


def _load_dataset(source: str, split, name, revision, trust_remote_code):
    """The datasets.Dataset of ``source``; every failure is an InputError naming it."""
    import datasets  # heavy: imported only when prompts are loaded
    from datasets.exceptions import DatasetsError

    load_errors = (OSError, ValueError, DatasetsError)
    extra = {"trust_remote_code": True} if trust_remote_code else {}
    bars_were_on = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # keep the CLI's stderr to one line on error
    try:
        if _looks_local(source):
            path = Path(source).expanduser()
            if not path.exists():
                raise InputError(f"{source}: file not found")
            builder = FILE_BUILDERS.get(path.suffix.lower())
            if not path.is_file() or builder is None:
                raise InputError(f"{source}: not a .jsonl, .json or .parquet file")
            if name is not None or revision is not None:
                raise InputError(f"{source}: name and revision apply to hub datasets only, not to a local file")
            # The file's only split is named after the requested one, so "--split
            # train_prefs" and slices such as "train_prefs[:100]" work on a local dump too.
            split = split or "train"
            base = re.match(r"\w+", split)
            if base is None:
                raise InputError(f"--split {split!r}: not a split name")
            if path.stat().st_size == 0:
                raise InputError(f"{source}: empty file")
            if builder == "parquet":
                _check_parquet(path, source)  # datasets would also log the error on stderr
            else:
                _check_json_file(path, source)
            # A throw-away cache: no stale Arrow copy of an edited file, nothing left in ~/.cache.
            verbosity = datasets.logging.get_verbosity()
            datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its parse error is in our message
            with tempfile.TemporaryDirectory(prefix="linepo-prompts-") as cache:
                try:
                    ds = datasets.load_dataset(
                        builder, data_files={base.group(0): str(path)}, split=split,
                        cache_dir=cache, keep_in_memory=True, **extra,
                    )
                except load_errors as err:
                    raise InputError(f"{source}: cannot load as a {path.suffix} file ({_one_line(err)})") from err
                finally:
                    datasets.logging.set_verbosity(verbosity)
            return ds
        try:
            ds = datasets.load_dataset(source, name=name, split=split, revision=revision, **extra)
        except load_errors as err:
            offline = " (HF_HUB_OFFLINE=1 is set: download it first or give a local file)"
            from huggingface_hub import constants

            hint = offline if constants.HF_HUB_OFFLINE else ""
            raise InputError(f"{source}: cannot load this dataset from the Hugging Face hub{hint}: {_one_line(err)}") from err
        if isinstance(ds, datasets.DatasetDict):
            if len(ds) != 1:
                raise InputError(f"{source}: has splits {sorted(ds)}; choose one with --split")
            ds = next(iter(ds.values()))
        return ds
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()


def _first_user_turn(messages: list, where: str):
    if not all(isinstance(m, dict) for m in messages):
        raise InputError(f"{where}: a chat must be a list of {{role, content}}")
    return next((m.get("content") for m in messages if m.get("role") == "user"), None)


#: ``--source embedded``: the embedded default's generated prompts (no file, no download).
EMBEDDED_SOURCE = "embedded"


def load_prompts(
    source: str,
    *,
    split: str | None = None,
    prompt_column: str | None = None,
    name: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> list[dict]:
    """Load the prompts of a local file or hub dataset as rows {prompt_id, prompt, source}.

    The prompt is taken from ``prompt_column`` when given, else from the first
    :data:`LAYOUTS` entry whose column exists. Prompts that are empty or only whitespace
    are dropped; duplicates (same exact text) are dropped, keeping the first, in source
    order. AlpacaEval rows also carry ``dataset`` (its sub-set, e.g. "oasst"); that key
    is not written to parquet.

    Raises:
        InputError: the file is missing, unreadable or of an unknown suffix; the hub
            dataset cannot be loaded (e.g. offline); the column layout is unknown or
            ``prompt_column`` is absent; a prompt is not text; two different prompts
            share a source prompt_id; or no prompt is left.
    """
    if source == EMBEDDED_SOURCE:
        # The project's own generated prompts (linepo.toy.world): split "train" or "eval".
        from linepo.toy.world import prompt_rows

        return prompt_rows(split or "train")
    ds = _load_dataset(source, split, name, revision, trust_remote_code)
    columns = list(ds.column_names)
    if prompt_column is not None:
        if prompt_column not in columns:
            raise InputError(f"--prompt-column {prompt_column!r}: no such column in {source}; columns: {columns}")
        layout = next((lay for lay, col, _ in LAYOUTS if col == prompt_column), "column")
        text_column = prompt_column
    else:
        match = next(((lay, col) for lay, col, _ in LAYOUTS if col in columns), None)
        if match is None:
            known = ", ".join(col for _, col, _ in LAYOUTS)
            raise InputError(f"{source}: unknown column layout {columns}; expected one of {known}, or give --prompt-column")
        layout, text_column = match
    if layout == "alpaca_eval" and "input" in columns and any(ds["input"]):
        # Alpaca-style instruction + input pairs would silently lose their input.
        raise InputError(f"{source}: column 'input' is not empty; instruction+input prompts are not supported, give --prompt-column")

    texts = list(ds[text_column])
    # The source's id is kept only when it belongs to the text we take.
    ids = list(ds["prompt_id"]) if "prompt_id" in columns and layout == "prompt" else [None] * len(texts)
    subsets = list(ds["dataset"]) if layout == "alpaca_eval" and "dataset" in columns else None

    rows, seen_text, seen_id = [], set(), {}
    for index, text in enumerate(texts):
        if isinstance(text, list):  # a chat: UltraChat's `messages`, or --prompt-column chosen
            text = _first_user_turn(text, f"{source}: row {index}: column {text_column!r}")
        if text is None:
            continue
        if not isinstance(text, str):
            raise InputError(f"{source}: row {index}: prompt in column {text_column!r} is {type(text).__name__}, not text")
        if not text.strip() or text in seen_text:
            continue
        seen_text.add(text)
        prompt_id = ids[index] or sha256_id(text)
        if prompt_id in seen_id:
            raise InputError(f"{source}: rows {seen_id[prompt_id]} and {index} have different prompts with the same prompt_id {prompt_id}")
        seen_id[prompt_id] = index
        row = {"prompt_id": str(prompt_id), "prompt": text, "source": source}
        if subsets is not None:
            row["dataset"] = subsets[index]
        rows.append(row)
    if not rows:
        raise InputError(f"{source}: no prompts: all {len(texts)} rows have an empty prompt in column {text_column!r}")
    return rows


#: ``linepo prompts --max-prompt-chars``' default: far beyond a real instruction, well below
#: what makes a 4k-position model's sampler allocate tens of GB. 0 or None: no limit.
MAX_PROMPT_CHARS = 20000


def drop_long(rows: list[dict], max_chars: int | None) -> tuple[list[dict], int]:
    """``rows`` without the prompts longer than ``max_chars`` characters, and how many were dropped.

    Sampling drops a prompt that does not fit the model anyway (:func:`linepo.stages.fit.fit_prompts`);
    this cheaper limit keeps pasted documents out of the prompt files, counted in the log.
    """
    if not max_chars:
        return list(rows), 0
    kept = [row for row in rows if len(row["prompt"]) <= max_chars]
    return kept, len(rows) - len(kept)


def take(rows: list[dict], limit: int | None) -> list[dict]:
    """The first ``limit`` rows (source order), or all when ``limit`` is None.

    Raises:
        InputError: ``limit`` is below 1.
    """
    if limit is None:
        return list(rows)
    if limit < 1:
        raise InputError(f"max_prompts={limit}: must be at least 1")
    return list(rows[:limit])


def shuffle_key(seed: int, prompt_id: str) -> str:
    """Sort key of the seeded shuffle: sha256 of seed and id, the same on every platform."""
    return hashlib.sha256(f"{seed}\x00{prompt_id}".encode()).hexdigest()


def split_prompts(rows: list[dict], num_shards: int, seed: int) -> list[list[dict]]:
    """Shuffle rows by a seeded hash of their prompt_id and cut them into ``num_shards``.

    Shard sizes differ by at most one (the first ``len(rows) % num_shards`` shards get
    the extra prompt), so no prompt is dropped. The result depends only on the set of
    prompt_ids and the seed (not on numpy's or Python's RNG), so it is the same everywhere.

    Raises:
        InputError: ``num_shards`` is below 1 or above the number of prompts.
    """
    if not 1 <= num_shards <= len(rows):
        raise InputError(f"num_shards={num_shards}: must be between 1 and the number of prompts ({len(rows)})")
    ordered = sorted(rows, key=lambda row: shuffle_key(seed, row["prompt_id"]))
    size, extra = divmod(len(ordered), num_shards)
    shards, start = [], 0
    for shard in range(num_shards):
        stop = start + size + (shard < extra)
        shards.append(ordered[start:stop])
        start = stop
    return shards

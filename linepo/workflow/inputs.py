"""Plan-time checks of the files a config names as input: the config files themselves and
the prompt sources. File reads only, no model, no ``datasets``.

*Config files*: Snakemake reads its config files with a YAML loader that keeps the last of
two equal keys without a word. :func:`check_config_files` re-reads every file the config
was made from (:func:`workflow_config_files`) and refuses a duplicated key, naming the
file, the key's section and its line; :func:`read_config_file` (``linepo plan``) does the same.

*Prompt sources* (:func:`check_prompt_sources`, called by
:func:`linepo.workflow.config.validate_config`): a local prompt file must exist and be a
.jsonl, .json or .parquet file, and give at least one prompt; the training prompts must fill
``num_splits`` splits. The prompts are counted here for the embedded source and for local
files up to :data:`COUNT_LIMIT` bytes (distinct non-empty prompts within ``max_prompt_chars``,
as ``linepo prompts`` keeps them); for a hub dataset only ``max_prompts`` is known. A file that cannot be parsed
here is left to ``linepo prompts``, which names the file and the reason.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from linepo.errors import InputError
from linepo.sources import looks_local

#: Local prompt files larger than this are not counted at plan time (their prompts are
#: counted by the prompts job); 64 MiB parse in about a second.
COUNT_LIMIT = 64 * 2**20

# ----------------------------------------------------------------------------- config files


def _section(path: list) -> str:
    return ".".join(str(p) for p in path) or "the top level"


def _check_duplicates(node, path: list, where: str, seen: set) -> None:
    if id(node) in seen:  # an alias of a node walked already
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`
                continue
            key = (key_node.tag, key_node.value) if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None:
                line = key_node.start_mark.line + 1
                if key in lines:
                    raise InputError(f"{where}: duplicate key {key_node.value} in {_section(path)} (line {line}; "
                                     f"first on line {lines[key]}): YAML keeps only the last value; remove one")
                lines[key] = line
            _check_duplicates(value_node, [*path, key_node.value if key else "?"], where, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_duplicates(item, [*path, index], where, seen)


def check_duplicate_keys(text: str, where: str) -> None:
    """Refuse a mapping with the same key twice in YAML (or JSON) ``text`` from file ``where``.
    Text that is not YAML is left to whoever parses it.

    Raises:
        InputError: "<where>: duplicate key eta in runs.linepo (line 12; first on line 11): ...".
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return
    if node is not None:
        _check_duplicates(node, [], where, set())


def read_config_file(path) -> dict:
    """A config file's mapping, refusing duplicated keys.

    Raises:
        InputError: the file is missing, not YAML, not a mapping, or repeats a key.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read the config file ({err.__class__.__name__})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML ({err.__class__.__name__})") from None
    check_duplicate_keys(text, str(path))
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InputError(f"{path}: a config file is a mapping of sections, not a {type(raw).__name__}")
    return raw


def workflow_config_files(workflow) -> list[str]:
    """The config files a Snakemake workflow's ``config`` was made from: the ``--configfile``
    ones, plus the Snakefile's ``configfile:`` unless ``--replace-workflow-config`` dropped it."""
    settings = getattr(workflow, "config_settings", None)
    given = list(getattr(workflow, "overwrite_configfiles", None) or [])
    if settings is not None and getattr(settings, "replace_workflow_config", False):
        files = given
    else:
        files = list(getattr(workflow, "configfiles", None) or []) + given
    return list(dict.fromkeys(str(f) for f in files))


def check_config_files(paths) -> None:
    """Refuse duplicated keys in each existing config file of ``paths`` (Snakemake reports missing ones)."""
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        check_duplicate_keys(text, str(path))


# ----------------------------------------------------------------------------- prompt sources


def _is_local(source: str) -> bool:
    from linepo.stages.prompts import FILE_BUILDERS

    return Path(source).expanduser().exists() or Path(source).suffix.lower() in FILE_BUILDERS or looks_local(source)


def _table(path: Path, wanted: list) -> tuple[list, list[dict]] | None:
    """The file's column names and its rows (of a parquet file: its ``wanted`` columns only);
    None when it cannot be read here."""
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            names = pq.read_schema(path).names
            read = [name for name in wanted if name in names]
            return names, (pq.read_table(path, columns=read).to_pylist() if read else [])
        text = path.read_text(encoding="utf-8")
        rows = ([json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix.lower() == ".jsonl"
                else json.loads(text))
    except Exception:  # noqa: BLE001 - any parse failure: linepo prompts reports it, naming the file
        return None
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        return None
    return list(dict.fromkeys(name for row in rows for name in row)), rows


def _prompt_text(value):
    if isinstance(value, list):  # a chat: its first user turn
        value = next((m.get("content") for m in value if isinstance(m, dict) and m.get("role") == "user"), None)
    return value if isinstance(value, str) and value.strip() else None


def _count_file(key: str, section: dict, path: Path) -> int | None:
    from linepo.stages.prompts import LAYOUTS

    column = section.get("prompt_column")
    table = _table(path, [column] if column else [col for _, col, _ in LAYOUTS])
    if table is None:
        return None
    columns, rows = table
    if column is None:
        column = next((col for _, col, _ in LAYOUTS if col in columns), None)
        if column is None:
            known = ", ".join(col for _, col, _ in LAYOUTS)
            raise InputError(f"config key {key}.source: {section['source']}: no {known} column; "
                             f"name the prompt's column with {key}.prompt_column")
    elif column not in columns:
        raise InputError(f"config key {key}.prompt_column: {column!r}: no such column in {section['source']} "
                         f"(columns: {', '.join(map(str, columns))})")
    texts = {text for row in rows if (text := _prompt_text(row.get(column))) is not None}
    from linepo.stages import prompts

    limit = section.get("max_prompt_chars", getattr(prompts, "MAX_PROMPT_CHARS", None))
    fitting = sum(len(text) <= limit for text in texts) if limit else len(texts)
    if texts and not fitting:  # linepo prompts drops the longer ones
        raise InputError(f"config key {key}.max_prompt_chars: all {len(texts)} prompts of {section['source']} are "
                         f"longer than {limit} characters: raise it (0: no limit)")
    return fitting


def count_prompts(key: str, section: dict) -> int | None:
    """How many prompts prompt section ``key`` (prompts, eval_prompts, validation.prompts)
    gives before ``max_prompts``; None when that is not known at plan time (a hub dataset, a
    large or unparsable file, a split slice such as ``train[:100]``).

    Raises:
        InputError: an unknown split of the embedded prompts; a local file that is missing, of
            another type, or without the prompt column.
    """
    from linepo.stages.prompts import EMBEDDED_SOURCE, FILE_BUILDERS

    source, split = str(section["source"]), section.get("split")
    if source == EMBEDDED_SOURCE:
        from linepo.toy.world import all_prompts

        splits = all_prompts()
        name = split or ("eval" if key == "eval_prompts" else "train")
        if name not in splits:
            raise InputError(f"config key {key}.split: {split!r}: the embedded prompts have splits "
                             f"{' and '.join(splits)}")
        return len(splits[name])
    if not _is_local(source):
        return None
    path = Path(source).expanduser()
    if not path.exists():
        raise InputError(f"config key {key}.source: {source}: file not found")
    if not path.is_file() or path.suffix.lower() not in FILE_BUILDERS:
        raise InputError(f"config key {key}.source: {source}: not a .jsonl, .json or .parquet file")
    if (split and not re.fullmatch(r"\w+", split)) or path.stat().st_size > COUNT_LIMIT:
        return None
    return _count_file(key, section, path)


def check_prompt_sources(config: dict) -> None:
    """Every prompt source can give prompts, and the training ones fill their splits.

    Raises:
        InputError: "config key prompts.num_splits: ..." (or .max_prompts, .source, .split).
    """
    sections = [("prompts", config["prompts"]), ("eval_prompts", config["eval_prompts"])]
    if config["validation"]["enabled"]:
        sections.append(("validation.prompts", config["validation"]["prompts"]))
    for key, section in sections:
        count = count_prompts(key, section)
        if count == 0:
            raise InputError(f"config key {key}.source: {section['source']}: no prompts (every prompt is empty)")
        if key != "prompts":
            continue
        splits, limit = section["num_splits"], section.get("max_prompts")
        if count is not None and count < splits and (limit is None or count <= limit):
            raise InputError(f"config key prompts.num_splits: {splits} splits of the {count} prompts of "
                             f"{section['source']}: every split needs a prompt; at most {count}")
        if limit is not None and limit < splits:
            raise InputError(f"config key prompts.max_prompts: {limit} prompt(s) cannot fill prompts.num_splits "
                             f"({splits}): every split needs a prompt; raise max_prompts or lower num_splits")

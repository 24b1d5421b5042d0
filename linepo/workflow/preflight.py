"""Plan-time checks of what the jobs will need, and of which config a working directory's
fixed-path results belong to.

*File checks* (called by :func:`linepo.workflow.config.validate_config`): a local folder that
the config names as a model — the SFT policy, its tokenizer, the base to fine-tune, a judge —
must hold what loading it needs: ``config.json``, weights (``model.safetensors``, or a
sharded index and every shard it names; ``pytorch_model.bin`` and its shards, pickles, only
with ``allow_pickle_weights``), tokenizer files, and for a
judge that reads its input in its chat template (``use_chat_template``, on by default) a
chat template (``chat_template.jinja`` or ``tokenizer_config.json``'s ``chat_template``). An
eval or validation prompt *file* takes no hub ``name``. Nothing is loaded: file lookups only.

*Environment checks* (:func:`check_environment`, called by rules/common.smk where snakemake
runs): with ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``) every hub id the jobs load
must be in the local Hugging Face cache with the same files, and ``backend: vllm`` needs
vllm importable. ``LINEPO_SKIP_ENV_CHECKS=1`` skips them, to plan here what runs elsewhere.

Each problem is one :class:`InputError` line naming the config key, before any job is planned,
instead of a failed job after the SFT import and sampling.

*Fixed-path outputs* — ``results/runs/<run>/replicate-<r>/`` (``steps.tsv``, ``prox_fidelity.tsv``),
``results/summary/``, ``results/eval/alpaca_eval/<checkpoint>/``, ``results/synthetic/<setting>/`` — are
named by config names, not recipe ids, so another config in the same working directory overwrites them.
:data:`MARKER` records a digest of what each was computed from (when jobs start: :func:`record_outputs`);
planning warns when this config would overwrite one another config wrote (:func:`config_switch_warning`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

from linepo.errors import InputError
from linepo.sources import looks_local

#: Set to 1 to skip :func:`check_environment` (planning on a machine that will not run the jobs).
SKIP_ENV = "LINEPO_SKIP_ENV_CHECKS"
#: Judge types that load a model.
LM_JUDGES = ("pairwise_lm", "reward_model")
#: Any one of these is a tokenizer's vocabulary (tokenizer_config.json alone is not).
VOCABULARY = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
              "sentencepiece.bpe.model")
_SINGLE_WEIGHTS = ("model.safetensors",)
_WEIGHT_INDEXES = ("model.safetensors.index.json",)
#: pickle weights (linepo.stages.models.pickle_weights decides which files): only with the opt-in
_PICKLE_SINGLE, _PICKLE_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
_ONLY_PICKLE = "only pickle weights"
_NO_WEIGHTS = "no weights (model.safetensors, or model.safetensors.index.json and its shards)"
_NO_TOKENIZER = "no tokenizer files (tokenizer.json, tokenizer.model or vocab.json)"
_NO_TEMPLATE = "no chat template (chat_template.jinja, or chat_template in tokenizer_config.json)"


def _true(value) -> bool:
    return str(value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


# ----------------------------------------------------------------------------- folders


def has_chat_template(folder: Path) -> bool:
    """Whether ``AutoTokenizer`` would find a chat template in ``folder`` (without loading it)."""
    folder = Path(folder)
    jinja = [folder / "chat_template.jinja", *sorted((folder / "additional_chat_templates").glob("*.jinja"))]
    if any(path.is_file() and path.read_text(encoding="utf-8", errors="replace").strip() for path in jinja):
        return True
    config = folder / "tokenizer_config.json"
    try:
        return bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, ValueError, AttributeError):
        return False


def _weights_problem(folder: Path, pickle_ok: bool = False) -> str | None:
    if any((folder / name).is_file() for name in _SINGLE_WEIGHTS):
        return None
    singles, indexes = _SINGLE_WEIGHTS, _WEIGHT_INDEXES
    if not any((folder / name).is_file() for name in indexes):
        from linepo.stages.models import pickle_weights  # the loader's own rule
        pickles = pickle_weights(folder)
        if pickles and not pickle_ok:
            return f"{_ONLY_PICKLE} ({pickles[0]})"
        singles, indexes = singles + (_PICKLE_SINGLE,), indexes + (_PICKLE_INDEX,)
        if any((folder / name).is_file() for name in singles):
            return None
    for name in indexes:
        index = folder / name
        if not index.is_file():
            continue
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return f"an unreadable {name} (no weight_map)"
        missing = [shard for shard in shards if not (folder / shard).is_file()]
        return f"no {missing[0]} (a shard named in {name})" if missing else None
    return _NO_WEIGHTS


def folder_problem(folder, *, weights: bool = True, tokenizer: bool = True, chat_template: bool = False,
                   remote_code: bool = False, pickle_ok: bool = False) -> str | None:
    """What loading ``folder`` as a model (``weights``) and/or tokenizer would miss, as a noun
    phrase ("no config.json"); None when nothing. With ``remote_code`` a tokenizer may keep its
    vocabulary in files of its own: ``tokenizer_config.json`` is enough. Pickle weights
    (``pytorch_model.bin``) count only with ``pickle_ok``."""
    folder = Path(folder)
    if weights:
        if not (folder / "config.json").is_file():
            return "no config.json"
        problem = _weights_problem(folder, pickle_ok)
        if problem:
            return problem
    if tokenizer:
        found = any((folder / name).is_file() for name in VOCABULARY) or any(folder.glob("*.tiktoken"))
        if not found and not (remote_code and (folder / "tokenizer_config.json").is_file()):
            return _NO_TOKENIZER
    if chat_template and not has_chat_template(folder):
        return _NO_TEMPLATE
    return None


def _hint(problem: str, template_key: str | None, tokenizer_key: str | None, pickle_key: str | None = None) -> str:
    if problem.startswith(_ONLY_PICKLE) and pickle_key:
        return ("; linepo loads safetensors only: convert them (linepo import-policy --allow-pickle-weights "
                f"--source <folder> --out <new folder>) or set {pickle_key}: true")
    if problem == _NO_TEMPLATE and template_key:
        return f"; set {template_key}: false to judge in plain text"
    if problem == _NO_TOKENIZER and tokenizer_key:
        return f"; name one with {tokenizer_key}"
    return ""


def check_model_folder(value, key: str, *, what: str, weights: bool = True, tokenizer: bool = True,
                       template_key: str | None = None, tokenizer_key: str | None = None,
                       remote_code: bool = False, pickle_key: str | None = None, pickle_ok: bool = False) -> None:
    """Config key ``key`` names a model (or tokenizer) ``value``: when that is a local folder (or
    can only mean one), it must hold what loading needs. Hub ids pass (:func:`check_environment`).

    Args:
        template_key: the judge's ``use_chat_template`` key: a chat template is required.
        tokenizer_key: the key that could name the tokenizer instead (said in the message).
        pickle_key, pickle_ok: the key that allows pickle weights (said in the message), and its value.

    Raises:
        InputError: "config key <key>: <value>: <what is missing>".
    """
    text = str(value)
    path = Path(text).expanduser()
    if not path.exists():
        if looks_local(text):
            raise InputError(f"config key {key}: {text}: {what} folder not found")
        return
    if not path.is_dir():
        raise InputError(f"config key {key}: {text}: not a folder (a {what} is a folder)")
    problem = folder_problem(path, weights=weights, tokenizer=tokenizer, chat_template=template_key is not None,
                             remote_code=remote_code, pickle_ok=pickle_ok)
    if problem:
        hint = _hint(problem, template_key, tokenizer_key, pickle_key)
        raise InputError(f"config key {key}: {text}: {problem}{hint}")


def _judge_needs(section: dict, key: str) -> dict:
    return {"what": "judge model", "template_key": f"{key}.use_chat_template" if section.get("use_chat_template", True)
            else None, "remote_code": bool(section.get("trust_remote_code", False)),
            "pickle_key": f"{key}.allow_pickle_weights", "pickle_ok": bool(section.get("allow_pickle_weights", False))}


def check_judge_files(section: dict, key: str) -> None:
    """A model judge (config key ``key``: "judge" or "evaluation.judge") names a model, and a
    local one holds weights, tokenizer and (unless ``use_chat_template: false``) a chat template."""
    if section.get("type") not in LM_JUDGES:
        return
    model = section.get("model")
    if not model:
        raise InputError(f"config key {key}.model: required for a {section['type']} judge "
                         "(a local model folder or a Hugging Face model name)")
    check_model_folder(model, f"{key}.model", **_judge_needs(section, key))


def check_prompt_names(config: dict) -> None:
    """``name`` (a hub dataset's configuration, e.g. alpaca_eval) with a local prompt file fails
    when the prompts are loaded; say so now."""
    from linepo.stages.prompts import EMBEDDED_SOURCE, FILE_BUILDERS

    sections = [("eval_prompts", config["eval_prompts"])]
    if config["validation"]["enabled"]:
        sections.append(("validation.prompts", config["validation"]["prompts"]))
    for key, section in sections:
        name, source = section.get("name"), str(section["source"])
        if name is None or source == EMBEDDED_SOURCE:
            continue
        local = Path(source).expanduser().exists() or Path(source).suffix.lower() in FILE_BUILDERS or looks_local(source)
        if local:
            raise InputError(f"config key {key}.name: {name!r} is a hub dataset's configuration, but {key}.source "
                             f"{source} is a local file, which has none: remove {key}.name")


# ----------------------------------------------------------------------------- environment


def offline_variable() -> str | None:
    """``"HF_HUB_OFFLINE=1"`` (or TRANSFORMERS_OFFLINE) when the hub may not be asked, else None."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if _true(os.environ.get(name)):
            return f"{name}=1"
    return None


def cached_snapshot(repo_id: str, probes=("config.json",)) -> Path | None:
    """The local cache folder of hub repository ``repo_id`` (its ``main`` snapshot) holding any
    of ``probes``; None when none is cached. Reads the cache only, never the network."""
    from huggingface_hub import try_to_load_from_cache

    for name in probes:
        found = try_to_load_from_cache(repo_id, name)
        if isinstance(found, str):
            return Path(found).parent
    return None


def _check_cached(value, key: str, offline: str, *, weights: bool = True, **needs) -> None:
    text = str(value)
    if not text or Path(text).expanduser().exists() or looks_local(text):
        return  # unset, or a folder: checked with the config
    later = f"download it first (hf download {text}), or plan for another machine with {SKIP_ENV}=1"
    snapshot = cached_snapshot(text, ("config.json",) if weights else ("tokenizer_config.json", "tokenizer.json"))
    if snapshot is None:
        raise InputError(f"config key {key}: {text}: not in the Hugging Face cache, and {offline} is set: {later}")
    needs.pop("what", None)
    template_key, tokenizer_key = needs.pop("template_key", None), needs.pop("tokenizer_key", None)
    pickle_key = needs.pop("pickle_key", None)
    problem = folder_problem(snapshot, weights=weights, chat_template=template_key is not None, **needs)
    if problem:
        raise InputError(f"config key {key}: {text}: its copy in the Hugging Face cache has {problem}"
                         f"{_hint(problem, template_key, tokenizer_key, pickle_key)}, and {offline} is set: {later}")


def _check_hub_cache(config: dict, plan, offline: str) -> None:
    policy, runs = config["policy"], bool(config["runs"])
    remote = bool(policy["trust_remote_code"])
    pickle = {"pickle_key": "policy.allow_pickle_weights", "pickle_ok": bool(policy.get("allow_pickle_weights"))}
    imported = plan is not None and Path(plan.policy_dir(plan.sft)).is_dir()  # nothing to download any more
    if policy["sft"] != "embedded" and not imported:
        own_tokenizer = policy.get("tokenizer") is None
        if policy["sft"] == "build":
            _check_cached(policy["build"]["base"], "policy.build.base", offline, tokenizer=own_tokenizer,
                          tokenizer_key="policy.tokenizer", remote_code=remote, **pickle)
        else:
            _check_cached(policy["sft"], "policy.sft", offline, tokenizer=own_tokenizer,
                          tokenizer_key="policy.tokenizer", remote_code=remote, **pickle)
        if not own_tokenizer:
            _check_cached(policy["tokenizer"], "policy.tokenizer", offline, weights=False, remote_code=remote)
    judges = [("judge", config["judge"])] if runs else []
    evaluation = config["evaluation"]
    if runs and evaluation["enabled"] and evaluation["judge"] != config["judge"]:
        judges.append(("evaluation.judge", evaluation["judge"]))
    for key, section in judges:
        if section.get("type") in LM_JUDGES:
            _check_cached(section.get("model") or "", f"{key}.model", offline, **_judge_needs(section, key))


def _check_backends(config: dict) -> None:
    import importlib.util

    evaluation = config["evaluation"]
    uses = [("sampling.backend", config["sampling"]["backend"]), ("judge.backend", config["judge"].get("backend"))]
    if evaluation["enabled"]:
        uses += [("evaluation.decoding.backend", evaluation["decoding"]["backend"]),
                 ("evaluation.judge.backend", (evaluation["judge"] or {}).get("backend"))]
    for key, backend in uses if config["runs"] else []:
        if backend != "vllm":
            continue
        try:
            installed = importlib.util.find_spec("vllm") is not None
        except (ImportError, ValueError):
            installed = False
        if not installed:
            raise InputError(f"config key {key}: vllm is not installed here (pip install 'linepo[vllm]'), "
                             f"or plan for another machine with {SKIP_ENV}=1")


def check_environment(config: dict, plan=None) -> None:
    """What the jobs of a *validated* config need from where they run: vllm for ``backend:
    vllm``, and offline every hub model, tokenizer and judge in the local cache. ``plan``: an
    SFT policy already in results/sft/ needs no download. Skipped with LINEPO_SKIP_ENV_CHECKS=1.

    Raises:
        InputError: "config key <key>: <reason>" for the first problem found.
    """
    if _true(os.environ.get(SKIP_ENV)):
        return
    offline = offline_variable()
    if offline:
        _check_hub_cache(config, plan, offline)
    _check_backends(config)


# ----------------------------------------------------------------------------- fixed-path outputs

#: Which config wrote each fixed-path output: {"outputs": {path: digest}}.
MARKER = "results/.linepo-config.json"


def _digest(*values) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:12]


def fixed_outputs(wiring) -> dict[str, str]:
    """The fixed-path outputs a config's workflow writes (a file, or a folder ending in "/"),
    each with a digest of what it is computed from (its rules' params: ids, labels, settings)."""
    config, plan, eplan = wiring.config, wiring.plan, wiring.eval
    outputs, summary = wiring.run_outputs(_digest), {}  # results/runs/<run>/replicate-<r>/steps.tsv
    if wiring.synthetic_judge and plan.runs:  # replicate 0's reports as before; the others' beside them
        summary["exploitability"] = {name: plan.exploitability_path(p) for name, p in wiring.evaluated.items()}
        summary.update({f"exploitability-{r}": wiring.exploitability_reports(r) for r in wiring.replicates if r})
    if wiring.evaluating:  # replicate 0's evaluation as before replicates; the others' beside it
        summary.update({"evaluation" + (f"-{r}" if r else ""): wiring.evaluation_inputs(r) for r in wiring.replicates})
        for c in eplan.checkpoints:
            outputs[f"results/eval/alpaca_eval/{c.name}/"] = _digest(c.label, c.generation, plan.eval_prompts)
    if summary:
        outputs["results/summary/"] = _digest(summary)
    outputs.update(wiring.prox_fidelity_outputs(_digest))  # their own entries: results/summary/'s digest stays
    for name, setting in config["synthetic"]["settings"].items():
        flags = [wiring.synthetic_flags(SimpleNamespace(setting=name, algorithm=a)) for a in setting["algorithms"]]
        outputs[f"results/synthetic/{name}/"] = _digest(setting["matrix"], setting["init"], setting["algorithms"], flags)
    return outputs


def _read_marker(marker) -> dict:
    try:
        recorded = json.loads(Path(marker).read_text(encoding="utf-8")).get("outputs", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def switched_outputs(wiring, marker=MARKER) -> list[str]:
    """This config's fixed-path outputs that exist and were written by another config."""
    recorded = _read_marker(marker)
    if not recorded:
        return []
    return [path for path, digest in fixed_outputs(wiring).items()
            if path in recorded and recorded[path] != digest and Path(path).exists()]


def config_switch_warning(wiring, marker=MARKER) -> str | None:
    """One warning line when this config would overwrite another config's fixed-path outputs."""
    switched = switched_outputs(wiring, marker)
    if not switched:
        return None
    if len(switched) > 3:
        named = f"{', '.join(switched[:2])} and {len(switched) - 2} more"
    else:
        named = " and ".join([", ".join(switched[:-1]), switched[-1]] if len(switched) > 1 else switched)
    return (f"linepo: warning: {marker}: another config wrote {named}; running this config overwrites "
            "them (use a separate working directory for each config)")


def warn_on_config_switch(wiring, marker=MARKER, stream=None) -> None:
    line = config_switch_warning(wiring, marker)
    if line:
        print(line, file=stream or sys.stderr)


def outputs_to_run(dag) -> list[str] | None:
    """The output paths of the jobs a Snakemake DAG is about to run; None if it cannot say."""
    try:
        return sorted({str(path) for job in dag.needrun_jobs() for path in job.output})
    except Exception:  # noqa: BLE001 - a Snakemake internal; then every fixed-path output is recorded
        return None


def record_outputs(wiring, written=None, marker=MARKER) -> None:
    """Record this config as the writer of its fixed-path outputs among ``written`` (paths that
    jobs are about to write; None: all of them). Called when jobs start, never in a dry run."""
    outputs = fixed_outputs(wiring)
    if written is not None:
        written = [str(p) for p in written]
        outputs = {path: digest for path, digest in outputs.items()
                   if any(w == path or (path.endswith("/") and w.startswith(path)) for w in written)}
    recorded = _read_marker(marker)
    if not outputs or all(recorded.get(path) == digest for path, digest in outputs.items()):
        return
    recorded.update(outputs)
    marker = Path(marker)
    body = {"about": "which config wrote each fixed-path output here: a digest of what it is computed from "
                     "(linepo.workflow.preflight); another config warns before overwriting them",
            "outputs": dict(sorted(recorded.items()))}
    tmp = marker.with_name(f"{marker.name}.{os.getpid()}.tmp")
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(body, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, marker)
    except OSError as err:  # a record, not a result: never the reason a run fails
        print(f"linepo: warning: {marker}: cannot record which config wrote the fixed-path outputs ({err})",
              file=sys.stderr)

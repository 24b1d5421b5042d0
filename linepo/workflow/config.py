"""Load and validate a workflow config against ``linepo/schema/config.schema.yaml``.

Validation fills in the schema's defaults, then checks what a schema cannot (a preference
matrix's P + Pᵀ = 1, per-algorithm run parameters from :mod:`linepo.algorithms`, checkpoints
that some run produces, held-out prompts that are held out, local model folders that hold what
loading them needs, prompt files without a hub ``name``: :mod:`linepo.workflow.preflight`;
prompt sources that exist and fill their splits: :mod:`linepo.workflow.inputs`; replicates that
vary what can vary: :mod:`linepo.workflow.replicates`; no NaN or infinity anywhere, no greedy
training sampler, no scheduler that cannot run as linepo trains, no two names that are one
folder on a case-insensitive file system; an unknown key gets the closest known one),
resolves the evaluation section (its judge and decoding default to the training ones) and
moves the *execution keys* — how a step is spread over processes, not what it computes — out
of their sections into ``config["_execution"]``, once: node ids, rule params and judge
configs never see them, so changing them reruns nothing. Errors are one line naming the config key
(long because every check the schema cannot express is here, one after another):

    linepo plan config.yaml --config     # the validated config, defaults filled in
"""

from __future__ import annotations

import copy
import difflib
import math
from importlib import resources
from pathlib import Path

import jsonschema
import yaml

from linepo.algorithms import ALGORITHMS
from linepo.errors import InputError
from linepo.sources import DTYPES, looks_local
from linepo.workflow.inputs import check_prompt_sources, read_config_file
from linepo.workflow.preflight import check_judge_files, check_model_folder, check_prompt_names
from linepo.workflow.replicates import check_replicates, replicates_shorthand
from linepo.workflow.step_settings import check_prompts_per_batch

#: section -> its keys that say how a step runs (worker processes, launcher), not what it computes
#: ``judge.max_failed_fraction`` is here too: a limit on what a judging step may lose decides
#: whether the step fails, not what it writes, so raising it after a failure re-judges nothing.
#: ``judge.share_prefixes`` too: prefix-shared judging gives the same probabilities (within 1e-5
#: in float32), so switching it is a matter of speed. ``evaluation.compare_jobs`` deals the
#: comparisons into batch jobs, each judging its pairs as alone and caching them: switching it
#: reruns the batches, which find their pairs cached.
EXECUTION_KEYS = {"sampling": ("data_parallel",),
                  "judge": ("data_parallel", "max_failed_fraction", "share_prefixes"),
                  "training": ("accelerate_config",), "evaluation": ("compare_jobs",)}
#: judge types that read ``share_prefixes`` (the others have no shared prefixes to run once)
_SHARING_JUDGES = ("pairwise_lm",)

#: transformers' ``SchedulerType`` names (5.x), written out: planning imports neither torch nor
#: transformers (tests/test_config_holes.py checks them against the installed transformers).
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
                 "warmup_stable_decay", "greedy")
#: schedulers that need arguments linepo never passes (``lr_scheduler_kwargs``): why each fails
_SCHEDULER_NEEDS = {"cosine_with_min_lr": "min_lr", "cosine_warmup_with_min_lr": "min_lr",
                    "warmup_stable_decay": "num_decay_steps"}
#: schedulers stepped by an evaluation loss: only with validation.enabled (the held-out pairs' loss)
_SCHEDULER_ON_EVAL = ("reduce_lr_on_plateau", "greedy")


def _schema() -> dict:
    """The config schema, its enums filled in from where they are defined: the algorithm
    registry, the tabular games, the loadable dtypes."""
    schema = yaml.safe_load(resources.files("linepo").joinpath("schema/config.schema.yaml").read_text())
    from linepo.games.runs import ALGORITHMS as GAME_ALGORITHMS

    run = schema["properties"]["runs"]["additionalProperties"]
    run["properties"]["algorithm"]["enum"] = list(ALGORITHMS)
    setting = schema["properties"]["synthetic"]["properties"]["settings"]["additionalProperties"]
    setting["properties"]["algorithms"]["items"]["enum"] = list(GAME_ALGORITHMS)
    schema["properties"]["policy"]["properties"]["dtype"]["enum"] = list(DTYPES)
    for name in ("training", "training_override"):
        schema["$defs"][name]["properties"]["lr_scheduler_type"]["enum"] = list(LR_SCHEDULERS)
    return schema


def _with_defaults(validator_class):
    """A validator that also writes each property's ``default`` into the instance."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_DefaultingValidator = _with_defaults(jsonschema.Draft202012Validator)


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _check_finite(value, path=()) -> None:
    """YAML's .nan and .inf are floats to the schema, and every bound test on a NaN passes."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"config key {_key(path)}: {value}: not a finite number (YAML .nan or .inf); give a number")
    if isinstance(value, dict):
        for name, item in value.items():
            _check_finite(item, (*path, name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_finite(item, (*path, index))


def _schema_message(error) -> str:
    """The schema error as one line; an unknown key with the closest known one."""
    if error.validator == "additionalProperties" and error.validator_value is False and isinstance(error.instance, dict):
        known = list(error.schema.get("properties", {}))
        unknown = [name for name in error.instance if name not in known]
        if unknown:
            close = difflib.get_close_matches(str(unknown[0]), known, n=1)
            hint = f"did you mean {close[0]}?" if close else f"known keys: {', '.join(known)}"
            return f"config key {_key([*error.absolute_path, unknown[0]])}: unknown key ({hint})"
    return f"config key {_key(error.absolute_path)}: {error.message}"


def validate_config(config: dict) -> dict:
    """Return a validated deep copy of ``config`` with defaults filled in and execution keys moved.

    Raises:
        InputError: "config key a.b.c: <reason>" for the first problem found.
    """
    config = copy.deepcopy(dict(config))
    config.pop("_execution", None)  # ours: rebuilt below
    _check_finite(config)
    replicates_shorthand(config)
    errors = sorted(_DefaultingValidator(_schema()).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise InputError(_schema_message(errors[0]))
    config["_execution"] = _split_execution(config)
    _check_synthetic(config["synthetic"])
    _check_policy(config["policy"])
    config["replicates"] = check_replicates(config["replicates"], config["policy"]["sft"])
    _check_sampling(config["sampling"])
    _check_names(config)
    _check_schedulers(config)
    check_prompts_per_batch(config)
    _check_judge(config["judge"], "config key judge")
    for name, run in config["runs"].items():
        _check_run(f"runs.{name}", run, config["prompts"]["num_splits"])
    _check_validation(config)
    check_prompt_names(config)
    check_prompt_sources(config)
    config["evaluation"] = resolve_evaluation(config)
    _check_resources(config)
    return config


def load_config(path: str) -> dict:
    """Read a YAML file (a key given twice is refused) and validate it."""
    return validate_config(read_config_file(path))


# ----------------------------------------------------------------------------- execution keys


def _split_execution(config: dict) -> dict:
    """Move :data:`EXECUTION_KEYS` out of their sections; returns ``{section: {key: value}}``.

    Raises:
        InputError: ``training.accelerate_config`` names no file.
    """
    execution = {}
    for section, keys in EXECUTION_KEYS.items():
        execution[section] = {key: config[section].pop(key) for key in keys if key in config[section]}
    _check_sharing(config["judge"].get("type"), execution["judge"], "judge")
    judge = config["evaluation"].get("judge")
    execution["evaluation"]["compare_jobs"] = int(execution["evaluation"].get("compare_jobs", 1))  # 2.0 is 2
    if isinstance(judge, dict):
        judge.pop("data_parallel", None)  # comparisons run in one process; never part of what is judged
        for key in ("max_failed_fraction", "share_prefixes"):  # the limit is read by the win-rate tables
            if key in judge:
                execution["evaluation"][key] = judge.pop(key)
        _check_sharing(judge.get("type"), execution["evaluation"], "evaluation.judge")
    elif "share_prefixes" in execution["judge"]:  # the eval judge is the training judge: runs as it does
        execution["evaluation"]["share_prefixes"] = execution["judge"]["share_prefixes"]
    path = execution["training"].get("accelerate_config")
    if path is not None and not Path(path).expanduser().is_file():
        raise InputError(f"config key training.accelerate_config: {path}: file not found")
    return execution


def _check_sharing(judge_type, execution: dict, key: str) -> None:
    """``share_prefixes`` only where the judge reads it: a stripped key must not vanish silently."""
    if "share_prefixes" in execution and judge_type not in _SHARING_JUDGES:
        raise InputError(f"config key {key}.share_prefixes: only a judge of type {', '.join(_SHARING_JUDGES)} "
                         f"shares prefixes, this one is {judge_type}; remove the key")


# ----------------------------------------------------------------------------- sections


def _check_synthetic(section: dict) -> None:
    from linepo.games import game as games

    for name, setting in section["settings"].items():
        key = f"synthetic.settings.{name}"
        try:
            matrix = games.validate_preference_matrix(setting.get("matrix", games.PAPER_MATRIX.tolist()))
        except games.InvalidGameError as err:
            raise InputError(f"config key {key}.matrix: {err}") from None
        n = matrix.shape[0]
        setting["matrix"] = matrix.tolist()
        if "init" not in setting:  # the paper's start on its game, uniform elsewhere
            setting["init"] = games.PAPER_INIT.tolist() if n == 3 else [1.0 / n] * n
        try:
            games.validate_policy(setting["init"], n)
        except games.InvalidGameError as err:
            raise InputError(f"config key {key}.init: {err}") from None
        if any(a.startswith("mnpo") for a in setting["algorithms"]):  # mnpo, mnpo_moves and their twins
            from linepo.games.peers import validate_mixture
            try:
                validate_mixture(setting["window"], setting["weights"])
            except games.InvalidGameError as err:  # "--weights: ..." → the config key's name
                flag, _, reason = str(err).partition(": ")
                raise InputError(f"config key {key}.{flag.removeprefix('--')}: {reason}") from None


def _check_policy(section: dict) -> None:
    from linepo.toy.world import check_style_mix

    sft = section["sft"]
    try:
        check_style_mix(section["embedded"]["style_mix"])
    except InputError as err:
        raise InputError(f"config key policy.embedded.{err}") from None
    if sft == "build" and not section["build"].get("base"):
        raise InputError("config key policy.build.base: required for sft: build (the model to fine-tune)")
    if sft not in ("embedded", "build") and looks_local(sft):
        if not (Path(sft).expanduser() / "config.json").exists():
            raise InputError(f"config key policy.sft: {sft}: no model folder (config.json) there")
    tokenizer = section.get("tokenizer")
    if tokenizer is not None:
        if sft == "embedded":
            raise InputError("config key policy.tokenizer: the embedded policy builds its own tokenizer")
        if looks_local(tokenizer) and not Path(tokenizer).expanduser().is_dir():
            raise InputError(f"config key policy.tokenizer: {tokenizer}: no such folder")
    # What loading needs besides config.json (linepo.workflow.preflight): weights, and tokenizer
    # files unless policy.tokenizer gives them. Hub ids: checked where snakemake runs.
    remote, own_tokenizer = section["trust_remote_code"], tokenizer is None
    pickle = {"pickle_key": "policy.allow_pickle_weights", "pickle_ok": bool(section.get("allow_pickle_weights"))}
    if sft == "build":
        check_model_folder(section["build"]["base"], "policy.build.base", what="base model", tokenizer=own_tokenizer,
                           tokenizer_key="policy.tokenizer", remote_code=remote, **pickle)
    elif sft != "embedded":
        check_model_folder(sft, "policy.sft", what="policy", tokenizer=own_tokenizer, tokenizer_key="policy.tokenizer",
                           remote_code=remote, **pickle)
    if tokenizer is not None:
        check_model_folder(tokenizer, "policy.tokenizer", what="tokenizer", weights=False, remote_code=remote)


def _check_sampling(section: dict) -> None:
    if section["temperature"] <= 0:
        raise InputError(f"config key sampling.temperature: {section['temperature']} is greedy decoding: the "
                         "sampling.n responses to a prompt would be the same, leaving no preference pairs to train on; "
                         "give a temperature > 0 (the paper: 0.8)")


def _check_names(config: dict) -> None:
    """Names become folder names (results/runs/<run>/, results/eval/alpaca_eval/<checkpoint>/,
    results/synthetic/<setting>/): two that differ only in case are one folder on macOS and Windows."""
    groups = [[("policy", "sft")] + [("runs", name) for name in config["runs"]]
              + [("evaluation.checkpoints", name) for name in config["evaluation"]["checkpoints"]],
              [("synthetic.settings", name) for name in config["synthetic"]["settings"]]]
    for group in groups:
        seen = {}
        for section, name in group:
            first = seen.setdefault(name.lower(), (section, name))
            if first[1] != name:
                other = "the SFT checkpoint sft" if first[0] == "policy" else f"{first[0]}.{first[1]}"
                raise InputError(f"config key {section}.{name}: differs from {other} only in case: their result "
                                 "folders are one on a case-insensitive file system (macOS, Windows); rename one")


def _check_schedulers(config: dict) -> None:
    places = [("training", config["training"])]
    for name, run in config["runs"].items():
        places.append((f"runs.{name}.training", run.get("training") or {}))
        places += [(f"runs.{name}.round_overrides.{r}.training", o.get("training") or {})
                   for r, o in run["round_overrides"].items()]
    for key, section in places:
        scheduler = section.get("lr_scheduler_type")
        if scheduler in _SCHEDULER_NEEDS:
            raise InputError(f"config key {key}.lr_scheduler_type: {scheduler} needs {_SCHEDULER_NEEDS[scheduler]} "
                             "in lr_scheduler_kwargs, which linepo does not pass; choose another scheduler")
        if scheduler in _SCHEDULER_ON_EVAL and not config["validation"]["enabled"]:
            raise InputError(f"config key {key}.lr_scheduler_type: {scheduler} steps on an evaluation loss: "
                             "set validation.enabled: true, or choose another scheduler")


def _check_judge(section: dict, source: str) -> None:
    """The synthetic oracle is cheap to build: build it now so a bad matrix fails before planning.
    A model judge's local folder is checked for what loading it needs (weights, tokenizer, chat template)."""
    check_judge_files(section, source.removeprefix("config key "))
    if section.get("type") == "synthetic":
        from linepo.stages.judges import make_judge

        make_judge(section, source=source)


def _check_run(key: str, run: dict, num_splits: int = 1) -> None:
    """What the schema cannot say: the algorithm's own parameters (:mod:`linepo.algorithms`),
    round ranges, whether its reference can move (and LINE-PO's default, every round), and
    MNPO's mixture (:func:`linepo.games.peers.validate_mixture`; a window of at most the run's
    steps, rounds × splits: a longer one never fills)."""
    algorithm, rounds = ALGORITHMS[run["algorithm"]], run["rounds"]
    required = {"eta_tau": "ητ ∈ (0, 1]", "window": "an integer ≥ 1"}
    for param in ("eta_tau", "window", "weights"):
        takes = param in algorithm.params
        if takes and param in required and param not in run:
            raise InputError(f"config key {key}.{param}: required for algorithm {algorithm.name} ({required[param]})")
        places = [(key, run)] + [(f"{key}.round_overrides.{r}", o) for r, o in run["round_overrides"].items()]
        for where, values in places:
            if not takes and param in values:
                raise InputError(f"config key {where}.{param}: algorithm {algorithm.name} takes no {param}")
    if "window" in algorithm.params:
        from linepo.games.game import InvalidGameError
        from linepo.games.peers import validate_mixture

        try:
            validate_mixture(run["window"], run.get("weights"))
        except InvalidGameError as err:  # "--weights: ..." → the config key's name
            name, _, reason = str(err).partition(": ")
            raise InputError(f"config key {key}.{name.lstrip('-')}: {reason}") from None
        if run["window"] > rounds * num_splits:
            raise InputError(f"config key {key}.window: {run['window']} past iterates, but the run has only "
                             f"{rounds * num_splits} steps ({rounds} round(s) × {num_splits} splits)")
    if algorithm.one_pass and rounds != 1:
        raise InputError(f"config key {key}.rounds: {algorithm.name} is one pass over all prompts; rounds must be 1")
    if "reference_moves" not in run:
        if algorithm.reference == "moving":
            run["reference_moves"] = "every_round"
    elif not algorithm.movable:
        why = "one pass over all prompts against the SFT policy" if algorithm.one_pass else \
            "its reference already is the current policy (the prox centre)"
        raise InputError(f"config key {key}.reference_moves: algorithm {algorithm.name} does not move its "
                         f"reference: {why} (movable: {', '.join(a.name for a in ALGORITHMS.values() if a.movable)})")
    moves = run.get("reference_moves")
    if isinstance(moves, list):
        late = [r for r in moves if r > rounds]
        if late:
            raise InputError(f"config key {key}.reference_moves: round {late[0]} is beyond the last round ({rounds})")
    for round_key in run["round_overrides"]:
        if int(round_key.rstrip("+")) > rounds:
            raise InputError(f"config key {key}.round_overrides.{round_key}: beyond the last round ({rounds})")


def _check_validation(config: dict) -> None:
    """Held-out pairs must be held out: not the training prompts themselves."""
    section = config["validation"]
    if not section["enabled"]:
        return
    held_out, train = section["prompts"], config["prompts"]
    same_split = (held_out.get("split") or "train") == (train.get("split") or "train")
    if held_out["source"] == train["source"] and same_split and held_out.get("name") == train.get("name"):
        raise InputError("config key validation.prompts: the same source and split as prompts; "
                         "validation needs held-out prompts (another split or file)")


def resolve_evaluation(config: dict) -> dict:
    """The evaluation section with its judge (null: a copy of ``judge``) and decoding (unset keys:
    the ``sampling`` values) filled in, checked.

    Raises:
        InputError: "config key evaluation.…: <reason>" for a checkpoint no run produces, a
            round beyond a run's last, a label for no run, or a bad synthetic judge.
    """
    section = copy.deepcopy(config["evaluation"])
    decoding = section["decoding"]
    for key in ("temperature", "top_p", "max_new_tokens", "batch_size", "backend"):
        if decoding.get(key) is None:  # unset: decode as the runs sample
            decoding[key] = config["sampling"][key]
    if section["judge"] is None:
        section["judge"] = copy.deepcopy(config["judge"])
    else:
        _check_judge(section["judge"], "config key evaluation.judge")
    runs = config["runs"]
    for name, spec in section["checkpoints"].items():
        key = f"config key evaluation.checkpoints.{name}"
        if name == "sft" or name in runs:
            raise InputError(f"{key}: the name {name!r} is already a checkpoint (SFT and each run's final policy are evaluated)")
        run = runs.get(spec["run"])
        if run is None:
            raise InputError(f"{key}.run: no run {spec['run']!r} produces this checkpoint "
                             f"(runs: {', '.join(runs) or 'none'})")
        if spec["round"] > run["rounds"]:
            raise InputError(f"{key}.round: run {spec['run']!r} has {run['rounds']} round(s), not {spec['round']}")
        if spec["round"] == run["rounds"]:
            raise InputError(f"{key}.round: round {spec['round']} is the last of run {spec['run']!r}: "
                             "its final policy is evaluated already")
    unknown = sorted(set(section["labels"]) - set(runs) - {"sft"})
    if unknown:
        raise InputError(f"config key evaluation.labels.{unknown[0]}: no such run (runs: {', '.join(runs) or 'none'})")
    return section


def _check_resources(config: dict) -> None:
    from linepo.workflow.cluster import check_resources

    check_resources(config)

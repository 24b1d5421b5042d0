"""One training step's settings: the run's values, its round overrides, then the keys that enter
a node's recipe only when set (so that keys added later leave older node ids unchanged)."""

from __future__ import annotations

from linepo.errors import InputError


def _section(config: dict, key: str) -> dict:
    return dict(config.get(key) or {})


def _unless_default(section: dict, defaults: dict) -> dict:
    """``section`` without the keys that hold their default: keys added later (``scoring.deduplicate``,
    ``training.prompts_per_batch``) enter a node's recipe only when set, so older ids stay."""
    return {k: v for k, v in section.items() if not (k in defaults and v == defaults[k]
                                                      and type(v) is type(defaults[k]))}


def round_override(run: dict, round_: int) -> dict:
    """The overrides of one round: every ``"r+"`` entry with r ≤ round (in increasing r), then
    the round's own ``"r"`` entry; later ones win key by key (``training`` merged)."""
    entries = run.get("round_overrides", {})
    ordered = sorted((int(key[:-1]), key) for key in entries if key.endswith("+") and int(key[:-1]) <= round_)
    keys = [key for _, key in ordered] + ([str(round_)] if str(round_) in entries else [])
    merged: dict = {}
    for key in keys:
        entry = entries[key]
        training = {**merged.get("training", {}), **entry.get("training", {})}
        merged.update(entry)
        if training:
            merged["training"] = training
    return merged


def check_prompts_per_batch(config: dict) -> None:
    """Grouped batches (``prompts_per_batch``, any step) train in one process, without accumulation."""
    def where(name: str, run: dict, r: int) -> str:  # the entry that sets it for round r (round_override's order)
        keys = sorted((k for k, o in run["round_overrides"].items() if "prompts_per_batch" in o.get("training", {})
                       and (k == str(r) or (k.endswith("+") and int(k[:-1]) <= r))),
                      key=lambda k: (not k.endswith("+"), int(k.rstrip("+"))))
        return f"runs.{name}.round_overrides.{keys[-1]}.training" if keys else f"runs.{name}.training"

    steps = [("training", config["training"])] + [
        (where(name, run, r), _step_settings(config, run, "ipo", r)["training"])
        for name, run in config["runs"].items() for r in range(1, run["rounds"] + 1)]
    gpus = config["resources"]["train"]["gpu"]
    for where, training in steps:
        if training.get("prompts_per_batch") is not None and training.get("gradient_accumulation_steps", 1) != 1:
            raise InputError(f"config key {where}.prompts_per_batch: needs gradient_accumulation_steps 1 (a batch "
                             f"is all pairs of its prompts), got {training['gradient_accumulation_steps']}")
        if training.get("prompts_per_batch") is not None and gpus > 1:
            raise InputError(f"config key {where}.prompts_per_batch: trains in one process only, but "
                             f"resources.train.gpu is {gpus}; unset it to train data-parallel")


def _step_settings(config: dict, run: dict, loss: str, round_: int) -> dict:
    """Loss and training settings of one step: run values, then the round's overrides."""
    override = round_override(run, round_)
    training = {**_section(config, "training"), **run.get("training", {}), **override.get("training", {})}
    training = _unless_default(training, {"prompts_per_batch": None})
    settings = {"loss": loss, "eta": override.get("eta", run["eta"]), "training": training}
    if loss == "inpo":
        settings["eta_tau"] = override.get("eta_tau", run["eta_tau"])
    return settings

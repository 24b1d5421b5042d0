"""Replicates as configuration: every run N times, as independent realisations.

    replicates: 3                                  # count 3; vary everything that can vary
    replicates: {count: 3, vary: [sampling]}       # one SFT policy; the samplers' seeds differ

Replicate r ≥ 1 adds ``"replicate": r`` to the recipe of each stage that ``vary`` names
(:func:`recipe_tags`): the SFT node (``sft``), every sample node (``sampling``), every judge
node (``judging``); every recipe names its parents' ids, so the ids differ from there on
downstream. Replicate 0 adds nothing: its ids are those of the config without replicates, so
adding replicates to a finished config computes only the new ones (count 2 → 3: replicate 2's
nodes), and what no varied stage reaches (the prompts; the SFT when only sampling varies; the
first samples when only judging varies) is one node for every replicate, computed once.

What makes the randomness differ (the seeds are a job's params, set in
:mod:`linepo.workflow.wiring`):

- ``sampling``: a sample job's seed is a hash of its node id (``node_seed``), new ids new seeds;
- ``judging``: so is the oracle coin's seed of a judge job (``linepo judge --seed``): the sampled
  0/1 outcomes differ. The oracle's probabilities do not, so with ``preferences.use_outcomes:
  false`` (labels are probabilities) judging alone changes no training pair;
- ``sft``: the embedded build's seed (``policy.embedded.seed``) or ``linepo sft``'s
  (``policy.build.seed``) is the config's for replicate 0 and, for r ≥ 1, the hash of replicate
  r's SFT node id (``node_seed``; that id includes the config's seed): reproducible, and not
  another config's seed + r. An imported SFT (a folder or hub id) is one model for every
  replicate, so naming ``sft`` for it is refused at plan time.
"""

from __future__ import annotations

import difflib

from linepo.errors import InputError

#: What ``replicates.vary`` may name, and the stage (of ``linepo.workflow.plan.STAGE_VERSIONS``)
#: whose recipe each one tags.
VARIES = {"sft": "sft", "sampling": "sample", "judging": "judge"}
#: How a replicate appears in paths that people read (results/runs/<run>/replicate-<r>/...).
FOLDER = "replicate-{replicate}"


def replicates_shorthand(config: dict) -> None:
    """``replicates: N`` is ``replicates: {count: N}``; ``replicates: null`` is unset. In place.

    Raises:
        InputError: neither a count nor a mapping (``true`` is not a count).
    """
    value = config.get("replicates", {})
    if value is None:
        config.pop("replicates")
    elif isinstance(value, int) and not isinstance(value, bool):
        config["replicates"] = {"count": value}
    elif not isinstance(value, dict):
        raise InputError(f"config key replicates: {value!r}: give a count (a positive integer) or "
                         "{count: N, vary: [sft, sampling, judging]}")


def check_replicates(section: dict, sft: str) -> dict:
    """The schema-checked section with ``vary`` filled in: unset, every name that can vary (``sft``
    only for a built SFT: ``policy.sft`` embedded or build).

    Raises:
        InputError: "config key replicates.count: ..." for a count that is not a whole number (the
            schema's integer takes 2.0), "config key replicates.vary...: ..." for an unknown name
            (with the closest known one) or ``sft`` for an imported SFT.
    """
    count, built = section["count"], sft in ("embedded", "build")
    if not isinstance(count, int) or isinstance(count, bool):
        raise InputError(f"config key replicates.count: {count!r}: a whole number of replicates, e.g. 2")
    if "vary" not in section:
        return {"count": count, "vary": [name for name in VARIES if built or name != "sft"]}
    for index, name in enumerate(section["vary"]):
        if name not in VARIES:
            close = difflib.get_close_matches(str(name), list(VARIES), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise InputError(f"config key replicates.vary.{index}: {name!r} is not what a replicate varies "
                             f"({hint}known: {', '.join(VARIES)})")
    if "sft" in section["vary"] and not built:
        raise InputError(f"config key replicates.vary: sft: policy.sft {sft} is imported, one SFT policy for "
                         "every replicate; remove sft (or build the SFT: policy.sft embedded or build)")
    return {"count": count, "vary": list(section["vary"])}


def recipe_tags(section: dict | None, replicate: int) -> dict[str, dict]:
    """What replicate ``replicate`` adds to the recipe of each tagged stage (``{"sft": {...},
    "sample": {...}, "judge": {...}}``): ``{"replicate": r}`` where ``vary`` names the stage and
    r ≥ 1, else nothing (replicate 0's recipes are those of a config without replicates)."""
    vary = (section or {}).get("vary", ())
    tag = {"replicate": replicate} if replicate else {}
    return {stage: dict(tag) if name in vary else {} for name, stage in VARIES.items()}


def describe(section: dict | None) -> str:
    """One line for ``linepo plan``."""
    section = section or {"count": 1, "vary": []}
    count = section["count"]
    if count == 1:
        return "replicates: 1 (replicates.count: N runs everything N times, tables pooled as mean ± standard error)"
    return (f"replicates: {count}, varying {', '.join(section['vary'])}; replicate 0's ids are the config's "
            "without replicates; tables in results/summary/ pool them (mean ± standard error)")

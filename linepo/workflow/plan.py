"""Expand the runs of a config into a DAG of content-addressed nodes (paper Algorithms 3–4).

Every node's id is a hash of its *recipe* — what it is computed from and with which
settings, plus a stage version — so two runs or two configs that agree up to a step share
that step's files, a changed round-3 parameter makes new ids from round 3 on only, and
changing it back finds the old files again. Snakemake rules map ids back to nodes through
this plan; rule paths carry round and split as wildcards for people to read.

One step k of a run, in round r on prompt split s (Algorithm 4, one iteration):

    μ_k ─sample(split s)─▶ samples ─judge─▶ judgments ─pairs─▶ prefs ─score(π_ref, μ_k)─▶ scored
                                                                                         │
    μ_k ──────────────────────────────────train(loss, η, ητ)──────────────────────────────▶ μ_{k+1}

That is the ``single`` schedule, whose sampler and parent are the current policy μ_k; Mirror-Prox
and OMWU (Appendix H), EGPO and ONPO fit twice per step, a half step then the step, with other
samplers, references and parents; MNPO's anchor is a mixture of past iterates (its scored node's
``mixture``, in the recipe only when there is one) (:mod:`linepo.workflow.schedules`); every
``Step`` names its sampler and parent.

Replicates (:mod:`linepo.workflow.replicates`) are the same schedules again, with the replicate
number in the recipes of the stages they vary: ``Plan.replicates`` holds every replicate's runs,
``Plan.sfts`` their SFT policies; ``Plan.runs`` and ``Plan.sft`` are replicate 0's, whose ids are
those of the config without replicates.

    linepo plan config.yaml       # the plan's node counts and run schedules
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from linepo.algorithms import ALGORITHMS
from linepo.workflow.replicates import FOLDER, recipe_tags
from linepo.workflow.replicates import describe as describe_replicates
from linepo.workflow.schedules import TWO_STEP, Step, iterative_schedule, training_steps
from linepo.workflow.step_settings import _section, _step_settings, _unless_default
from linepo.workflow.step_settings import round_override  # noqa: F401 (re-exported: tests, callers)

#: Bump a stage's version when its code changes what it writes: its nodes get new ids.
#: sft 2: imported SFT folders; sample 2: stop at the chat template's end of turn, record the
#: stop token; score 2: score exactly that token; train 2: fp32 master weights whatever the
#: policy dtype; eval_generate 2: each generation has its own random numbers; sample 3,
#: eval_generate 3: the sampled token ids kept; score 3: scored as sampled, user text as text;
#: judge 2, eval_compare 2: each failure says why; train 3: checkpoints saved with the parent's
#: tokenizer, pad and use_cache (no pad token handed down); sft 3: saved with use_cache as the base;
#: every stage +1: outputs record their content digest and inputs' (linepo.provenance).
#: eval_compare_batch 1: a batch of comparisons judged with one judge load (each comparison
#: judged as before: eval_compare unchanged).
STAGE_VERSIONS = {"sft": 4, "prompts": 2, "sample": 4, "judge": 3, "score": 4, "train": 4,
                  "eval_generate": 4, "eval_compare": 3, "eval_compare_batch": 1}

#: The split name of held-out validation data in node tables and paths (results/samples/r1/sval/...).
VALIDATION_SPLIT = "val"


def recipe_id(stage: str, recipe: dict) -> str:
    """12 hex digits of sha256 over the canonical JSON of the recipe and stage version."""
    payload = json.dumps({"stage": stage, "version": STAGE_VERSIONS[stage], **recipe}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class PolicyNode:
    id: str
    round: int  # 0 for the SFT policy
    split: str  # "sft", a split index, or "all" for one-pass runs
    parent: str | None = None
    reference: str | None = None
    scored: tuple = ()
    train: dict = field(default_factory=dict)  # loss, eta, eta_tau, training settings
    validation: tuple = ()  # scored ids of held-out pairs for checkpoint selection; () when off

    @property
    def is_sft(self) -> bool:
        return self.parent is None


@dataclass(frozen=True)
class SampleNode:
    id: str
    round: int
    split: str
    policy: str
    sampling: dict


@dataclass(frozen=True)
class PrefNode:
    id: str
    round: int
    split: str
    sample: str
    judge: dict
    preferences: dict


@dataclass(frozen=True)
class ScoredNode:
    id: str
    round: int
    split: str
    prefs: tuple
    reference: str
    anchor: str
    #: MNPO: the anchor log-probs are Σ_j w_j log π_j(y) over ((π_j, w_j), ...) (``anchor`` is then
    #: π_t, the newest); () for every other node, whose recipe does not name it (ids unchanged)
    mixture: tuple = ()


@dataclass
class Plan:
    sft: str
    prompts: str
    num_splits: int
    eval_prompts: str = ""
    validation_prompts: str = ""  # "" when validation is off
    external_sft: str | None = None  # a model folder or hub id given in the config (imported once)
    policies: dict = field(default_factory=dict)
    samples: dict = field(default_factory=dict)
    prefs: dict = field(default_factory=dict)
    scored: dict = field(default_factory=dict)
    runs: dict = field(default_factory=dict)  # run -> list[Step]: replicate 0's (what evaluation reads)
    replicates: dict = field(default_factory=dict)  # replicate -> run -> list[Step]; [0] is runs
    sfts: dict = field(default_factory=dict)  # replicate -> its SFT policy id (one id when sft does not vary)
    vary: tuple = ()  # what differs between replicates (replicates.vary); () with one replicate
    algorithms: dict = field(default_factory=dict)  # run -> its algorithm's name

    # ---------------------------------------------------------------- paths
    #: Every file a node writes, by kind; the rules' output patterns (wildcards in braces) and
    #: the paths below are these templates, so they cannot drift apart.
    TEMPLATES = {
        "sft": "results/sft/{sft}/model",
        "prompt_split": "results/prompts/{prompts}/shard-{split}.parquet",
        "eval_prompts": "results/prompts/eval-{prompts}.parquet",
        "validation_prompts": "results/prompts/val-{prompts}.parquet",
        "samples": "results/samples/r{round}/s{split}/{sample}.parquet",
        "judgments": "results/prefs/r{round}/s{split}/{prefs}/judgments.parquet",
        "prefs": "results/prefs/r{round}/s{split}/{prefs}/prefs.parquet",
        "scored": "results/scored/r{round}/s{split}/{scored}.parquet",
        "scored_mixture": "results/scored/r{round}/s{split}/{scored}-mixture.parquet",  # MNPO's (rule score_mixture)
        "policy": "results/policies/r{round}/s{split}/{policy}/model",
        "steps": f"results/runs/{{run}}/{FOLDER}/steps.tsv",
        "prox_fidelity": f"results/runs/{{run}}/{FOLDER}/prox_fidelity.tsv",
        "category_probs": f"results/runs/{{run}}/{FOLDER}/category_probs.json",
        "exploitability": "results/eval/exploitability/{policy}.json",
        # per replicate (same format as the pooled tables' inputs), then pooled over replicates
        "exploitability_table": "results/summary/replicates/exploitability-{replicate}.tsv",
        "prox_fidelity_table": "results/summary/replicates/prox_fidelity-{replicate}.tsv",
        "prox_fidelity_runs_table": "results/summary/replicates/prox_fidelity_runs-{replicate}.tsv",
        "exploitability_pooled": "results/summary/exploitability.tsv",
        "prox_fidelity_pooled": "results/summary/prox_fidelity.tsv",
        "prox_fidelity_runs_pooled": "results/summary/prox_fidelity_runs.tsv",
    }

    def path(self, kind: str, **wildcards) -> str:
        """A template of :data:`TEMPLATES` filled in."""
        return self.TEMPLATES[kind].format(**wildcards)

    @property
    def replicate_count(self) -> int:
        return len(self.replicates) or 1

    def sft_replicate(self, sft_id: str) -> int:
        """The first replicate whose SFT policy ``sft_id`` is (0 when every replicate shares it)."""
        return min(r for r, sft in self.sfts.items() if sft == sft_id) if self.sfts else 0

    def exploitability_path(self, policy_id: str) -> str:
        return self.TEMPLATES["exploitability"].format(policy=policy_id)

    def policy_dir(self, policy_id: str) -> str:
        """Where a policy's folder is: the SFT policy (built, or imported from the configured
        folder or hub id) under results/sft/, trained ones under results/policies/."""
        node = self.policies[policy_id]
        if node.is_sft:
            return self.TEMPLATES["sft"].format(sft=policy_id)
        return self.TEMPLATES["policy"].format(round=node.round, split=node.split, policy=policy_id)

    def policy_inputs(self, policy_id: str) -> list[str]:
        """The files a job needs for a policy: its folder."""
        return [self.policy_dir(policy_id)]

    def samples_path(self, sample_id: str) -> str:
        node = self.samples[sample_id]
        return self.TEMPLATES["samples"].format(round=node.round, split=node.split, sample=sample_id)

    def prefs_path(self, pref_id: str, name: str = "prefs") -> str:
        node = self.prefs[pref_id]
        return self.TEMPLATES[name].format(round=node.round, split=node.split, prefs=pref_id)

    def scored_path(self, scored_id: str) -> str:
        node = self.scored[scored_id]
        kind = "scored_mixture" if node.mixture else "scored"
        return self.TEMPLATES[kind].format(round=node.round, split=node.split, scored=scored_id)

    def mixture_flags(self, scored_id: str) -> str:
        """rule score_mixture's ``--mixture WEIGHT=FOLDER ...`` of an MNPO scored node."""
        import shlex

        return "--mixture " + " ".join(shlex.quote(f"{w!r}={self.policy_dir(p)}") for p, w in self.scored[scored_id].mixture)

    def prompts_path(self, split: int | str) -> str:
        """A training split's prompts, or (split "val") the validation prompts."""
        if str(split) == VALIDATION_SPLIT:
            return self.validation_prompts_path()
        return self.TEMPLATES["prompt_split"].format(prompts=self.prompts, split=split)

    def eval_prompts_path(self) -> str:
        return self.TEMPLATES["eval_prompts"].format(prompts=self.eval_prompts)

    def validation_prompts_path(self) -> str:
        return self.TEMPLATES["validation_prompts"].format(prompts=self.validation_prompts)

    def train_settings(self, policy_id: str) -> dict:
        """What ``linepo train --config-json`` gets for a step: its loss, η (ητ), training
        section and checkpoint-selection settings; nothing about how it runs (processes)."""
        step = self.policies[policy_id].train
        settings = {key: value for key, value in step.items() if key not in ("training", "validation")}
        return {**settings, **step["training"], **step.get("validation", {})}

    def training_steps(self, run: str, replicate: int = 0) -> list[Step]:
        """Every trained policy of a run: its steps, each two-step schedule's half step before its step."""
        return training_steps(self.replicates.get(replicate, self.runs)[run])

    def final_policy(self, run: str, replicate: int = 0) -> str:
        return self.replicates.get(replicate, self.runs)[run][-1].policy

    def policy_after_round(self, run: str, round_: int, replicate: int = 0) -> str | None:
        """The run's policy at the end of round ``round_`` (its last split), or None if it has none."""
        steps = [step for step in self.replicates.get(replicate, self.runs)[run] if step.round == round_]
        return steps[-1].policy if steps else None

    def counts(self) -> dict:
        """Nodes of every replicate, each once; ``policies``: trained ones (SFT policies not counted)."""
        return {
            "policies": len(self.policies) - len(set(self.sfts.values()) or {self.sft}),
            "samples": len(self.samples),
            "prefs": len(self.prefs),
            "scored": len(self.scored),
        }


def build_plan(config: dict) -> Plan:
    """The plan of a *validated* config (see :func:`linepo.workflow.config.validate_config`): every
    replicate's runs (:mod:`linepo.workflow.replicates`); ``Plan.runs`` and ``Plan.sft`` are replicate 0's."""
    policy_cfg = _section(config, "policy")
    sft_recipe = {"sft": policy_cfg["sft"], "dtype": policy_cfg["dtype"]}
    if policy_cfg["sft"] == "embedded":
        sft_recipe["embedded"] = policy_cfg["embedded"]
    else:
        if policy_cfg.get("tokenizer"):
            sft_recipe["tokenizer"] = policy_cfg["tokenizer"]
        if policy_cfg["sft"] == "build":
            sft_recipe["build"] = policy_cfg["build"]
    replicates = config.get("replicates") or {"count": 1, "vary": []}
    prompts_cfg = _section(config, "prompts")
    prompts_id = recipe_id("prompts", prompts_cfg)
    validation_cfg = _section(config, "validation")
    validating = bool(validation_cfg.get("enabled")) and bool(config.get("runs"))
    plan = Plan(sft=recipe_id("sft", sft_recipe), prompts=prompts_id, num_splits=prompts_cfg["num_splits"],
                eval_prompts=recipe_id("prompts", _section(config, "eval_prompts")),
                validation_prompts=recipe_id("prompts", validation_cfg["prompts"]) if validating else "",
                external_sft=None if policy_cfg["sft"] in ("embedded", "build") else policy_cfg["sft"],
                vary=tuple(replicates["vary"]) if replicates["count"] > 1 else ())
    # How the trainer evaluates and selects on the held-out pairs: part of a step's recipe.
    selection = {"eval_steps": validation_cfg["eval_steps"], "select_best": validation_cfg["select_best"]} \
        if validating else {}

    # Sections without their execution keys (linepo.workflow.config moved them out).
    sampling = _section(config, "sampling")
    judge = _section(config, "judge")
    preferences = _section(config, "preferences")
    runtime = {"trust_remote_code": policy_cfg["trust_remote_code"], "dtype": policy_cfg["dtype"]}
    scoring = _unless_default(_section(config, "scoring"), {"deduplicate": False})

    def data_for(policy_id: str, round_: int, split: int | str, tags: dict) -> str:
        """Sample → judge → pairs for a policy on a split (or "val"); returns the prefs id."""
        source = plan.validation_prompts if split == VALIDATION_SPLIT else prompts_id
        sample_id = recipe_id("sample", {"policy": policy_id, "prompts": source, "split": split,
                                         "sampling": sampling, **runtime, **tags["sample"]})
        plan.samples.setdefault(sample_id, SampleNode(sample_id, round_, str(split), policy_id, sampling))
        pref_id = recipe_id("judge", {"sample": sample_id, "judge": judge, "preferences": preferences,
                                      **tags["judge"]})
        plan.prefs.setdefault(pref_id, PrefNode(pref_id, round_, str(split), sample_id, judge, preferences))
        return pref_id

    def scored_for(pref_ids, reference: str, anchor: str, round_: int, split: str, mixture: tuple = ()) -> str:
        recipe = {"prefs": list(pref_ids), "reference": reference, "anchor": anchor,
                  "scoring": scoring, **runtime}
        if mixture:
            recipe["mixture"] = [[policy, weight] for policy, weight in mixture]
        scored_id = recipe_id("score", recipe)
        plan.scored.setdefault(scored_id, ScoredNode(scored_id, round_, split, tuple(pref_ids), reference, anchor,
                                                     tuple(mixture)))
        return scored_id

    def train(parent: str, reference: str, scored_id: str, settings: dict, round_: int, split: str,
              tags: dict, sampler: str | None = None, anchor: str | None = None, mixture: tuple = ()) -> str:
        sampler = sampler or parent
        anchor = anchor or sampler
        recipe = {"parent": parent, "reference": reference, "scored": scored_id, **settings, **runtime}
        validation = ()
        if validating:
            # Held-out pairs sampled by the step's sampler (the parent, except in OMWU's half
            # steps; its own nodes, shared by every run that reaches this step), scored against
            # this step's reference and anchor (or mixture): the same objective as the step's training pairs.
            pref_id = data_for(sampler, round_, VALIDATION_SPLIT, tags)
            validation = (scored_for([pref_id], reference, anchor, round_, VALIDATION_SPLIT, mixture),)
            settings = {**settings, "validation": selection}
            recipe.update(validation=validation[0], selection=selection)
        policy_id = recipe_id("train", recipe)
        plan.policies.setdefault(policy_id, PolicyNode(policy_id, round_, split, parent, reference,
                                                       (scored_id,), settings, validation))
        return policy_id

    def schedule(run_name: str, run: dict, sft_id: str, replicate: int, tags: dict) -> list[Step]:
        algorithm = ALGORITHMS[run["algorithm"]]
        plan.algorithms[run_name] = algorithm.name
        if algorithm.one_pass:
            settings = _step_settings(config, run, algorithm.loss, round_=1)
            pref_ids = [data_for(sft_id, 1, s, tags) for s in range(plan.num_splits)]
            scored_id = scored_for(pref_ids, sft_id, sft_id, 1, "all")
            policy_id = train(sft_id, sft_id, scored_id, settings, 1, "all", tags)
            return [Step(run_name, 1, "all", policy_id, sft_id, False, replicate, sampler=sft_id, parent=sft_id)]
        return iterative_schedule(
            algorithm.schedule, run_name, run, sft_id, replicate, reference_rule=algorithm.reference,
            num_splits=plan.num_splits, settings_for=lambda round_: _step_settings(config, run, algorithm.loss, round_),
            data_for=lambda policy, round_, split: data_for(policy, round_, split, tags), scored_for=scored_for,
            train=lambda parent, reference, scored, settings, round_, split, sampler, anchor, mixture: train(
                parent, reference, scored, settings, round_, split, tags, sampler, anchor, mixture))

    for replicate in range(replicates["count"]):
        tags = recipe_tags(replicates, replicate)
        sft_id = recipe_id("sft", {**sft_recipe, **tags["sft"]})
        plan.sfts[replicate] = sft_id
        plan.policies.setdefault(sft_id, PolicyNode(sft_id, 0, "sft"))
        plan.replicates[replicate] = {name: schedule(name, run, sft_id, replicate, tags)
                                      for name, run in config.get("runs", {}).items()}
    plan.runs = plan.replicates[0]
    return plan


def describe(plan: Plan) -> str:
    sfts = sorted(set(plan.sfts.values()) or {plan.sft}, key=plan.sft_replicate)
    lines = [f"SFT polic{'ies' if len(sfts) > 1 else 'y'} {', '.join(sfts)}; prompts {plan.prompts} in "
             f"{plan.num_splits} splits"]
    lines.append(describe_replicates({"count": plan.replicate_count, "vary": list(plan.vary)}))
    lines.append("nodes: " + ", ".join(f"{k}={v}" for k, v in plan.counts().items()))
    for replicate, runs in (plan.replicates or {0: plan.runs}).items():
        where = f" (replicate {replicate})" if plan.replicate_count > 1 else ""
        for run, steps in runs.items():
            kind = ALGORITHMS[plan.algorithms[run]].schedule if run in plan.algorithms else "single"
            two = f" ({kind} schedule: a half step before each, {2 * len(steps)} trained policies)" \
                if kind in TWO_STEP else ""
            lines.append(f"run {run}{where}: {len(steps)} steps{two}, final {plan.policy_dir(steps[-1].policy)}")
    return "\n".join(lines)

"""What the Snakemake rules call: everything between a validated config and a rule's fields.

The rules (rules/*.smk) only wire files to commands; this module holds the helpers they
share — the plans, per-node seeds, flag strings, process counts from a job's resources,
the readable per-run tables and the target lists — importable and unit-tested like the
rest of the library. ``rules/common.smk`` builds one :class:`Wiring` for the workflow.

Rule ``params`` must keep their values (Snakemake reruns a job whose params' repr changed),
so what is computed here is what the rules computed before this module existed.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field

from linepo.algorithms import ALGORITHMS
from linepo.stages.parallel import shard_count
from linepo.workflow.evalplan import EvalPlan, build_eval_plan, summary_path
from linepo.workflow.plan import Plan, build_plan
from linepo.workflow.schedules import TWO_STEP

#: A node id (12 hex digits of a recipe's sha256) and a config name, as wildcards match them.
ID = "[0-9a-f]{12}"
NAME = "[A-Za-z0-9_]+"


def node_seed(node_id: str) -> int:
    """A per-node RNG seed derived from its id: reproducible, different for every node."""
    return int(node_id[:8], 16)


def cli_flags(values: dict, names) -> str:
    """``--a-b value`` for each of ``names`` present (not None) in ``values``."""
    parts = []
    for name in names:
        value = values.get(name)
        if value is not None:
            parts.append(f"--{name.replace('_', '-')} {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    return " ".join(parts)


def checked(table: dict, node_id: str, wildcards):
    """The plan's node for an id, after checking that the path's round and split agree with it."""
    node = table[node_id]
    if str(node.round) != wildcards.round or node.split != wildcards.split:
        raise ValueError(f"node {node_id} belongs to r{node.round}/s{node.split}, "
                         f"not r{wildcards.round}/s{wildcards.split}")
    return node


@dataclass
class Wiring:
    """The workflow's plans and what its rules read off them."""

    config: dict
    plan: Plan = field(init=False)
    eval: EvalPlan = field(init=False)

    def __post_init__(self):
        self.plan = build_plan(self.config)
        # Evaluation: every replicate's checkpoints and curves (the AlpacaEval exports: replicate 0's).
        self.eval = build_eval_plan(self.config, self.plan)

    @property
    def replicates(self) -> range:
        return range(self.plan.replicate_count)

    # -- the SFT build: replicate 0 with the config's seed (its params as without replicates, so
    #    nothing reruns), replicate r ≥ 1 of a varied SFT with its node id's (linepo.workflow.replicates)
    def sft_seed(self, sft_id: str, seed: int) -> int:
        return seed if self.plan.sft_replicate(sft_id) == 0 else node_seed(sft_id)

    def sft_embedded(self, sft_id: str) -> dict:
        """rule sft_embedded's ``embedded`` param: policy.embedded with this SFT's seed."""
        section = self.config["policy"]["embedded"]
        return {**section, "seed": self.sft_seed(sft_id, section["seed"])}

    def sft_build_settings(self, sft_id: str) -> str:
        """rule sft_build's ``linepo sft --config-json``: policy.build's training settings, this SFT's seed."""
        build = self.config["policy"]["build"]
        settings = {k: v for k, v in build.items() if k not in ("base", "data", "split", "messages_column")}
        return json.dumps({**settings, "seed": self.sft_seed(sft_id, build["seed"])}, sort_keys=True)

    # -- runtime flags of every job that loads a policy
    @property
    def remote_code(self) -> str:
        return "--trust-remote-code" if self.config["policy"]["trust_remote_code"] else ""

    @property
    def import_flags(self) -> str:
        """The SFT import / build jobs' flags: the only jobs that read user weights (later jobs read
        results/ safetensors), so only they take ``--allow-pickle-weights``; "" adds nothing to
        ``remote_code`` when pickles are off (params unchanged: nothing reruns)."""
        pickle = "--allow-pickle-weights" if self.config["policy"].get("allow_pickle_weights") else ""
        return " ".join(flag for flag in (self.remote_code, pickle) if flag)

    @property
    def runtime(self) -> str:
        return f"--dtype {self.config['policy']['dtype']} {self.remote_code}"

    # -- processes per job: callables of the job's resources, which Snakemake does not track,
    #    so a new GPU count reruns nothing (sharded output equals unsharded)
    def sample_shards(self, wildcards, resources) -> int:
        sampling = self.config["sampling"]
        per_shard = sampling["tensor_parallel_size"] if sampling["backend"] == "vllm" else 1
        return shard_count(self.config["_execution"]["sampling"], resources.gpu, per_shard)

    def judge_shards(self, wildcards, resources) -> int:
        return shard_count(self.config["_execution"]["judge"], resources.gpu)

    # -- failure limits: flags, not node ids (a raised limit re-judges nothing)
    @property
    def judge_failure_limit(self) -> float:
        from linepo.stages.judges import DEFAULT_MAX_FAILED_FRACTION

        return self.config["_execution"]["judge"].get("max_failed_fraction", DEFAULT_MAX_FAILED_FRACTION)

    @property
    def eval_failure_limit(self) -> float:
        """The eval judge's own limit, else the training judge's (its judge defaults to that one)."""
        return self.config["_execution"].get("evaluation", {}).get("max_failed_fraction", self.judge_failure_limit)

    # -- the judge's config as the jobs read it: the recipe plus how it runs (share_prefixes)
    @property
    def judge_spec(self) -> str:
        return _judge_json(self.config["judge"], self.config["_execution"]["judge"])

    def eval_judge_spec(self, judge: dict) -> str:
        """``judge``: the eval judge (the training judge's copy when evaluation.judge is unset)."""
        return _judge_json(judge, self.config["_execution"].get("evaluation", {}))

    def train_launch(self, wildcards, resources) -> str:
        """``--num-processes N`` (one per GPU of the job) and the accelerate config, for linepo train."""
        launch = f"--num-processes {shard_count({}, resources.gpu)}"
        accelerate = self.config["_execution"]["training"].get("accelerate_config")
        return launch + (f" --accelerate-config {accelerate}" if accelerate else "")

    # -- tabular games
    GAME_FLAGS = {"eta": "--eta", "tau": "--tau", "iterations": "--iterations",
                  "inner_steps": "--inner-steps", "samples": "--samples", "seed": "--seed",
                  "window": "--window"}

    def synthetic_flags(self, wildcards) -> str:
        """Only the settings this algorithm uses, so an unrelated edit reruns nothing."""
        from linepo.games.runs import relevant_settings

        setting = self.config["synthetic"]["settings"][wildcards.setting]
        flags = []
        for key in relevant_settings(wildcards.algorithm):
            value = setting.get(key)
            if key == "weights":  # a JSON list, one shell word; unset: uniform (the command's default)
                if value is not None:
                    flags.append(f"--weights {shlex.quote(json.dumps(value))}")
                continue
            flags.append(f"{self.GAME_FLAGS[key]} {value}")
        return " ".join(flags)

    # -- prompt files
    def eval_prompt_flags(self) -> str:
        """``linepo prompts`` flags of the eval prompts (the embedded source's held-out split by default)."""
        section = self.config["eval_prompts"]
        split = section["split"] or ("eval" if section["source"] == "embedded" else None)
        return cli_flags({**section, "split": split}, ["split", "prompt_column", "max_prompts", "max_prompt_chars",
                                                        "name"])

    # -- per-run outputs, one per replicate (results/runs/<run>/replicate-<r>/)
    def steps(self, run: str, replicate=0) -> list:
        """A run's steps in one replicate (``replicate``: an int, or a wildcard's string): its
        iterates (a two-step schedule's full steps; :meth:`steps_json` lists the half steps too)."""
        return self.plan.replicates[int(replicate)][run]

    def steps_json(self, run: str, replicate=0) -> str:
        """A run's schedule for ``linepo run-steps`` (results/runs/<run>/replicate-<r>/steps.tsv).

        A run of a two-step schedule (Mirror-Prox, OMWU, EGPO, ONPO: :mod:`linepo.workflow.schedules`)
        lists every training step, each half step before its step, with ``half`` and ``sampler``;
        MNPO, ONPO and EGPO also with ``anchor`` (MNPO's mixture as ``w*policy + ...``); other
        runs' lists are as they always were (the rule's params unchanged: nothing reruns)."""
        plan = self.plan
        rows = []
        for s in self._training_steps(run, replicate):
            row = {"round": s.round, "split": s.split, "policy": plan.policy_dir(s.policy),
                   "reference": plan.policy_dir(s.reference), "reference_moved": s.reference_moved}
            if self._two_step(run) or self._peer(run):
                row.update(half=s.is_half, sampler=plan.policy_dir(s.sampler))
            if self._peer(run):
                row["anchor"] = " + ".join(f"{w:g}*{plan.policy_dir(p)}" for p, w in s.mixture) \
                    if s.mixture else plan.policy_dir(s.anchor_policy)
            rows.append(row)
        return json.dumps(rows)

    def _two_step(self, run: str) -> bool:
        return ALGORITHMS[self.config["runs"][run]["algorithm"]].schedule in TWO_STEP

    def _peer(self, run: str) -> bool:
        """The registry's ``names_anchors`` (MNPO, ONPO, EGPO): steps.tsv and the Prox-fidelity
        spec name every step's sampler and anchor."""
        return ALGORITHMS[self.config["runs"][run]["algorithm"]].names_anchors

    def _training_steps(self, run: str, replicate) -> list:
        return self.plan.training_steps(run, int(replicate))

    def run_outputs(self, digest) -> dict[str, str]:
        """Every replicate's steps.tsv with ``digest`` of its schedule (linepo.workflow.preflight)."""
        return {self.plan.path("steps", run=run, replicate=r): digest(self.steps_json(run, r))
                for r in self.replicates for run in self.plan.runs}

    @property
    def synthetic_judge(self) -> bool:
        return self.config["judge"]["type"] == "synthetic"

    # -- Prox fidelity of every step (linepo.evaluation.prox_fidelity): synthetic oracle only
    @property
    def prox_fidelity_runs(self) -> list[str]:
        """The runs whose steps get a Prox-fidelity table: every run, when the training judge is
        the synthetic oracle with a case-sensitive first-word rule (whose category mix is read
        exactly from first-token probabilities); none otherwise."""
        judge = self.config["judge"]
        exact = (self.synthetic_judge and judge.get("rule", "first_word") == "first_word"
                 and judge.get("case_sensitive", True))
        return list(self.plan.runs) if exact else []

    def prox_fidelity_iterates(self, run: str, replicate=0) -> list[str]:
        """A run's trained policies in one replicate as policy folders: its SFT, then the policy
        after each training step (a two-step schedule's half steps included)."""
        return [self.plan.policy_dir(p) for p in self._iterates(run, replicate)]

    def _iterates(self, run: str, replicate) -> list[str]:
        return [self.plan.sfts[int(replicate)]] + [s.policy for s in self._training_steps(run, replicate)]

    def prox_fidelity_spec(self, run: str, replicate=0) -> str:
        """``linepo prox-fidelity --spec``: the run's iterates and, per training step, its loss, η
        (ητ) and which iterate is its reference (0 = SFT). The sampler of step k is iterate k − 1,
        except in a two-step schedule, whose steps name it (``sampler``: an IPO step's target is
        Prox(π_ref, η P(·≻sampler)), whatever its parent) and say which are half steps; an INPO-type
        step of MNPO or EGPO names its ``anchor`` as ``[[iterate, weight], ...]`` (EGPO's full
        step: the prox centre π^t; MNPO: the mixture of past iterates)."""
        plan = self.plan
        index = {policy: i for i, policy in enumerate(self._iterates(run, replicate))}
        steps = []
        for k, step in enumerate(self._training_steps(run, replicate), start=1):
            train = plan.policies[step.policy].train
            entry = {"step": k, "round": step.round, "split": step.split, "loss": train["loss"],
                     "eta": train["eta"], "eta_tau": train.get("eta_tau"), "reference": index[step.reference]}
            if self._two_step(run) or self._peer(run):
                entry.update(sampler=index[step.sampler], half=step.is_half)
            if self._peer(run) and train["loss"] == "inpo":
                entry["anchor"] = [[index[p], w] for p, w in step.mixture] if step.mixture \
                    else [[index[step.anchor_policy], 1.0]]
            steps.append(entry)
        return json.dumps({"run": run, "algorithm": self.config["runs"][run]["algorithm"],
                           "iterates": self.prox_fidelity_iterates(run, replicate), "steps": steps}, sort_keys=True)

    def prox_fidelity_table_flags(self, replicate) -> str:
        """``linepo prox-fidelity-table --run NAME=FILE ...`` of one replicate."""
        return " ".join(f"--run {run}={self.plan.path('prox_fidelity', run=run, replicate=replicate)}"
                        for run in self.prox_fidelity_runs)

    @property
    def evaluated(self) -> dict[str, str]:
        """Exploitability reports: SFT and every run's final policy, by name (replicate 0's)."""
        return self.evaluated_in(0)

    def evaluated_in(self, replicate) -> dict[str, str]:
        """One replicate's exploitability reports: its SFT and every run's final policy, by name."""
        r = int(replicate)
        return {"sft": self.plan.sfts[r], **{run: self.plan.final_policy(run, r) for run in self.plan.runs}}

    def exploitability_reports(self, replicate) -> list[str]:
        """The JSON reports of one replicate's exploitability table."""
        return [self.plan.exploitability_path(policy) for policy in self.evaluated_in(replicate).values()]

    def exploitability_table_flags(self, replicate) -> str:
        """``linepo exploitability-table --report NAME=FILE ...`` of one replicate."""
        return " ".join(f"--report {name}={self.plan.exploitability_path(policy)}"
                        for name, policy in self.evaluated_in(replicate).items())

    def per_replicate(self, kind: str) -> list[str]:
        """A per-replicate table's path (Plan.TEMPLATES ``kind``) for every replicate."""
        return [self.plan.path(kind, replicate=r) for r in self.replicates]

    def pooled_flags(self, flag: str, kind: str) -> str:
        """``FLAG R=FILE`` for every replicate's table of ``kind``: what a pooling command reads."""
        return " ".join(f"{flag} {r}={path}" for r, path in zip(self.replicates, self.per_replicate(kind)))

    @property
    def evaluating(self) -> bool:
        return self.config["evaluation"]["enabled"] and bool(self.plan.runs)

    def evaluation_inputs(self, replicate=0) -> list:
        """What one replicate's evaluation tables are computed from (for
        :func:`linepo.workflow.preflight.fixed_outputs`): its rules' specs and settings."""
        section, eplan = self.config["evaluation"], self.eval
        return [eplan.matrix_spec(replicate), eplan.curves_spec(replicate) if eplan.curves else None,
                eplan.summary_spec(self.plan, self.synthetic_judge, replicate), section["bootstrap"], section["seed"]]

    def prox_fidelity_outputs(self, digest) -> dict[str, str]:
        """The fixed-path Prox-fidelity tables (every replicate's per run and collected, and the
        pooled one), each with ``digest`` of what it is computed from (for
        :func:`linepo.workflow.preflight.fixed_outputs`)."""
        outputs, tables = {}, {}
        for r in self.replicates:
            runs = {self.plan.path("prox_fidelity", run=run, replicate=r):
                    digest(self.prox_fidelity_spec(run, r), self.plan.eval_prompts, self.config["judge"])
                    for run in self.prox_fidelity_runs}
            if runs:
                tables[self.plan.path("prox_fidelity_table", replicate=r)] = digest(runs)
            outputs.update(runs)
        return {**outputs, **tables, self.plan.path("prox_fidelity_pooled"): digest(tables)} if tables else {}

    # -- targets of `rule all`
    def llm_targets(self) -> list[str]:
        targets = [path for path in self.run_outputs(str)]
        if self.synthetic_judge and self.plan.runs:
            targets.append(self.plan.path("exploitability_pooled"))
        if self.prox_fidelity_runs:
            targets.append(self.plan.path("prox_fidelity_pooled"))
        return targets

    def eval_targets(self) -> list[str]:
        if not self.evaluating:
            return []
        targets = [summary_path("win_rates.csv"), summary_path("evaluation.tsv")]  # pooled over replicates
        targets += [f"results/eval/alpaca_eval/{c.name}/model_outputs.json" for c in self.eval.checkpoints]
        if self.eval.curves:
            targets.append(summary_path("curves.tsv"))
        return targets


def _judge_json(judge: dict, execution: dict) -> str:
    """The judge config for ``--judge-config``; unchanged (same params) when share_prefixes is unset."""
    extra = {"share_prefixes": execution["share_prefixes"]} if "share_prefixes" in execution else {}
    return json.dumps({**judge, **extra}, sort_keys=True)

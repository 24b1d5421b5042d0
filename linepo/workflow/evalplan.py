"""The evaluation DAG: which checkpoints are evaluated, and content-addressed ids for their
generations and pairwise comparisons (paper Table 2 and Figure 3), for every replicate.

Ids are hashes of recipes, like :mod:`linepo.workflow.plan`'s:

- a *generation* (a checkpoint answering the eval prompts) is keyed by (policy id, eval
  prompts id, decoding settings, runtime): a changed judge never regenerates. Its sampling
  seed is derived from that id (:meth:`EvalPlan.generation_seed`), not ``decoding.seed``
  itself: sample k of two checkpoints is judged against sample k, and a shared seed would
  give them the same Gumbel noise, coupling their tokens (the pair's law would not be the
  product of the two policies', so a win rate would not estimate p_Aᵀ M p_B);
- a *comparison* (every prompt's two outputs judged in both orders) is keyed by the
  unordered pair of generation ids and the eval judge: adding a checkpoint adds only its
  row and column to what is judged, and changing only the eval judge re-judges without
  regenerating;
- a *batch* is the comparisons one job judges with one judge load: each comparison belongs to
  the first replicate that uses it, and its shard within that replicate is a hash of its id
  modulo ``evaluation.compare_jobs`` (:func:`comparison_shard`: adding comparisons never moves
  one to another shard, adding a replicate never moves one to another replicate's batches); a
  batch's id hashes its comparison ids (so it changes, and reruns, when its set or the judge
  changes). Its pairs are cached one by one (:mod:`linepo.evaluation.batches`): a rerun batch
  judges only its new pairs.

Checkpoints are SFT, every run's final policy, and the intermediate ones named under
``evaluation.checkpoints`` (``inpo_r2: {run: inpo, round: 2}`` → "INPO-R2"), ordered like
the paper's Table 2. Each replicate (:mod:`linepo.workflow.replicates`) has the same
checkpoint names and labels, read off its own runs and SFT (:class:`ReplicateEval`); a
generation or comparison that two replicates share (their policies are the same: say the SFT
when it does not vary) is one node. ``EvalPlan.checkpoints``, ``curves`` and
``sft_generation`` are replicate 0's, the spec methods take a ``replicate``. Its tables are
``results/summary/replicates/<name>-<r>.<ext>``, pooled in ``results/summary/<name>.<ext>``
(:func:`summary_path`, :mod:`linepo.evaluation.pooled`). Model-free: imported by the
Snakefile and by config validation.

    linepo plan config.yaml      # also prints the checkpoints and job counts
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from linepo.errors import InputError
from linepo.algorithms import ALGORITHMS, TABLE_ORDER
from linepo.workflow.plan import Plan, recipe_id

#: The evaluation's tables and figures by rule, by the names of their command's flags.
SUMMARY_FILES = {
    "win_rates": {"csv": "win_rates.csv", "se": "win_rates_se.csv", "hard": "win_rates_hard.csv",
                  "hard_se": "win_rates_hard_se.csv", "counts": "win_rates_counts.csv",
                  "pairs": "win_rates_pairs.tsv", "figure": "win_rates.png"},
    "curves": {"tsv": "curves.tsv", "figure": "curves.png"},
    "summary": {"out": "evaluation.tsv"},
}


def summary_path(name: str, replicate=None) -> str:
    """``results/summary/<name>`` (pooled over replicates), or replicate ``replicate``'s
    ``results/summary/replicates/<stem>-<replicate>.<ext>`` (a number or a wildcard)."""
    if replicate is None:
        return f"results/summary/{name}"
    stem, _, ext = name.rpartition(".")
    return f"results/summary/replicates/{stem}-{replicate}.{ext}"


@dataclass(frozen=True)
class Checkpoint:
    name: str  # a wildcard-safe key: "sft", a run name, or a name under evaluation.checkpoints
    label: str  # what tables and figures print: "SFT", "INPO-R2", "LINE-PO"
    policy: str
    generation: str
    run: str | None = None
    round: int = 0


@dataclass(frozen=True)
class CurvePoint:
    """One point of Figure 3: a run's policy after ``iteration`` steps, against SFT."""

    run: str
    iteration: int  # 0 is the SFT policy itself (50% by definition)
    round: int
    split: str
    policy: str
    generation: str
    comparison: str | None  # None at iteration 0


@dataclass
class ReplicateEval:
    """One replicate's checkpoints (the same names and labels in every replicate) and curves."""

    sft_generation: str
    checkpoints: list = field(default_factory=list)  # Checkpoint, in Table 2 order
    curves: dict = field(default_factory=dict)  # run -> [CurvePoint]


def comparison_shard(comparison_id: str, shards: int) -> int:
    """The batch (0 … shards−1) of a comparison: a hash of its id alone, so it stays put as
    comparisons are added."""
    return int(hashlib.sha256(comparison_id.encode()).hexdigest()[:16], 16) % shards


@dataclass
class EvalPlan:
    judge: dict
    decoding: dict
    sft_generation: str  # replicate 0's
    compare_jobs: int = 1  # evaluation.compare_jobs: batches each replicate's comparisons are dealt into
    checkpoints: list = field(default_factory=list)  # replicate 0's Checkpoints, in Table 2 order
    generations: dict = field(default_factory=dict)  # generation id -> policy id, every replicate's
    comparisons: dict = field(default_factory=dict)  # comparison id -> (generation a, generation b), a < b
    curves: dict = field(default_factory=dict)  # replicate 0's: run -> [CurvePoint]
    round_length: dict = field(default_factory=dict)  # run -> steps per round (red lines of Figure 3)
    run_labels: dict = field(default_factory=dict)  # run -> its label without a round suffix ("INPO")
    replicates: dict = field(default_factory=dict)  # replicate -> ReplicateEval ([0]: the fields above)
    owner: dict = field(default_factory=dict)  # comparison id -> the first replicate that uses it
    _batches: tuple = field(default=(None,), init=False, repr=False, compare=False)  # batches() memo

    @staticmethod
    def generation_path(generation_id: str) -> str:
        return f"results/eval/generations/{generation_id}.parquet"

    @staticmethod
    def generation_seed(generation_id: str) -> int:
        """The sampling seed of one generation: its 48-bit id as an integer.

        Distinct generations get distinct seeds (the map is one-to-one), so two checkpoints'
        samples are independent; the id hashes ``decoding.seed``, which still reseeds all.
        """
        return int(generation_id, 16)

    #: the per-pair cache of the batches (linepo.evaluation.batches): never a rule's input or output
    COMPARISON_CACHE = "results/eval/comparisons/cache"

    @staticmethod
    def batch_path(batch_id: str) -> str:
        return f"results/eval/comparisons/batches/{batch_id}.parquet"

    def batches(self) -> dict[str, list[str]]:
        """Batch id -> its comparison ids (sorted), one batch per replicate and non-empty shard:
        replicate 0's first (with one replicate: the batches of a config without replicates)."""
        key = (self.compare_jobs, tuple(sorted((c, self.owner.get(c, 0)) for c in self.comparisons)))
        if self._batches[0] != key:
            shards: dict[tuple, list[str]] = {}
            for cid, owner in key[1]:
                shards.setdefault((owner, comparison_shard(cid, self.compare_jobs)), []).append(cid)
            batches = {recipe_id("eval_compare_batch", {"comparisons": cids}): cids for _, cids in sorted(shards.items())}
            self._batches = (key, batches, {cid: b for b, cids in batches.items() for cid in cids})
        return self._batches[1]

    def batch_of(self, comparison_id: str) -> str:
        self.batches()
        return self._batches[2][comparison_id]

    def batch_pairs(self, batch_id: str) -> str:
        """``linepo compare-batch --pairs``: each comparison of the batch and its two generation files."""
        return _spec(**{cid: {"a": self.generation_path(self.comparisons[cid][0]),
                              "b": self.generation_path(self.comparisons[cid][1])}
                        for cid in self.batches()[batch_id]})

    def batch_generation_paths(self, batch_id: str) -> list[str]:
        return sorted({self.generation_path(g) for cid in self.batches()[batch_id] for g in self.comparisons[cid]})

    def batch_paths(self, comparison_ids) -> list[str]:
        """The batch files holding ``comparison_ids``."""
        return sorted({self.batch_path(self.batch_of(c)) for c in comparison_ids})

    def comparison_between(self, generation_a: str, generation_b: str) -> str | None:
        """The comparison id of two generations (either order); None when they are the same."""
        if generation_a == generation_b:
            return None
        a, b = sorted((generation_a, generation_b))
        return recipe_id("eval_compare", {"a": a, "b": b, "judge": self.judge})

    # ---------------------------------------------------------------- one replicate's
    def view(self, replicate=0) -> ReplicateEval:
        """Replicate ``replicate``'s checkpoints and curves (a number, or a wildcard's string)."""
        if not self.replicates:  # evaluation off: replicate 0's (empty) fields
            return ReplicateEval(self.sft_generation, self.checkpoints, self.curves)
        return self.replicates[int(replicate)]

    def matrix_comparisons(self, replicate=0) -> list[str]:
        checkpoints = self.view(replicate).checkpoints
        ids = {self.comparison_between(x.generation, y.generation)
               for i, x in enumerate(checkpoints) for y in checkpoints[i + 1:]}
        return sorted(i for i in ids if i is not None)

    def curve_comparisons(self, replicate=0) -> list[str]:
        return sorted({p.comparison for p in self.curve_points(replicate) if p.comparison})

    def checkpoint(self, name: str, replicate=0) -> Checkpoint:
        return next(c for c in self.view(replicate).checkpoints if c.name == name)

    # ---------------------------------------------------------------- the rules' specs
    # What `linepo win-rates`, `eval-curves` and `eval-summary` read (``--spec``), as canonical
    # JSON: a rule's params trigger a rerun when their text changes, and only then. Replicate
    # 0's are those of a config without replicates.

    def matrix_spec(self, replicate=0) -> str:
        return _spec(
            checkpoints=[{"name": c.name, "label": c.label, "generation": c.generation}
                         for c in self.view(replicate).checkpoints],
            comparisons={c: {"a": self.comparisons[c][0], "b": self.comparisons[c][1],
                             "batch": self.batch_path(self.batch_of(c))} for c in self.matrix_comparisons(replicate)},
        )

    def curve_points(self, replicate=0) -> list[CurvePoint]:
        return [p for points in self.view(replicate).curves.values() for p in points]

    def curve_generation_paths(self, replicate=0) -> list[str]:
        return sorted({self.generation_path(p.generation) for p in self.curve_points(replicate)})

    def curves_spec(self, replicate=0) -> str:
        view = self.view(replicate)
        return _spec(
            runs={run: {"label": self.run_labels[run], "round_length": self.round_length[run],
                        "points": [{"iteration": p.iteration, "round": p.round, "split": p.split,
                                    "generation": p.generation, "comparison": p.comparison,
                                    "sft_generation": view.sft_generation} for p in points]}
                  for run, points in view.curves.items()},
            generations={p.generation: self.generation_path(p.generation) for p in self.curve_points(replicate)},
            comparisons={c: {"batch": self.batch_path(self.batch_of(c))} for c in self.curve_comparisons(replicate)},
        )

    def exploitability_reports(self, plan: Plan, synthetic: bool, replicate=0) -> dict[str, str]:
        """Each checkpoint's exploitability report (synthetic oracle only), by checkpoint name."""
        return {c.name: plan.exploitability_path(c.policy) for c in self.view(replicate).checkpoints} \
            if synthetic else {}

    def summary_generation_paths(self, replicate=0) -> list[str]:
        return sorted({self.generation_path(c.generation) for c in self.view(replicate).checkpoints})

    def summary_spec(self, plan: Plan, synthetic: bool, replicate=0) -> str:
        checkpoints = self.view(replicate).checkpoints
        return _spec(
            checkpoints=[{"name": c.name, "label": c.label, "generation": c.generation,
                          "policy": plan.policy_dir(c.policy)} for c in checkpoints],
            generations={c.generation: self.generation_path(c.generation) for c in checkpoints},
            exploitability=self.exploitability_reports(plan, synthetic, replicate),
        )

    # ---------------------------------------------------------------- per replicate and pooled
    def replicate_files(self, group: str) -> list[str]:
        """Every replicate's files of one rule (:data:`SUMMARY_FILES` ``group``): the pooling rule's input."""
        return [summary_path(name, r) for r in self.replicates or (0,) for name in SUMMARY_FILES[group].values()]

    def pooled_spec(self, group: str) -> str:
        """What a pooling command reads (``--spec``): ``{"replicates": {r: {flag: file}}}``."""
        return _spec(replicates={str(r): {flag: summary_path(name, r) for flag, name in SUMMARY_FILES[group].items()}
                                 for r in self.replicates or (0,)})


def _spec(**values) -> str:
    return json.dumps(values, sort_keys=True)


def _labels(config: dict, section: dict) -> dict:
    """Label of each checkpoint name; a run's final gets "-R<rounds>" when one of its rounds is named too."""
    runs, labels = config["runs"], section["labels"]

    def run_label(run: str) -> str:
        if run in labels:
            return labels[run]
        algorithm = runs[run]["algorithm"]
        return ALGORITHMS[algorithm].label if run == algorithm else run

    named_runs = {spec["run"] for spec in section["checkpoints"].values()}
    out = {"sft": labels.get("sft", "SFT"), **{f"run:{run}": run_label(run) for run in runs}}
    for run, spec in runs.items():
        out[run] = run_label(run) + (f"-R{spec['rounds']}" if run in named_runs and run not in labels else "")
    for name, spec in section["checkpoints"].items():
        out[name] = spec.get("label") or f"{run_label(spec['run'])}-R{spec['round']}"
    seen = {}
    for name, label in out.items():
        if name.startswith("run:"):
            continue
        if label in seen:
            raise InputError(f"config key evaluation: checkpoints {seen[label]!r} and {name!r} have the same label "
                             f"{label!r}; set evaluation.labels or a checkpoint's label")
        seen[label] = name
    return out


def build_eval_plan(config: dict, plan: Plan) -> EvalPlan:
    """The evaluation plan of a *validated* config and its training :class:`Plan`: every replicate's."""
    section = config["evaluation"]  # resolved by validate_config: its judge and decoding filled in
    policy_cfg = config["policy"]
    runtime = {"trust_remote_code": policy_cfg["trust_remote_code"], "dtype": policy_cfg["dtype"]}
    decoding = dict(section["decoding"])

    def generation(policy: str) -> str:
        gid = recipe_id("eval_generate", {"policy": policy, "prompts": plan.eval_prompts,
                                          "decoding": decoding, **runtime})
        eplan.generations.setdefault(gid, policy)
        return gid

    eplan = EvalPlan(judge=section["judge"], decoding=decoding, sft_generation="",
                     compare_jobs=config.get("_execution", {}).get("evaluation", {}).get("compare_jobs", 1))
    eplan.sft_generation = generation(plan.sft)
    if not section["enabled"] or not plan.runs:
        return eplan
    labels = _labels(config, section)
    eplan.run_labels = {run: labels[f"run:{run}"] for run in config["runs"]}
    for replicate in range(plan.replicate_count):
        _replicate(config, plan, eplan, labels, replicate, generation)
        for cid in sorted(set(eplan.matrix_comparisons(replicate)) | set(eplan.curve_comparisons(replicate))):
            eplan.owner.setdefault(cid, replicate)
    zero = eplan.replicates[0]
    eplan.sft_generation, eplan.checkpoints, eplan.curves = zero.sft_generation, zero.checkpoints, zero.curves
    return eplan


def _replicate(config: dict, plan: Plan, eplan: EvalPlan, labels: dict, replicate: int, generation) -> ReplicateEval:
    """Replicate ``replicate``'s checkpoints and curve points, added to ``eplan`` (its
    generations and comparisons too)."""
    section, runs = config["evaluation"], config["runs"]
    sft = plan.sfts.get(replicate, plan.sft)
    view = eplan.replicates[replicate] = ReplicateEval(generation(sft))
    order = {alg: i for i, alg in enumerate(TABLE_ORDER)}
    run_index = {run: i for i, run in enumerate(runs)}
    entries = [((-1, 0, 0), Checkpoint("sft", labels["sft"], sft, view.sft_generation))]
    for run, spec in runs.items():
        policy = plan.final_policy(run, replicate)
        key = (order[spec["algorithm"]], run_index[run], spec["rounds"])
        entries.append((key, Checkpoint(run, labels[run], policy, generation(policy), run, spec["rounds"])))
    for name, spec in section["checkpoints"].items():
        policy = plan.policy_after_round(spec["run"], spec["round"], replicate)
        key = (order[runs[spec["run"]]["algorithm"]], run_index[spec["run"]], spec["round"])
        entries.append((key, Checkpoint(name, labels[name], policy, generation(policy), spec["run"], spec["round"])))
    view.checkpoints = [c for _, c in sorted(entries, key=lambda e: e[0])]
    for x in view.checkpoints:
        for y in view.checkpoints:
            cid = eplan.comparison_between(x.generation, y.generation)
            if cid:
                eplan.comparisons[cid] = tuple(sorted((x.generation, y.generation)))

    if section["curves"]:
        every = section["curve_every"]
        for run, steps in plan.replicates.get(replicate, plan.runs).items():
            if ALGORITHMS[runs[run]["algorithm"]].one_pass or len(steps) < 2:
                continue
            points = [CurvePoint(run, 0, 0, "sft", sft, view.sft_generation, None)]
            for k, step in enumerate(steps, start=1):
                if k % every and k != len(steps):
                    continue
                gid = generation(step.policy)
                cid = eplan.comparison_between(gid, view.sft_generation)
                if cid:
                    eplan.comparisons[cid] = tuple(sorted((gid, view.sft_generation)))
                points.append(CurvePoint(run, k, step.round, step.split, step.policy, gid, cid))
            view.curves[run] = points
            eplan.round_length[run] = len(steps) // runs[run]["rounds"]
    return view


def describe(eplan: EvalPlan) -> str:
    lines = ["checkpoints: " + ", ".join(f"{c.label} ({c.name})" for c in eplan.checkpoints)]
    count = len(eplan.replicates)
    each = f" per replicate, {count} replicates" if count > 1 else ""
    lines.append(f"generations: {len(eplan.generations)}, comparisons: {len(eplan.comparisons)} "
                 f"(matrix {len(eplan.matrix_comparisons())}{each}) in {len(eplan.batches())} batch job(s), "
                 f"curves: {', '.join(eplan.curves) or 'none'}")
    return "\n".join(lines)

"""The LLM schedules of iterative runs: at every step, which policy samples the pairs, which
is the reference, which is trained from (paper Algorithms 3–4 and Appendix H).

Every training step of every schedule is one IPO/INPO/DPO/SPPO fit on pairs sampled by its
*sampler* μ, scored against its *reference* π_ref (the scored node's anchor is the sampler:
``linepo score --anchor`` is "the policy that sampled the pairs"), started from its *parent*.
An IPO step's exact minimiser is Prox(π_ref, η P(·≻μ)) whatever the parent (the parent only
initialises the fit), so the Prox-fidelity targets (:mod:`linepo.evaluation.prox_fidelity`) read
the sampler and the reference, never the parent. The schedule kind is the registry's
``Algorithm.schedule``; one step per (round, split) position t = 0, 1, … on that split s_t:

``single`` (iter_dpo, iter_ipo, sppo, inpo, linepo): π^{t+1} = fit(sampler π^t, reference by the
algorithm's rule, parent π^t) — sampler and parent are the current policy.

``extragradient`` (Mirror-Prox, Appendix H: π^{t+½} = Prox(π^t, η P(·≻π^t)),
π^{t+1} = Prox(π^t, η P(·≻π^{t+½}))), two samplings and two fits per step, both on split s_t:

    half: sample π^t on s_t,       reference π^t, parent π^t      → π^{t+½}
    full: sample π^{t+½} on s_t,   reference π^t, parent π^{t+½}  → π^{t+1}

The full step's parent is π^{t+½}, not the prox centre π^t: the exact minimiser is the same,
and π^{t+½} is the closer start (log T − log π^{t+½} = η P(π^{t+½} − π^t) = O(η²) against
O(η) from π^t), so a fit of a fixed budget lands nearer its target; it also keeps the
invariant of every other step that the parent is the sampler (the held-out pairs of checkpoint
selection are the sampler's either way). The half step is exactly iterative IPO's step from π^t,
so Mirror-Prox's first half step *is* ``iter_ipo``'s first step node.

``optimistic`` (OMWU, Appendix H: π^{t+½} = Prox(π^t, η P(·≻π^{t−½})),
π^{t+1} = Prox(π^t, η P(·≻π^{t+½}))), one new sampling per step after the first:

    half: the pairs of π^{t−½} (the previous step's full-step pairs, on s_{t−1}) re-scored
          with reference π^t, parent π^t                              → π^{t+½}
    full: sample π^{t+½} on s_t, reference π^t, parent π^{t+½}         → π^{t+1}

At t = 0, π^{−½} := π^0 (its half step samples π^0 on s_0), the convention of the tabular
:func:`linepo.games.game.optimistic_mwu` ("π_0 = π_1": its first update uses g(π^0) for the
previous gradient). So OMWU's step 0 is Mirror-Prox's step 0, node for node. The tabular
function's single-sequence iterates, π_{k+1} = Prox(π_k, 2η g(π_k) − η g(π_{k−1})), are the
*half steps* π^{k−½} of this two-sequence form (tests/test_llm_schedules.py checks it); both
sequences converge to the Nash policy in the last iterate.

Iterates. A run's steps (:attr:`linepo.workflow.plan.Plan.runs`) are its full steps π^{t+1}
only: what exploitability, the final policy, checkpoints and curves read. A half step is a
trained policy node like any other (results/policies/r<round>/s<split>/), attached to the full
step it precedes as :attr:`Step.half`; :func:`training_steps` lists both, half first, which is
what steps.tsv (with ``half`` and ``sampler`` columns for these runs) and the Prox-fidelity
spec (a row per training step) show.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Schedule kinds of the registry (linepo.algorithms.Algorithm.schedule).
SCHEDULES = ("single", "extragradient", "optimistic")


@dataclass
class Step:
    """One position of a run's schedule, for tables and readable names."""

    run: str
    round: int
    split: str
    policy: str  # the policy *after* this step
    reference: str
    reference_moved: bool
    replicate: int = 0
    sampler: str = ""  # the policy that sampled this step's pairs (its scored node's anchor)
    parent: str = ""  # the policy its training starts from
    half: Step | None = None  # two-step schedules: the half step π^{t+½} trained before this one
    is_half: bool = False  # this step is a half step (not an iterate of the run)


def training_steps(steps: list[Step]) -> list[Step]:
    """Every trained policy of a run in training order: each step's half step (if any), then it."""
    return [s for step in steps for s in ((step.half, step) if step.half else (step,))]


def iterative_schedule(kind: str, run_name: str, run: dict, sft_id: str, replicate: int, *,
                       reference_rule: str, num_splits: int, settings_for, data_for, scored_for, train) -> list[Step]:
    """The steps of an iterative run (``kind`` of :data:`SCHEDULES`), built with the plan's node
    makers: ``data_for(policy, round, split)`` → prefs id, ``scored_for(prefs, reference, anchor,
    round, split)`` → scored id, ``train(parent, reference, scored, settings, round, split,
    sampler)`` → policy id, ``settings_for(round)`` → the round's loss and training settings."""
    if kind not in SCHEDULES or (kind != "single" and reference_rule != "current"):
        raise ValueError(f"schedule {kind!r} with reference rule {reference_rule!r}: a two-step schedule's "
                         "reference is its prox centre π^t (rule current)")
    steps: list[Step] = []
    current, reference = sft_id, sft_id
    moves = run["reference_moves"]
    previous_pairs = None  # optimistic: (prefs id, sampler) of the previous step's full step
    for round_ in range(1, run["rounds"] + 1):
        moved = reference_rule == "moving" and round_ > 1 and (moves == "every_round" or round_ in moves)
        if moved:
            reference = current
        settings = settings_for(round_)
        for split in range(num_splits):
            s = str(split)

            def fit(sampler: str, pref_id: str, step_reference: str, parent: str) -> str:
                scored_id = scored_for([pref_id], step_reference, sampler, round_, s)
                return train(parent, step_reference, scored_id, settings, round_, s, sampler)

            if kind == "single":
                step_reference = current if reference_rule == "current" else reference
                policy = fit(current, data_for(current, round_, split), step_reference, current)
                steps.append(Step(run_name, round_, s, policy, step_reference, moved and split == 0, replicate,
                                  sampler=current, parent=current))
                current = policy
                continue
            if kind == "extragradient" or previous_pairs is None:  # OMWU at t = 0: π^{−½} = π^0
                half_pairs, half_sampler = data_for(current, round_, split), current
            else:
                half_pairs, half_sampler = previous_pairs
            half = fit(half_sampler, half_pairs, current, current)
            half_step = Step(run_name, round_, s, half, current, False, replicate, sampler=half_sampler,
                             parent=current, is_half=True)
            full_pairs = data_for(half, round_, split)
            policy = fit(half, full_pairs, current, half)
            steps.append(Step(run_name, round_, s, policy, current, False, replicate, sampler=half, parent=half,
                              half=half_step))
            previous_pairs = (full_pairs, half)
            current = policy
    return steps

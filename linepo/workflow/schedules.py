"""The LLM schedules of iterative runs: at every step, which policy samples the pairs, which
is the reference, which is trained from (paper Algorithms 3–4 and Appendix H; MNPO, EGPO and
ONPO, :mod:`linepo.games.peers`).

Every training step of every schedule is one IPO/INPO/DPO/SPPO fit on pairs sampled by its
*sampler* μ, scored against its *reference* π_ref (the scored node's anchor is the sampler:
``linepo score --anchor`` is "the policy that sampled the pairs", except in EGPO's full step
and MNPO's mixtures, whose :class:`Step` names its ``anchor``), started from its *parent*.
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

``extragradient`` with a fixed reference (EGPO, zhourunlong/EGPO; the exact twin
:func:`linepo.games.peers.egpo`): the same two samplings, but INPO-type fits against the run's
fixed (or moved) reference π_ref, centred at π^t — the scored node's *anchor* is π^t in both:

    half: sample π^t on s_t,       reference π_ref, anchor π^t, parent π^t      → π^{t+½}
    full: sample π^{t+½} on s_t,   reference π_ref, anchor π^t, parent π^{t+½}  → π^{t+1}

π^{t+½} ∝ (π^t)^{1−ητ} π_ref^{ητ} exp(η P(·≻π^t)) is INPO's step from π^t (EGPO's first half
step *is* INPO's first step node); the full step is the only step of any schedule whose anchor
is not its sampler (the loss (Δπ − ητΔπ_ref − (1−ητ)Δπ^t − η/2)² on pairs of π^{t+½}).
This is EGPO at the level of Prox steps, as :func:`linepo.games.peers.egpo` (its update, the
magnetic form). The public code (``lms/trainers/extragradient_trainer.py``) takes the
extragradient per *optimizer* step instead (odd steps restore the parameters saved before the
extrapolation), with the online-IPO loss (Δπ_θ − Δπ_ref − (P(y≻y″) − P(y′≻y″))/β)² on samples
of a geometric mixture of π_θ and π_ref: the same regularised game and fixed point, not the
same path.

``mixture`` (MNPO, :func:`linepo.games.peers.mnpo_step`): a ``single`` step whose anchor is the
geometric mixture Π_j π_{t−j}^{λ_j} of the last ``window`` iterates (newest first, weights
λ), the loss (Δπ − ητΔπ_ref − (1−ητ)Σ_j λ_j Δπ_{t−j} − η/2)² being linear in the anchor's
log-probs: its scored node holds Σ_j λ_j log π_{t−j}(y) (:attr:`ScoredNode.mixture`). At early
steps, fewer than ``window`` iterates exist: peers' :func:`~linepo.games.peers.history_weights`
(the first weights renormalised). A mixture of one iterate with weight 1 is a plain anchor, so
MNPO's step 0 (and every step of window 1) is INPO's node.

``omd`` (ONPO, :func:`linepo.games.peers.onpo`): one sampling D_t from π_t, two IPO fits on it:

    half: pairs of π_t on s_t, reference π′_t,     parent π_t      → π′_{t+1}
    full: the same pairs,      reference π′_{t+1}, parent π′_{t+1} → π_{t+1}

π′_0 = π_0 (the SFT policy). The auxiliary π′_{t+1} is this schedule's "half step" (trained
before, not an iterate). Parents: the nearer start, as for Mirror-Prox (log T − log π_t =
η(g_t − g_{t−1}) = O(η²) for the half step; π′_{t+1} is half π_t's distance to the full
step's target). ONPO's step-0 half step is iterative IPO's first step node.

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
SCHEDULES = ("single", "extragradient", "optimistic", "mixture", "omd")
#: The schedules that train a half step before each step.
TWO_STEP = ("extragradient", "optimistic", "omd")


@dataclass
class Step:
    """One position of a run's schedule, for tables and readable names."""

    run: str
    round: int
    split: str
    policy: str  # the policy *after* this step
    reference: str
    reference_moved: bool  # the round's first step against a just-moved reference (its half step too)
    replicate: int = 0
    sampler: str = ""  # the policy that sampled this step's pairs (its scored node's anchor)
    parent: str = ""  # the policy its training starts from
    half: Step | None = None  # two-step schedules: the half step π^{t+½} trained before this one
    is_half: bool = False  # this step is a half step (not an iterate of the run)
    anchor: str = ""  # the scored node's anchor when it is not the sampler (EGPO's full step)
    mixture: tuple = ()  # MNPO: the anchor as ((policy, weight), ...), newest first; () when one policy

    @property
    def anchor_policy(self) -> str:
        """The policy whose log-probs are the anchor (the sampler unless the step names another)."""
        return self.anchor or self.sampler


def training_steps(steps: list[Step]) -> list[Step]:
    """Every trained policy of a run in training order: each step's half step (if any), then it."""
    return [s for step in steps for s in ((step.half, step) if step.half else (step,))]


def iterative_schedule(kind: str, run_name: str, run: dict, sft_id: str, replicate: int, *,
                       reference_rule: str, num_splits: int, settings_for, data_for, scored_for, train) -> list[Step]:
    """The steps of an iterative run (``kind`` of :data:`SCHEDULES`), built with the plan's node
    makers: ``data_for(policy, round, split)`` → prefs id, ``scored_for(prefs, reference, anchor,
    round, split, mixture)`` → scored id, ``train(parent, reference, scored, settings, round, split,
    sampler, anchor, mixture)`` → policy id, ``settings_for(round)`` → the round's loss and training
    settings. A fixed reference moves to the current policy at the start of the rounds of
    ``run["reference_moves"]`` (absent: never; LINE-PO's config default is every round)."""
    if kind not in SCHEDULES or (kind in ("optimistic", "omd") and reference_rule != "current"):
        raise ValueError(f"schedule {kind!r} with reference rule {reference_rule!r}: this schedule's "
                         "reference is its prox centre (rule current)")
    steps: list[Step] = []
    current, reference = sft_id, sft_id
    moves = run.get("reference_moves") if reference_rule != "current" else None
    previous_pairs = None  # optimistic: (prefs id, sampler) of the previous step's full step
    auxiliary = sft_id  # omd: π′_t, π′_0 = π_0
    iterates = [sft_id]  # mixture: π_0, …, π_t
    for round_ in range(1, run["rounds"] + 1):
        moved = moves is not None and round_ > 1 and (moves == "every_round" or round_ in moves)
        if moved:
            reference = current
        settings = settings_for(round_)
        for split in range(num_splits):
            s = str(split)

            def fit(sampler: str, pref_id: str, step_reference: str, parent: str, anchor: str = "",
                    mixture: tuple = ()) -> str:
                scored_id = scored_for([pref_id], step_reference, anchor or sampler, round_, s, mixture)
                return train(parent, step_reference, scored_id, settings, round_, s, sampler, anchor or sampler,
                             mixture)

            if kind in ("single", "mixture"):
                step_reference = current if reference_rule == "current" else reference
                anchor, mixture = mixture_anchor(iterates, run) if kind == "mixture" else (current, ())
                policy = fit(current, data_for(current, round_, split), step_reference, current, anchor, mixture)
                steps.append(Step(run_name, round_, s, policy, step_reference, moved and split == 0, replicate,
                                  sampler=current, parent=current,
                                  anchor="" if anchor == current else anchor, mixture=mixture))
            elif kind == "omd":
                pairs = data_for(current, round_, split)
                half = fit(current, pairs, auxiliary, current)
                half_step = Step(run_name, round_, s, half, auxiliary, False, replicate, sampler=current,
                                 parent=current, is_half=True)
                policy = fit(current, pairs, half, half)
                steps.append(Step(run_name, round_, s, policy, half, False, replicate, sampler=current, parent=half,
                                  half=half_step))
                auxiliary = half
            else:
                # extragradient, optimistic: centred at π^t; Mirror-Prox and OMWU against π^t itself
                # (rule current), EGPO against its fixed reference with π^t as the anchor
                centre_reference = current if reference_rule == "current" else reference
                if kind == "extragradient" or previous_pairs is None:  # OMWU at t = 0: π^{−½} = π^0
                    half_pairs, half_sampler = data_for(current, round_, split), current
                else:
                    half_pairs, half_sampler = previous_pairs
                anchor = "" if reference_rule == "current" else current
                half = fit(half_sampler, half_pairs, centre_reference, current, anchor)
                half_step = Step(run_name, round_, s, half, centre_reference, moved and split == 0, replicate,
                                 sampler=half_sampler, parent=current, is_half=True,
                                 anchor="" if anchor == half_sampler else anchor)
                full_pairs = data_for(half, round_, split)
                policy = fit(half, full_pairs, centre_reference, half, anchor)
                steps.append(Step(run_name, round_, s, policy, centre_reference, moved and split == 0, replicate,
                                  sampler=half, parent=half, half=half_step, anchor=anchor))
                previous_pairs = (full_pairs, half)
            current = policy
            iterates.append(policy)
    return steps


def mixture_anchor(iterates: list[str], run: dict) -> tuple[str, tuple]:
    """MNPO's anchor at step t from ``iterates`` = [π_0, …, π_t]: ``(policy, ())`` when it is one
    iterate (weight 1), else ``(π_t, ((policy, weight), ...))`` with the weights of
    :func:`linepo.games.peers.history_weights` (zero weights left out), newest first."""
    from linepo.games.peers import history_weights, validate_mixture

    window, weights = validate_mixture(run["window"], run.get("weights"))
    history = iterates[::-1][:window]
    mixture = tuple((policy, float(w)) for policy, w in zip(history, history_weights(weights, len(history))) if w)
    if len(mixture) == 1:
        return mixture[0][0], ()
    return history[0], mixture

"""Sample-based twins of the two-fit and mixture schedules (issue 16): Mirror-Prox, OMWU
(paper Appendix H), ONPO, MNPO and EGPO (:mod:`linepo.games.peers`), and MNPO / EGPO whose
reference moves (LINE-PO's meta-algorithm over them, paper §3.3).

Every fit is one :func:`linepo.games.sampled.fit_policy` — the loss of :mod:`linepo.losses`
that the LLM trainer uses — on ``samples`` oracle-labelled pairs, with the sampler, reference,
anchor and start that the LLM schedule gives that fit (:mod:`linepo.workflow.schedules`):

    mirror_prox  half: pairs of π^t, IPO against π^t, from π^t → π^{t+½};
                 full: pairs of π^{t+½}, IPO against π^t, from π^{t+½} → π^{t+1}
    omwu         half: the previous full step's pairs (at t = 0 pairs of π^0), IPO against π^t,
                 from π^t → π^{t+½}; full: as Mirror-Prox's
    onpo         pairs D_t of π_t; π′_{t+1} = IPO against π′_t from π_t; π_{t+1} = IPO against
                 π′_{t+1} from π′_{t+1}, on the same D_t (π′_0 = π_0)
    egpo         half: pairs of π^t, INPO-form against π_ref with anchor π^t, from π^t;
                 full: pairs of π^{t+½}, against π_ref with anchor π^t, from π^{t+½}
    mnpo         pairs of π^t, INPO-form against π_ref with anchor Σ_j λ_j log π_{t−j}, from π^t
    *_moves      π_ref := the current iterate after every ``inner_steps`` iterations

Iterates are the full steps π^{t+1}, as the LLM run's steps (OMWU's exact
:func:`linepo.games.game.optimistic_mwu` iterates are this form's half steps; the tests check
both). With pairs in their expected counts instead of drawn (``draw``), each twin is its exact
dynamics to the fit's tolerance: the losses' population minimisers are the Prox steps.

    linepo game --algorithm mirror_prox_sampled --samples 10000 --json
"""

from __future__ import annotations

import numpy as np

from linepo.algorithms import sampled_schedules
from linepo.games.game import trajectory_of, with_moving_reference
from linepo.games.peers import geometric_mixture, history_weights, validate_mixture
from linepo.games.sampled import draw_preferences, fit_policy, inside_simplex

#: sampled name -> (registry algorithm, whether its reference moves)
PEER_SAMPLED = sampled_schedules()


def expected_pairs(matrix: np.ndarray, samples: int):
    """``draw`` for tests: the expected counts of ``samples`` labelled pairs of a policy."""
    def draw(policy):
        wins = samples * policy[:, None] * policy[None, :] * matrix
        return wins, 2 * samples * policy
    return draw


def run_sampled_peer(algorithm: str, matrix, init, *, eta: float, tau: float, iterations: int,
                     samples: int, inner_steps: int, seed: int, window: int = 1, weights=None,
                     tol: float | None = None, draw=None, halves: list | None = None):
    """Run one twin of :data:`PEER_SAMPLED` for ``iterations`` full steps.

    ``draw(policy) -> (wins, appearances)`` replaces the oracle's draws (default: ``samples``
    pairs from ``seed``'s generator); ``halves``, when a list, receives every half step
    (π^{t+½}, or ONPO's π′_{t+1}). ``tol`` stops as the exact twin does
    (:func:`linepo.games.game.with_moving_reference`).
    """
    spec, moves = PEER_SAMPLED[algorithm]
    if draw is None:
        rng = np.random.default_rng(seed)
        draw = lambda policy: draw_preferences(matrix, policy, samples, rng)  # noqa: E731
    halves = [] if halves is None else halves
    loss = spec.loss

    def fit(pairs, *, start, reference, log_anchor=None):
        return inside_simplex(fit_policy(loss, *pairs, current=start, reference=reference, eta=eta, tau=tau,
                                         log_anchor=log_anchor))

    state = {"pairs": None, "aux": init}  # OMWU: the previous full step's pairs; ONPO: π′_t

    def step(policies, reference):
        pi = policies[-1]
        centre = pi if spec.reference == "current" else reference  # IPO's reference is its prox centre
        if spec.schedule == "mixture":
            lam = history_weights(weights, min(window, len(policies)))
            log_anchor = np.log(geometric_mixture(policies[::-1], lam))  # log Σ-mixture up to a constant
            return fit(draw(pi), start=pi, reference=reference, log_anchor=log_anchor)
        if spec.schedule == "omd":
            pairs = draw(pi)
            state["aux"] = fit(pairs, start=pi, reference=state["aux"])
            halves.append(state["aux"])
            return fit(pairs, start=state["aux"], reference=state["aux"])
        first = state["pairs"] if spec.schedule == "optimistic" and state["pairs"] is not None else draw(pi)
        half = fit(first, start=pi, reference=centre, log_anchor=np.log(pi))
        halves.append(half)
        pairs = draw(half)
        state["pairs"] = pairs
        return fit(pairs, start=half, reference=centre, log_anchor=np.log(pi))

    if spec.schedule == "mixture":
        window, weights = validate_mixture(window, weights)
    policies, rounds = with_moving_reference(matrix, init, step, iterations=iterations,
                                             inner_steps=inner_steps if moves else None, tol=tol)
    params = dict(eta=eta, samples=samples, seed=seed)
    if spec.loss == "inpo":
        params["tau"] = tau
    if spec.schedule == "mixture":
        params.update(window=window, weights=list(weights))
    if moves:
        params["inner_steps"] = inner_steps
    if tol is not None:
        params["tol"] = tol
    return trajectory_of(algorithm, matrix, policies, rounds=rounds, **params)

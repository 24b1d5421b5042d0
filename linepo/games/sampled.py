"""Sample-based dynamics on a tabular softmax policy (paper §4, Figure 2; Appendix I).

Each iteration draws ``samples`` response pairs from the current policy μ_t, asks a
Bernoulli preference oracle which one wins, and minimises one of the losses of
:mod:`linepo.losses` — the very functions the LLM trainer uses — over the policy's logits.
The tabular policy's "sequence log-prob" of response y is ``log_softmax(θ)[y]``.

    linepo game --algorithm linepo_sampled --iterations 300 --samples 10000 --json

Algorithms (loss, reference):
    iter_dpo        DPO,  reference = μ_t             (cycles between near-deterministic policies)
    iter_ipo        IPO,  reference = μ_t             (= mirror descent up to sampling error)
    sppo            SPPO, reference = μ_t, P̂(y≻μ_t) from the oracle's outcomes
    inpo_sampled    INPO, reference = start policy    (converges to the J_τ equilibrium)
    linepo_sampled  INPO, reference moves to μ_t every ``inner_steps`` iterations
"""

from __future__ import annotations

import numpy as np

from linepo.algorithms import sampled_dynamics
from linepo.games.game import Trajectory, trajectory_of, with_moving_reference

#: algorithm -> (loss name, how the reference evolves): the LLM algorithms' tabular twins
#: (the two-fit and mixture schedules' twins: linepo.games.sampled_peers)
SAMPLED_ALGORITHMS = sampled_dynamics()
#: Every fitted policy is kept at least this far inside the simplex: log-probs must stay finite.
FLOOR = 1e-12


def draw_preferences(matrix: np.ndarray, policy: np.ndarray, samples: int, rng: np.random.Generator):
    """Draw ``samples`` pairs y1, y2 ~ μ and label them with the Bernoulli oracle.

    Returns ``(wins, appearances)``: ``wins[i, j]`` counts pairs where y_i beat y_j,
    ``appearances[i]`` how often y_i was drawn (for SPPO's win-rate estimates).
    """
    n = policy.size
    first = rng.choice(n, size=samples, p=policy)
    second = rng.choice(n, size=samples, p=policy)
    first_wins = rng.random(samples) < matrix[first, second]
    chosen = np.where(first_wins, first, second)
    rejected = np.where(first_wins, second, first)
    wins = np.zeros((n, n))
    np.add.at(wins, (chosen, rejected), 1.0)
    appearances = np.bincount(first, minlength=n) + np.bincount(second, minlength=n)
    return wins, appearances


def fit_policy(
    loss_name: str,
    wins: np.ndarray,
    appearances: np.ndarray,
    *,
    current: np.ndarray,
    reference: np.ndarray,
    eta: float,
    tau: float,
    log_anchor: np.ndarray | None = None,
    max_iter: int = 200,
) -> np.ndarray:
    """Minimise the sampled loss over softmax logits, starting from the current policy.

    ``log_anchor``: the INPO-form loss's anchor log μ (default log ``current``, the sampler of
    a one-fit step); EGPO's full step passes log π^t, MNPO Σ_j λ_j log π_{t−j}
    (:mod:`linepo.games.sampled_peers`). Pairs of identical responses are dropped (their loss
    has no gradient). Returns the minimising policy. L-BFGS in float64 solves these small
    smooth problems to ~1e-10.
    """
    import torch

    from linepo.losses import PairLogProbs, preference_loss

    chosen_idx, rejected_idx = np.nonzero(wins * (1 - np.eye(len(wins))))
    if chosen_idx.size == 0:  # every pair was a tie of identical responses: nothing to learn
        return current
    weights = torch.tensor(wins[chosen_idx, rejected_idx], dtype=torch.float64)
    weights = weights / weights.sum()
    chosen = torch.from_numpy(chosen_idx)
    rejected = torch.from_numpy(rejected_idx)
    log_reference = torch.from_numpy(np.log(reference))
    log_current = torch.from_numpy(np.log(current))
    anchor = log_current if log_anchor is None else torch.from_numpy(np.asarray(log_anchor, dtype=float))
    # P̂(y ≻ μ): each pair is one Bernoulli trial for both its members.
    win_rate = torch.from_numpy(wins.sum(axis=1) / np.maximum(appearances, 1))
    logits = log_current.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [logits], lr=1.0, max_iter=max_iter, tolerance_grad=1e-12, tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        log_policy = torch.log_softmax(logits, dim=0)
        batch = PairLogProbs(
            policy_chosen=log_policy[chosen],
            policy_rejected=log_policy[rejected],
            reference_chosen=log_reference[chosen],
            reference_rejected=log_reference[rejected],
            anchor_chosen=anchor[chosen],
            anchor_rejected=anchor[rejected],
            chosen_win_rate=win_rate[chosen],
            rejected_win_rate=win_rate[rejected],
        )
        loss = (weights * preference_loss(loss_name, batch, eta=eta, tau=tau)).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return torch.softmax(logits, dim=0).numpy().copy()


def inside_simplex(policy: np.ndarray) -> np.ndarray:
    """``policy`` with every entry at least :data:`FLOOR`, renormalised (log-probs stay finite)."""
    policy = np.maximum(policy, FLOOR)
    return policy / policy.sum()


def run_sampled(
    algorithm: str,
    matrix: np.ndarray,
    init: np.ndarray,
    *,
    eta: float,
    tau: float,
    iterations: int,
    samples: int,
    inner_steps: int,
    seed: int,
    tol: float | None = None,
) -> Trajectory:
    """Run one sample-based algorithm of :data:`SAMPLED_ALGORITHMS` for ``iterations`` steps.

    ``tol`` stops the run as the exact dynamics do (:func:`linepo.games.game.reached`):
    every iteration, or at outer-round ends for ``linepo_sampled``. The gap checked is
    exact — the iterate is a known tabular policy and the gap is computed from the true
    matrix — but the trajectory is noisy: the gap hovers at a floor that shrinks like
    1/√samples, so a run may stop on a dip below ``tol`` (that iterate really is within
    ``tol``), and a ``tol`` below the floor is normally not reached.
    """
    loss_name, reference_rule = SAMPLED_ALGORITHMS[algorithm]
    rng = np.random.default_rng(seed)
    moving = reference_rule == "moving"

    def step(policies, reference):
        current = policies[-1]
        wins, appearances = draw_preferences(matrix, current, samples, rng)
        loss_reference = current if reference_rule == "current" else reference
        return inside_simplex(fit_policy(loss_name, wins, appearances, current=current, reference=loss_reference,
                                         eta=eta, tau=tau))

    policies, rounds = with_moving_reference(matrix, init, step, iterations=iterations,
                                             inner_steps=inner_steps if moving else None, tol=tol)
    params = dict(eta=eta, tau=tau, samples=samples, seed=seed)
    if tol is not None:
        params["tol"] = tol
    if moving:
        params["inner_steps"] = inner_steps
    return trajectory_of(algorithm, matrix, policies, rounds=rounds, **params)

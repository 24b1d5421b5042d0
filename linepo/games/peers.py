"""Exact tabular dynamics of three last-iterate peers of LINE-PO (issue 16): MNPO, ONPO, EGPO.

Each is the *population minimiser* of its paper's pairwise square loss, so it is a closed-form
multiplicative update. Notation as in :mod:`linepo.games.game`: ``eta`` is the step size η
(the KL weight is 1/η), ``tau`` the regularisation τ of J_τ, Δx = log x(y⁺) − log x(y⁻), and
``Prox(z, g) ∝ z·exp(g)``. The rule used throughout (the one
:func:`linepo.games.game.regularized_step` rests on, paper Appendix F): on pairs drawn from a
policy μ and labelled by P, the IPO-type square loss E[(Δπ − Δc − η/2)²] (c the loss's
centre, the sum of log-terms subtracted from Δπ) is minimised by π ∝ c·exp(η P(·≻μ)).

    linepo game --algorithm onpo --eta 2 --iterations 2000 --json
    linepo game --algorithm mnpo --window 3 --weights '[0.5, 0.3, 0.2]' --json
    linepo game --algorithm egpo --tau 0.1 --json

Fixed points. ONPO's last iterate converges to the Nash policy of J. MNPO and EGPO keep a
fixed reference (the start policy), so they settle at the symmetric equilibrium of the
regularised game J_τ(π1, π2) = π1ᵀPπ2 − τKL(π1‖π_ref) + τKL(π2‖π_ref), the solution of
π = softmax(log π_ref + P π / τ) — the same point as INPO (see :func:`regularized_equilibrium`,
an independent solver used by the tests).
"""

from __future__ import annotations

import numpy as np

from linepo.games.game import (
    InvalidGameError,
    _tol_params,
    prox,
    reached,
    regularized_step,
    trajectory_of,
    win_rates_against,
    with_moving_reference,
)


def _log(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(p)


def _normalise_logits(logits: np.ndarray) -> np.ndarray:
    weights = np.exp(logits - logits.max())
    return weights / weights.sum()


# -- MNPO ---------------------------------------------------------------------------------


def validate_mixture(window, weights) -> tuple[int, tuple[float, ...]]:
    """MNPO's ``(window, weights)`` checked: window an integer ≥ 1; weights (default uniform
    1/window) a list of ``window`` finite non-negative numbers summing to 1 within 1e-9.

    Raises:
        InvalidGameError: the message starts with the parameter's name (``--window: ...`` or
            ``--weights: ...``), so the command line can print it as one line.
    """
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise InvalidGameError(f"--window: must be an integer ≥ 1, got {window!r}")
    window = int(window)
    if weights is None:
        return window, tuple([1.0 / window] * window)
    try:
        values = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise InvalidGameError(f"--weights: must be a list of numbers, got {weights!r}") from None
    if len(values) != window:
        raise InvalidGameError(f"--weights: needs one weight per past iterate (--window {window}), got {len(values)}")
    if not all(np.isfinite(values)) or any(w < 0 for w in values):
        raise InvalidGameError(f"--weights: must be finite and non-negative, got {values}")
    if abs(sum(values) - 1.0) > 1e-9:
        raise InvalidGameError(f"--weights: must sum to 1, got {sum(values):.12g}")
    return window, tuple(values)


def history_weights(weights, available: int) -> np.ndarray:
    """The weights λ_j actually applied to π_t, π_{t−1}, … when only ``available`` iterates exist.

    Choice (MNPO is silent; the public code ``mnpo_scripts/mnpo_trainer.py`` does the same):
    at early steps a window longer than the history uses the first ``available`` weights,
    renormalised to sum to 1. If those are all zero (e.g. weights [0, 1] at t = 0), all the
    weight goes to the oldest existing iterate π_0, the stand-in for the missing older ones.
    """
    used = np.asarray(weights[:available], dtype=float)
    if used.sum() > 0:
        return used / used.sum()
    fallback = np.zeros(len(used))
    fallback[-1] = 1.0
    return fallback


def mnpo_step(matrix, history, reference, *, eta: float, tau: float, weights) -> np.ndarray:
    """One MNPO step; ``history`` = [π_t, π_{t−1}, …] (newest first, at least one iterate).

    MNPO (Wu et al., "Multiplayer Nash Preference Optimization", arXiv 2509.23102, the TD-MNPO
    loss; code smiles724/MNPO ``MNPOTrainer.mnpo_loss``):
    E_{D_t}[(Δπ − ητ·Δπ_ref − (1−ητ)·Σ_j λ_j Δπ_{t−j} − η/2 …)²], whose population minimiser is

        π_{t+1} ∝ π_ref^{ητ} · Π_j π_{t−j}^{(1−ητ)λ_j} · exp(η P(·≻π_t)).

    The win-rate term uses π_t: D_t is sampled on-policy from the current iterate (the code's
    ``on_policy_data_gen`` decodes with the model of iteration t), so the opponents π_{t−j}
    enter only through the centre of the loss. The code's ``ratio`` is ητ here, its
    ``1/(2·eta)`` shift our η/2 scale. Window 1, weights [1] is INPO's update exactly.
    """
    return regularized_step(matrix, history[0], reference, eta=eta, tau=tau,
                            anchor=geometric_mixture(history, history_weights(weights, len(history))))


def geometric_mixture(policies, weights) -> np.ndarray:
    """Π_j policies_j^{weights_j}, scaled to max 1 (unnormalised: only its logs' differences count)."""
    log_mix = sum(w * _log(p) for w, p in zip(weights, policies) if w)
    return np.exp(log_mix - log_mix.max())


def mnpo(matrix, init, *, eta: float, tau: float, iterations: int, window: int = 1, weights=None,
         reference=None, inner_steps: int | None = None, tol: float | None = None):
    """MNPO (:func:`mnpo_step`) from ``init`` with a fixed reference (default ``init``).

    Converges to the J_τ equilibrium (:func:`regularized_equilibrium`): at a fixed point
    log π = ητ log π_ref + (1−ητ) log π + η Pπ + c, i.e. π ∝ π_ref·exp(Pπ/τ). With ``tol``
    it stops before the next update once the iterate's duality gap (on J) is ≤ ``tol``.
    ``inner_steps``: the reference moves to the current policy after every ``inner_steps``
    updates (LINE-PO over MNPO, paper §3.3; :func:`with_moving_reference`).
    """
    window, weights = validate_mixture(window, weights)

    def step(policies, reference):
        return mnpo_step(matrix, policies[::-1][:window], reference, eta=eta, tau=tau, weights=weights)

    policies, rounds = with_moving_reference(matrix, init, step, iterations=iterations, reference=reference,
                                             inner_steps=inner_steps, tol=tol)
    return trajectory_of("mnpo" if inner_steps is None else "mnpo_moves", matrix, policies, rounds=rounds,
                         eta=eta, tau=tau, window=window, weights=list(weights),
                         **_moves_params(inner_steps), **_tol_params(tol))


def _moves_params(inner_steps):
    return {} if inner_steps is None else {"inner_steps": inner_steps}


# -- ONPO ---------------------------------------------------------------------------------


def onpo(matrix, init, *, eta: float, iterations: int, tol: float | None = None):
    """ONPO, optimistic online mirror descent (Zhang et al., "Improving LLM General Preference
    Alignment via Optimistic Online Mirror Descent", arXiv 2502.16852, the two-step OMD update
    and its two IPO-type losses on D_t sampled from π_t):

        π′_{t+1} = argmin E_{D_t}[(Δπ − Δπ′_t − η/2 …)²]      = Prox(π′_t,     η P(·≻π_t))
        π_{t+1}  = argmin E_{D_t}[(Δπ − Δπ′_{t+1} − η/2 …)²]  = Prox(π′_{t+1}, η P(·≻π_t))

    the second step using P(·≻π_t) as the optimistic prediction of the next gradient. In log
    space log π_{t+1} = log π_t + η(2g_t − g_{t−1}) for t ≥ 1 (g_t = P π_t): OMWU's update.
    Choice (the paper starts both sequences at the reference): π′_0 = π_0 = ``init``, i.e. no
    prediction for the first step, so π_1 = Prox(π_0, 2η g_0); :func:`linepo.games.game.optimistic_mwu`
    instead takes π_0 = π_1 (g_{−1} = g_0). No reference, no τ: the last iterate converges to
    the Nash policy of J (the tests and README use η = 2). With ``tol`` it checks
    the iterate π_t (π′ is auxiliary, not an output) before each update.
    """
    anchor = init
    policies = [init]
    for _ in range(iterations):
        pi = policies[-1]
        if reached(matrix, pi, tol):
            break
        gradient = eta * win_rates_against(matrix, pi)
        anchor = prox(anchor, gradient)
        policies.append(prox(anchor, gradient))
    return trajectory_of("onpo", matrix, policies, eta=eta, **_tol_params(tol))


# -- EGPO ---------------------------------------------------------------------------------


def egpo_half_step(matrix, centre, opponent, reference, *, eta: float, tau: float) -> np.ndarray:
    """π ∝ centre^{1−ητ} · π_ref^{ητ} · exp(η P(·≻opponent)): the online-IPO-with-KL minimiser
    centred at ``centre`` on pairs from ``opponent``."""
    return regularized_step(matrix, opponent, reference, eta=eta, tau=tau, anchor=centre)


def egpo(matrix, init, *, eta: float, tau: float, iterations: int, reference=None,
         inner_steps: int | None = None, tol: float | None = None):
    """EGPO, extragradient preference optimisation (Zhou et al., "Extragradient Preference
    Optimization (EGPO): Beyond Last-Iterate Convergence for Nash Learning from Human
    Feedback", COLM 2025; code zhourunlong/EGPO ``lms/trainers/extragradient_trainer.py``):
    extragradient on the KL-regularised game J_τ with a fixed reference,

        π^{t+½} ∝ (π^t)^{1−ητ} · π_ref^{ητ} · exp(η P(·≻π^t))        (extrapolation)
        π^{t+1} ∝ (π^t)^{1−ητ} · π_ref^{ητ} · exp(η P(·≻π^{t+½}))    (update)

    each the minimiser of the online IPO loss with KL (the INPO-form loss) centred at π^t, on
    pairs from π^t resp. π^{t+½}. Choice: the regularisation term of the update is taken at
    the prox centre π^t (the magnetic / "PU" form of entropy-regularised extragradient), not
    at π^{t+½}; both have the same fixed point. Converges to the J_τ equilibrium
    (:func:`regularized_equilibrium`); π^{t+½} is not an iterate (``tol`` checks π^t).
    ``inner_steps``: the reference moves every ``inner_steps`` updates
    (:func:`with_moving_reference`; LINE-PO over EGPO).
    """

    def step(policies, reference):
        pi = policies[-1]
        half = egpo_half_step(matrix, pi, pi, reference, eta=eta, tau=tau)
        return egpo_half_step(matrix, pi, half, reference, eta=eta, tau=tau)

    policies, rounds = with_moving_reference(matrix, init, step, iterations=iterations, reference=reference,
                                             inner_steps=inner_steps, tol=tol)
    return trajectory_of("egpo" if inner_steps is None else "egpo_moves", matrix, policies, rounds=rounds,
                         eta=eta, tau=tau, **_moves_params(inner_steps), **_tol_params(tol))


# -- an independent solver for the regularised equilibrium ---------------------------------


def regularized_equilibrium(matrix, reference, *, tau: float) -> np.ndarray:
    """The symmetric equilibrium of J_τ: the root of z = log π_ref + P·softmax(z)/τ (scipy).

    The regularised best response to π is softmax(log π_ref + Pπ/τ); its fixed point is the
    unique equilibrium (J_τ is strongly concave-convex). Solved by Powell's hybrid method on
    the logits, independently of any of the dynamics, and polished by Newton steps.
    """
    from scipy.optimize import root

    p = np.asarray(matrix, dtype=float)
    log_ref = np.log(np.asarray(reference, dtype=float))

    def residual(z):
        return z - log_ref - p @ _normalise_logits(z) / tau

    def jacobian(z):
        pi = _normalise_logits(z)
        return np.eye(len(z)) - p @ (np.diag(pi) - np.outer(pi, pi)) / tau

    z0 = log_ref + p @ np.asarray(reference, dtype=float) / tau
    solution = root(residual, z0, jac=jacobian, method="hybr", options={"xtol": 1e-14})
    z = solution.x
    for _ in range(5):
        z = z - np.linalg.solve(jacobian(z), residual(z))
    if np.max(np.abs(residual(z))) > 1e-10:  # pragma: no cover - monotone game: always solvable
        raise RuntimeError(f"regularised equilibrium not found: {solution.message}")
    return _normalise_logits(z)

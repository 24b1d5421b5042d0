"""Checkpoints compared as a game: the meta-game of a win-rate matrix.

A win-rate matrix of intransitive checkpoints, ``M[i, j]`` = P(checkpoint i ≻ checkpoint j)
(results/summary/win_rates.csv, diagonal ½), has no single ranking. Read as a symmetric
zero-sum game with payoff ``M − ½`` — the *meta-game* — it has three summaries per checkpoint i:

``meta_nash``
    its mass in the Nash policy (the maximal lottery) of the meta-game: the mixture of
    checkpoints that wins at least ½ against every checkpoint in the pool.
``pool_exploitability``
    ``max_j M[j, i] − ½``: the best win rate any checkpoint of the pool achieves against it,
    minus ½ (≥ 0, since j = i gives 0; 0 for a checkpoint that no checkpoint beats).
``nash_averaged``
    its Nash-averaged rating ``Σ_j (M[i, j] − ½) p*_j``, the expected margin against the
    Nash mixture p* (Balduzzi, Tuyls, Pérolat and Graepel, "Re-evaluating evaluation",
    NeurIPS 2018, §3). It is ≤ 0 for every checkpoint, 0 exactly on the Nash support, and
    invariant to adding copies of a checkpoint to the pool.

p* is the **maximum-entropy Nash policy** (as in the paper): a meta-game may have many
Nash policies (clones, or checkpoints that tie), and the LP of
:func:`linepo.games.game.nash_policy` returns one vertex of that polytope, which depends on
the solver and on the order of the checkpoints; the maximum-entropy point is unique and
spreads mass equally over clones. It is found in two steps (:func:`max_entropy_nash`): one LP
per checkpoint finds the union of the supports of all Nash policies (the max-entropy point's
support, as it lies in the polytope's relative interior), then SLSQP maximises entropy over
the polytope restricted to that support, parametrised by the null space of its equality
constraints.

A matrix from data need not satisfy ``M + Mᵀ = 1`` exactly: the CSV rounds to 0.01%, a cell
and its transpose can count ties or failed comparisons differently, and a pooled matrix is a
mean of rounded cells. :func:`symmetrise` replaces M by ``(M + 1 − Mᵀ)/2``, the nearest
matrix (in Frobenius norm) that is a preference matrix, with M[i, j] and 1 − M[j, i] — two
estimates of the same probability — averaged; a matrix with M + Mᵀ = 1 exactly is left as it is.
All three summaries are computed on the symmetrised matrix.

    from linepo.evaluation.meta_game import meta_game
    meta_game(m)   # {"meta_nash": [...], "pool_exploitability": [...], "nash_averaged": [...]}
"""

from __future__ import annotations

import numpy as np

#: a checkpoint is in the support of the Nash polytope when some Nash policy gives it more
#: than this mass (the LP solver's feasibility tolerance is 1e-7)
SUPPORT_TOLERANCE = 1e-6


def symmetrise(matrix) -> np.ndarray:
    """``(M + 1 − Mᵀ)/2`` of a square matrix of probabilities (so that M + Mᵀ = 1, diagonal ½).

    Raises:
        ValueError: not square, fewer than 2 rows, or an entry outside [0, 1] or not finite.
    """
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 2:
        raise ValueError(f"a win-rate matrix must be square with at least 2 rows, got shape {m.shape}")
    if not np.all(np.isfinite(m)) or np.any((m < 0) | (m > 1)):
        raise ValueError("win rates must be finite probabilities in [0, 1]")
    if np.all(m + m.T == 1.0):
        return m.copy()  # already a preference matrix: unchanged, bit for bit
    return 0.5 + (m - m.T) / 2  # m − mᵀ is exactly antisymmetric in floating point


def _nash_polytope_lp(a: np.ndarray, objective: np.ndarray) -> np.ndarray:
    """argmax objective·p over {p on the simplex : pᵀ A ≥ 0} (A antisymmetric: the Nash set)."""
    from scipy.optimize import linprog

    n = a.shape[0]
    result = linprog(-objective, A_ub=-a.T, b_ub=np.zeros(n), A_eq=np.ones((1, n)), b_eq=[1.0],
                     bounds=[(0.0, None)] * n, method="highs")
    if not result.success:  # pragma: no cover - a symmetric zero-sum game always has a Nash policy
        raise RuntimeError(f"LP over the Nash polytope failed: {result.message}")
    p = np.clip(result.x, 0.0, None)
    return p / p.sum()


def max_entropy_nash(matrix) -> np.ndarray:
    """The maximum-entropy Nash policy of the symmetric game of a preference matrix.

    ``matrix`` must satisfy M + Mᵀ = 1 (:func:`symmetrise` a data matrix first); the result
    is checked to be a Nash policy (duality gap ≤ 1e-6).
    """
    from scipy.optimize import minimize

    from linepo.games.game import duality_gap, nash_policy

    m = np.asarray(matrix, dtype=float)
    a = (m - m.T) / 2  # = M − ½ for a preference matrix, exactly antisymmetric
    n = m.shape[0]
    vertices = [nash_policy(m)]  # also validates the matrix (square, in [0, 1], M + Mᵀ = 1)
    for i in range(n):
        if max(v[i] for v in vertices) <= SUPPORT_TOLERANCE:
            vertices.append(_nash_polytope_lp(a, np.eye(n)[i]))
    start = np.mean(vertices, axis=0)
    support = np.flatnonzero(start > SUPPORT_TOLERANCE / len(vertices))
    outside = np.setdiff1d(np.arange(n), support)
    # On the support every Nash policy p has (pᵀA)_j = 0 for j in the support (interchangeable
    # equilibria of a value-0 game), and Σ p = 1: p = p0 + N z with N their null space.
    p0 = start[support] / start[support].sum()
    equalities = np.vstack([a[np.ix_(support, support)].T, np.ones((1, support.size))])
    _, singular, vt = np.linalg.svd(equalities)
    rank = int(np.sum(singular > 1e-10 * max(1.0, singular.max())))
    null = vt[rank:].T
    p = p0
    if null.shape[1]:
        def policy(z):
            return p0 + null @ z

        def negative_entropy(z):
            q = np.clip(policy(z), 1e-300, None)
            return float(np.sum(q * np.log(q)))

        def gradient(z):
            return null.T @ (np.log(np.clip(policy(z), 1e-300, None)) + 1.0)

        constraints = [{"type": "ineq", "fun": policy, "jac": lambda z: null}]
        if outside.size:
            block = a[np.ix_(support, outside)].T  # rows: (pᵀA)_j ≥ 0 for j off the support
            constraints.append({"type": "ineq", "fun": lambda z: block @ policy(z), "jac": lambda z: block @ null})
        result = minimize(negative_entropy, np.zeros(null.shape[1]), jac=gradient, constraints=constraints,
                          method="SLSQP", options={"ftol": 1e-15, "maxiter": 500})
        p = np.clip(policy(result.x), 0.0, None)
        p /= p.sum()
    full = np.zeros(n)
    full[support] = p
    gap = duality_gap(m, full)
    if gap > 1e-6:  # pragma: no cover - a solver failure, never seen on the tests' games
        raise RuntimeError(f"maximum-entropy Nash: the solution has duality gap {gap:.2e}")
    return full


def pool_exploitability(matrix) -> np.ndarray:
    """Per checkpoint i: ``max_j M[j, i] − ½``, the best win rate any checkpoint has against it."""
    m = np.asarray(matrix, dtype=float)
    return m.max(axis=0) - 0.5


def nash_averaged(matrix, nash) -> np.ndarray:
    """Per checkpoint i: ``Σ_j (M[i, j] − ½) p*_j`` (Balduzzi et al. 2018's Nash average)."""
    m = np.asarray(matrix, dtype=float)
    return (m - 0.5) @ np.asarray(nash, dtype=float)


def meta_game(matrix) -> dict[str, np.ndarray] | None:
    """The three summaries of the module docstring for a win-rate matrix of probabilities.

    The matrix is :func:`symmetrise`-d first; None when a cell is missing (nan): a game
    with an unknown payoff has no Nash policy, so the columns are left empty.
    """
    m = np.asarray(matrix, dtype=float)
    off_diagonal = ~np.eye(len(m), dtype=bool)
    if np.any(np.isnan(m[off_diagonal])):
        return None
    m = symmetrise(np.where(off_diagonal, m, 0.5))
    nash = max_entropy_nash(m)
    return {"meta_nash": nash, "pool_exploitability": pool_exploitability(m),
            "nash_averaged": nash_averaged(m, nash)}

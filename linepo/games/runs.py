"""Run any tabular dynamics by name and store its trajectory (paper §4, Figures 1–2).

    linepo game --algorithm linepo --json                       # exact, Figure 1
    linepo game --algorithm linepo_sampled --json               # sample-based, Figure 2

Defaults (:data:`DEFAULTS`) reproduce the paper's phenomenon on its 3×3 game from
[0.2, 0.5, 0.3] within 300 iterations: LINE-PO's last iterate reaches the Nash policy,
MD / iterative DPO / iterative IPO / SPPO cycle, INPO settles at the J_τ equilibrium.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from linepo.games import game as games
from linepo.games.sampled import SAMPLED_ALGORITHMS
from linepo.games.sampled_peers import PEER_SAMPLED

#: mnpo_moves, egpo_moves: LINE-PO's meta-algorithm over MNPO / EGPO (paper §3.3), the
#: reference moving to the current policy every ``inner_steps`` updates (INPO's is ``linepo``)
EXACT_ALGORITHMS = ("md", "linepo", "inpo", "omwu", "mirror_prox", "mnpo", "onpo", "egpo", "mnpo_moves", "egpo_moves")
ALGORITHMS = EXACT_ALGORITHMS + tuple(SAMPLED_ALGORITHMS) + tuple(PEER_SAMPLED)


@dataclass(frozen=True)
class GameSettings:
    """Hyper-parameters of one tabular run; the defaults are the README's."""

    eta: float = 1.0  # step size η (the KL weight is 1/η)
    tau: float = 0.1  # regularisation τ of J_τ (INPO, LINE-PO)
    iterations: int = 300  # prox updates of the policy (LINE-PO: inner steps in total)
    inner_steps: int = 20  # LINE-PO: prox updates per outer round before the reference moves
    samples: int = 50_000  # sample-based runs: oracle-labelled pairs per iteration
    seed: int = 0  # sample-based runs: RNG seed
    window: int = 1  # MNPO: past iterates π_t, …, π_{t−window+1} in the loss's centre
    weights: tuple | None = None  # MNPO: their weights λ (non-negative, sum 1); None: uniform


DEFAULTS = GameSettings()


def run_algorithm(algorithm: str, matrix, init, settings: GameSettings = DEFAULTS,
                  tol: float | None = None) -> games.Trajectory:
    """Run ``algorithm`` (one of :data:`ALGORITHMS`) on a validated matrix and start policy.

    ``tol`` (``linepo game --tol``): stop once the iterate's duality gap is ≤ ``tol``
    (:func:`linepo.games.game.reached` says when each method checks); ``settings.iterations``
    is then the maximum.
    """
    s = settings
    if algorithm == "md":
        return games.mirror_descent(matrix, init, eta=s.eta, iterations=s.iterations, tol=tol)
    if algorithm == "linepo":
        return games.linepo(matrix, init, eta=s.eta, tau=s.tau, inner_steps=s.inner_steps,
                            iterations=s.iterations, tol=tol)
    if algorithm == "inpo":
        return games.inpo(matrix, init, eta=s.eta, tau=s.tau, iterations=s.iterations, tol=tol)
    if algorithm == "omwu":
        return games.optimistic_mwu(matrix, init, eta=s.eta, iterations=s.iterations, tol=tol)
    if algorithm == "mirror_prox":
        return games.mirror_prox(matrix, init, eta=s.eta, iterations=s.iterations, tol=tol)
    if algorithm in ("mnpo", "onpo", "egpo", "mnpo_moves", "egpo_moves"):
        from linepo.games import peers

        moves = s.inner_steps if algorithm.endswith("_moves") else None
        if algorithm.startswith("mnpo"):
            return peers.mnpo(matrix, init, eta=s.eta, tau=s.tau, iterations=s.iterations,
                              window=s.window, weights=s.weights, inner_steps=moves, tol=tol)
        if algorithm == "onpo":
            return peers.onpo(matrix, init, eta=s.eta, iterations=s.iterations, tol=tol)
        return peers.egpo(matrix, init, eta=s.eta, tau=s.tau, iterations=s.iterations, inner_steps=moves, tol=tol)
    if algorithm in SAMPLED_ALGORITHMS:
        from linepo.games.sampled import run_sampled  # torch: imported only for sampled runs

        return run_sampled(
            algorithm, matrix, init, eta=s.eta, tau=s.tau, iterations=s.iterations,
            samples=s.samples, inner_steps=s.inner_steps, seed=s.seed, tol=tol,
        )
    if algorithm in PEER_SAMPLED:
        from linepo.games.sampled_peers import run_sampled_peer

        return run_sampled_peer(algorithm, matrix, init, eta=s.eta, tau=s.tau, iterations=s.iterations,
                                samples=s.samples, inner_steps=s.inner_steps, seed=s.seed,
                                window=s.window, weights=s.weights, tol=tol)
    raise KeyError(f"unknown algorithm {algorithm!r}; choose from {', '.join(ALGORITHMS)}")


def relevant_settings(algorithm: str) -> tuple[str, ...]:
    """The :class:`GameSettings` fields that change ``algorithm``'s trajectory."""
    keys = ["eta", "iterations"]
    peer = PEER_SAMPLED[algorithm][0] if algorithm in PEER_SAMPLED else None
    loss = SAMPLED_ALGORITHMS.get(algorithm, ("",))[0] or (peer.loss if peer else "")
    if algorithm in ("linepo", "inpo", "mnpo", "egpo", "mnpo_moves", "egpo_moves") or loss == "inpo":
        keys.append("tau")
    if algorithm in ("linepo", "linepo_sampled", "mnpo_moves", "egpo_moves") or algorithm.endswith("_moves_sampled"):
        keys.append("inner_steps")
    if algorithm.startswith("mnpo"):
        keys += ["window", "weights"]
    if algorithm in SAMPLED_ALGORITHMS or peer:
        keys += ["samples", "seed"]
    return tuple(keys)


def summary(trajectory: games.Trajectory) -> dict:
    """The JSON summary printed by ``linepo game --json``.

    A run with a tolerance (``params["tol"]``) also gets ``tol``, ``converged`` (the last
    iterate's duality gap is ≤ tol) and ``iterations_run``; a run without one gets exactly
    the fields it always had.
    """
    matrix = trajectory.matrix
    nash = games.nash_policy(matrix)
    last = trajectory.last_iterate
    result = {
        "algorithm": trajectory.algorithm,
        "nash": nash.tolist(),
        "last_iterate": last.tolist(),
        "duality_gap": games.duality_gap(matrix, last),
        "kl_to_nash": games.kl(nash, last),
        "iterations": len(trajectory.policies) - 1,
        "rounds": int(trajectory.rounds[-1]),
        "params": trajectory.params,
    }
    tol = trajectory.params.get("tol")
    if tol is not None:
        result.update(tol=tol, converged=bool(result["duality_gap"] <= tol),
                      iterations_run=result["iterations"])
    return result


def save_trajectory(trajectory: games.Trajectory, path: str | Path) -> Path:
    """Write every iterate with its duality gap and KL to the Nash policy (kind "trajectory")."""
    from linepo.schemas import write_table

    nash = games.nash_policy(trajectory.matrix)
    rows = {
        "iteration": list(range(len(trajectory.policies))),
        "round": trajectory.rounds.tolist(),
        "policy": trajectory.policies.tolist(),
        "duality_gap": trajectory.duality_gaps().tolist(),
        "kl_to_nash": trajectory.kls_to(nash).tolist(),
    }
    metadata = {
        "algorithm": trajectory.algorithm,
        "matrix": trajectory.matrix.tolist(),
        "nash": nash.tolist(),
        "params": trajectory.params,
    }
    return write_table(rows, path, "trajectory", metadata=metadata)


def load_trajectory(path: str | Path) -> tuple[dict, "object"]:
    """Read a trajectory file: (metadata dict, pandas DataFrame of iterates)."""
    from linepo.schemas import read_metadata, read_table

    table = read_table(path, "trajectory")
    return read_metadata(path), table.to_pandas()


def write_summary_table(trajectory_paths, out: str | Path) -> Path:
    """TSV with one row per trajectory: its last-iterate duality gap and KL to Nash."""
    from linepo.schemas import atomic_path

    lines = ["algorithm\titerations\tduality_gap\tkl_to_nash\tlast_iterate"]
    for path in trajectory_paths:
        meta, frame = load_trajectory(path)
        last = frame.iloc[-1]
        policy = ",".join(f"{p:.6f}" for p in last["policy"])
        lines.append(f"{meta['algorithm']}\t{last['iteration']}\t{last['duality_gap']:.3e}"
                     f"\t{last['kl_to_nash']:.3e}\t[{policy}]")
    with atomic_path(out) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")
    return Path(out)


def settings_from(mapping: dict) -> GameSettings:
    """GameSettings from a dict (config entries), defaults for missing keys."""
    known = set(asdict(DEFAULTS))
    unknown = set(mapping) - known
    if unknown:
        raise KeyError(f"unknown setting(s) {sorted(unknown)}; known: {sorted(known)}")
    return GameSettings(**{**asdict(DEFAULTS), **mapping})


def parse_json_list(text: str, what: str):
    """Parse a JSON list argument, raising ValueError with a short reason."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err.msg})") from err
    if not isinstance(value, list):
        raise ValueError(f"must be a JSON list for {what}")
    return np.asarray(value, dtype=object).tolist()

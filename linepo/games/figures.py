"""Figures. Game trajectories: simplex panels beside duality gaps (paper Figures 1–2).

    linepo game-figure results/synthetic/paper_exact/*.parquet --out figure.png
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Vertices of the probability simplex in the plane: y_a bottom-left, y_b bottom-right, y_c top.
_VERTICES = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3) / 2]])
_GAP_FLOOR = 1e-16  # log-scale plots cannot show an exact 0


def to_plane(policies: np.ndarray) -> np.ndarray:
    """Barycentric (…, 3) policies to 2-D points of the equilateral simplex."""
    return np.asarray(policies) @ _VERTICES


def game_figure(trajectory_paths, out: str | Path, *, title: str = "") -> Path:
    """One simplex panel per trajectory (3 responses) and a shared log-scale gap panel.

    For games of other sizes the simplex panels are replaced by each response's
    probability over iterations.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from linepo.schemas import atomic_path
    from linepo.games.runs import load_trajectory

    runs = [load_trajectory(path) for path in trajectory_paths]
    count = len(runs)
    fig, axes = plt.subplots(1, count + 1, figsize=(3.2 * (count + 1), 3.4), squeeze=False)
    axes = axes[0]
    colors = plt.cm.tab10(np.arange(count) % 10)
    for ax, (meta, frame), color in zip(axes[:-1], runs, colors):
        policies = np.vstack(frame["policy"].to_numpy())
        nash = np.asarray(meta["nash"])
        if policies.shape[1] == 3:
            _simplex_panel(ax, policies, nash, color)
        else:
            ax.plot(frame["iteration"], policies)
            ax.set_xlabel("iteration")
            ax.set_ylabel("probability")
        ax.set_title(meta["algorithm"], fontsize=10)
    gap_ax = axes[-1]
    for (meta, frame), color in zip(runs, colors):
        gap_ax.semilogy(frame["iteration"], np.maximum(frame["duality_gap"], _GAP_FLOOR),
                        color=color, label=meta["algorithm"], linewidth=1.2)
    gap_ax.set_xlabel("iteration")
    gap_ax.set_ylabel("duality gap (last iterate)")
    gap_ax.legend(fontsize=7, loc="lower left")
    gap_ax.grid(alpha=0.3, which="both")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=out.suffix.lstrip(".") or "png", dpi=120)
    plt.close(fig)
    return out


def _simplex_panel(ax, policies: np.ndarray, nash: np.ndarray, color) -> None:
    corners = np.vstack([_VERTICES, _VERTICES[:1]])
    ax.plot(corners[:, 0], corners[:, 1], color="0.6", linewidth=0.8)
    for label, (x, y), offset in zip("abc", _VERTICES, [(-0.06, -0.06), (0.02, -0.06), (-0.02, 0.03)]):
        ax.text(x + offset[0], y + offset[1], f"$y_{label}$", fontsize=9)
    points = to_plane(policies)
    ax.plot(points[:, 0], points[:, 1], color=color, linewidth=0.8, alpha=0.9)
    start = points[0]
    ax.plot(*start, "o", color="tab:blue", markersize=6, label="start")
    ax.plot(*to_plane(nash), "*", color="red", markersize=12, label="Nash")
    ax.plot(*points[-1], "s", color="black", markersize=3, label="last")
    ax.set_aspect("equal")
    ax.set_xlim(-0.1, 1.1)
    ax.set_ylim(-0.1, 0.95)
    ax.axis("off")

"""``linepo game`` (run tabular dynamics) and ``linepo game-figure`` (plot trajectories).

    linepo game --matrix '[[0.5,0.1,0.8],[0.9,0.5,0.1],[0.2,0.9,0.5]]' \\
        --algorithm linepo --iterations 300 --json --out linepo.parquet
    linepo game-figure results/synthetic/paper_exact/*.parquet --out figure.png
"""

from __future__ import annotations

import argparse
import json
import sys

from linepo.errors import InputError


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a {kind.__name__}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def _tolerance(text: str) -> float:
    value = _positive(float)(text)
    if value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def register(subparsers) -> None:
    from linepo.games.runs import ALGORITHMS, DEFAULTS

    game = subparsers.add_parser(
        "game",
        help="run exact or sample-based dynamics on a preference matrix (paper §4)",
        description="Run one algorithm on a symmetric preference game P[i][j] = P(y_i ≻ y_j). "
        "Exact: md, linepo, inpo, omwu, mirror_prox, mnpo, onpo, egpo, and mnpo_moves, egpo_moves "
        "(their reference moves every --inner-steps, LINE-PO over MNPO/EGPO). Sample-based, on the "
        "LLM trainer's losses (Figure 2): iter_dpo, iter_ipo, sppo, inpo_sampled, linepo_sampled, "
        "and <method>_sampled for mirror_prox, omwu, mnpo, onpo, egpo, mnpo_moves, egpo_moves.",
    )
    game.add_argument("--matrix", help="JSON list of lists; default: the paper's 3×3 game")
    game.add_argument("--init", help="JSON start policy with positive entries; default [0.2, 0.5, 0.3] (uniform for n ≠ 3)")
    game.add_argument("--algorithm", required=True, choices=ALGORITHMS, metavar="NAME",
                      help=f"one of: {', '.join(ALGORITHMS)}")
    game.add_argument("--iterations", type=_positive(int), default=DEFAULTS.iterations, help="policy updates (default %(default)s)")
    game.add_argument("--eta", type=_positive(float), default=DEFAULTS.eta, help="step size η; KL weight is 1/η (default %(default)s)")
    game.add_argument("--tau", type=_positive(float), default=DEFAULTS.tau, help="regularisation τ of J_τ (default %(default)s)")
    game.add_argument("--inner-steps", type=_positive(int), default=DEFAULTS.inner_steps,
                      help="linepo, *_moves: updates per outer round before the reference moves (default %(default)s)")
    game.add_argument("--window", type=int, default=DEFAULTS.window,
                      help="mnpo: past iterates mixed into the loss's centre, ≥ 1 (default %(default)s)")
    game.add_argument("--weights", metavar="JSON",
                      help="mnpo: JSON list of --window non-negative weights summing to 1, newest "
                      "iterate first; default uniform. Early steps with less history renormalise the first ones")
    game.add_argument("--samples", type=_positive(int), default=DEFAULTS.samples,
                      help="sample-based: oracle-labelled pairs per iteration (default %(default)s)")
    game.add_argument("--seed", type=int, default=DEFAULTS.seed, help="sample-based: RNG seed (default %(default)s)")
    game.add_argument("--tol", type=_tolerance, metavar="X",
                      help="stop once the last iterate's duality gap is ≤ X (checked every iteration; "
                      "linepo, *_moves and their sampled twins: at the end of each outer round), --iterations being "
                      "the maximum; the output says whether X was reached (--json: tol, converged, "
                      "iterations_run). Sampled algorithms check the exact gap of their noisy iterates, "
                      "which hover at a floor ~1/sqrt(--samples): a smaller X is normally not reached. "
                      "Exit status 0 either way unless --require-tol")
    game.add_argument("--require-tol", action="store_true",
                      help="with --tol: exit with status 1 (after printing) when the tolerance is not reached")
    game.add_argument("--json", action="store_true", help="print one JSON object (nash, last_iterate, duality_gap, ...)")
    game.add_argument("--out", help="write the whole trajectory to this parquet file")
    game.set_defaults(func=run_game)

    figure = subparsers.add_parser(
        "game-figure",
        help="plot trajectories on the simplex beside their duality gaps (Figures 1–2)",
    )
    figure.add_argument("trajectories", nargs="+", help="trajectory parquet files written by `linepo game --out`")
    figure.add_argument("--out", required=True, help="image file (.png, .pdf or .svg)")
    figure.add_argument("--title", default="", help="figure title")
    figure.add_argument("--table", help="also write a TSV: last-iterate duality gap and KL to Nash per run")
    figure.set_defaults(func=run_figure)


def _parse_inputs(args):
    """Validated (matrix, init) from the arguments; InputError names the argument."""
    import numpy as np

    from linepo.games import game as games
    from linepo.games.runs import parse_json_list

    try:
        matrix = games.PAPER_MATRIX if args.matrix is None else games.validate_preference_matrix(
            parse_json_list(args.matrix, "a matrix"))
    except (ValueError, TypeError) as err:
        raise InputError(f"--matrix: {err}") from None
    n = matrix.shape[0]
    if args.init is None:
        return matrix, games.PAPER_INIT if n == 3 else np.full(n, 1.0 / n)
    try:
        init = games.validate_policy(parse_json_list(args.init, "a policy"), n)
    except (ValueError, TypeError) as err:
        raise InputError(f"--init: {err}") from None
    return matrix, init


def _mixture(args):
    """MNPO's validated (window, weights); InputError names --window or --weights."""
    from linepo.games.game import InvalidGameError
    from linepo.games.peers import validate_mixture
    from linepo.games.runs import parse_json_list

    weights = None
    if args.weights is not None:
        try:
            weights = parse_json_list(args.weights, "weights")
        except ValueError as err:
            raise InputError(f"--weights: {err}") from None
    try:
        return validate_mixture(args.window, weights)
    except InvalidGameError as err:
        raise InputError(str(err)) from None


def run_game(args) -> int:
    from linepo.games.runs import GameSettings, run_algorithm, save_trajectory, summary

    matrix, init = _parse_inputs(args)
    window, weights = _mixture(args)
    settings = GameSettings(eta=args.eta, tau=args.tau, iterations=args.iterations,
                            inner_steps=args.inner_steps, samples=args.samples, seed=args.seed,
                            window=window, weights=weights)
    if args.require_tol and args.tol is None:
        raise InputError("--require-tol needs --tol")
    trajectory = run_algorithm(args.algorithm, matrix, init, settings, tol=args.tol)
    result = summary(trajectory)
    if args.out:
        save_trajectory(trajectory, args.out)
    if args.json:
        print(json.dumps(result))
    else:
        fmt = lambda xs: "[" + ", ".join(f"{x:.4f}" for x in xs) + "]"  # noqa: E731
        print(f"{result['algorithm']}: {result['iterations']} iterations")
        print(f"  Nash policy   {fmt(result['nash'])}")
        print(f"  last iterate  {fmt(result['last_iterate'])}")
        print(f"  duality gap   {result['duality_gap']:.3e}")
        if args.tol is not None:
            print(f"  {tolerance_line(result, args.iterations)}")
    if args.require_tol and not result["converged"]:
        return 1
    return 0


def tolerance_line(result: dict, maximum: int) -> str:
    """Whether ``linepo game --tol`` reached its tolerance, in words."""
    if result["converged"]:
        return f"reached duality gap ≤ {result['tol']:g} after {result['iterations_run']} iterations"
    return (f"NOT reached: duality gap {result['duality_gap']:.1e} > {result['tol']:g} "
            f"after the maximum {maximum} iterations (--iterations)")


def run_figure(args) -> int:
    from linepo.games.figures import game_figure

    from linepo.games.runs import write_summary_table

    game_figure(args.trajectories, args.out, title=args.title)
    if args.table:
        write_summary_table(args.trajectories, args.table)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0

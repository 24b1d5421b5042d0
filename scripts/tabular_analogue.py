"""The embedded default's schedule on its exact tabular analogue (one policy over the three
response categories), to size η, ητ, rounds and splits, and to choose the pair selection.

Each step draws ``n`` samples per prompt from μ, runs the all-pairs tournament with the
oracle's 0/1 outcomes, keeps one (chosen, rejected) pair per prompt by ``selection`` (or,
for ``all_pairs``, every pair of different categories, labelled by the outcome or, with
``--probabilities``, by the probability as a soft label) and minimises the step's loss
over the tabular policy (linepo.games.sampled.fit_policy). "exact" uses the population
minimiser μ ← Prox(μ, η g_τ) instead (random pairs from μ).

    python scripts/tabular_analogue.py --eta 3 --eta-tau 0.5 --rounds 4 --splits 4
"""

import argparse

import numpy as np

from linepo.games import game as games
from linepo.games.sampled import fit_policy


def select_pairs(matrix, mu, prompts, n, selection, rng, use_outcomes=True):
    """Counts wins[i, j] of kept (chosen=i, rejected=j) pairs, and appearances per category."""
    k = len(mu)
    wins = np.zeros((k, k))
    appearances = np.zeros(k)
    samples = rng.choice(k, size=(prompts, n), p=mu)
    for row in samples:
        if selection == "all_pairs":
            for a in range(n):
                for b in range(a + 1, n):
                    i, j = row[a], row[b]
                    if i == j:
                        continue  # identical responses: the pipeline drops them
                    p_ij = matrix[i, j] if not use_outcomes else float(rng.random() < matrix[i, j])
                    # A soft label is a fractional count: p on (i ≻ j), 1 − p on (j ≻ i).
                    wins[i, j] += p_ij
                    wins[j, i] += 1 - p_ij
                    appearances[[i, j]] += 1
            continue
        score = np.zeros(n)
        for a in range(n):
            for b in range(a + 1, n):
                outcome = rng.random() < matrix[row[a], row[b]] if use_outcomes else matrix[row[a], row[b]]
                score[a] += outcome
                score[b] += 1 - outcome
        if selection == "random_pair":
            # Two samples of μ labelled by the oracle: Appendix F's data, whose INPO
            # minimiser is exactly the Prox step. (The pipeline's first two samples.)
            first_wins = rng.random() < matrix[row[0], row[1]]
            best, other = (0, 1) if first_wins else (1, 0)
        else:
            order = np.argsort(-score, kind="stable")
            best = order[0]
            other = order[-1] if selection == "best_vs_worst" else order[1]
            if score[best] == score[other]:
                continue  # a tie: dropped, as the pipeline drops it
        wins[row[best], row[other]] += 1
        appearances[row[best]] += 1
        appearances[row[other]] += 1
    return wins, appearances


def run(algorithm, args, selection, rng):
    p, start = games.PAPER_MATRIX, games.PAPER_INIT
    mu, reference = start.copy(), start.copy()
    tau = args.eta_tau / args.eta
    for round_ in range(1, args.rounds + 1):
        if algorithm == "linepo" and round_ > 1:
            reference = mu.copy()
        for _ in range(args.splits):
            ref = mu if algorithm == "iter_ipo" else reference
            if selection == "exact":
                mu = games.prox(mu, args.eta * p @ mu) if algorithm == "iter_ipo" else \
                    games.regularized_step(p, mu, ref, eta=args.eta, tau=tau)
                continue
            wins, appearances = select_pairs(p, mu, args.prompts, args.n, selection, rng, not args.probabilities)
            loss = "ipo" if algorithm == "iter_ipo" else "inpo"
            mu = fit_policy(loss, wins, appearances, current=mu, reference=ref, eta=args.eta, tau=tau)
            mu = np.maximum(mu, 1e-12) / np.maximum(mu, 1e-12).sum()
    return 0.5 * games.duality_gap(p, mu), mu  # exploitability: max_j P(y_j ≻ μ) − ½


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eta", type=float, default=3.0)
    parser.add_argument("--eta-tau", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--splits", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=125, help="prompts per split")
    parser.add_argument("--n", type=int, default=5, help="samples per prompt")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--probabilities", action="store_true",
                        help="rank samples by P, not by 0/1 outcomes (all_pairs: soft labels)")
    parser.add_argument("--selections", nargs="+", default=["exact", "random_pair", "best_vs_worst", "first_vs_second"])
    args = parser.parse_args()
    print(f"eta={args.eta} eta_tau={args.eta_tau} rounds={args.rounds} splits={args.splits} "
          f"prompts/split={args.prompts} n={args.n}")
    for selection in args.selections:
        for algorithm in ["linepo", "inpo", "iter_ipo"]:
            gaps = [run(algorithm, args, selection, np.random.default_rng(seed))[0] for seed in range(args.seeds)]
            print(f"{selection:16s} {algorithm:9s} exploitability {np.mean(gaps):.3f} ± {np.std(gaps):.3f}")

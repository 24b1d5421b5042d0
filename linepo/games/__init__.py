"""The tabular games (paper §4): game primitives and exact dynamics, sampled dynamics, synthetic runs, figures."""

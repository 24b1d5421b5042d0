"""Evaluation: win rates between checkpoints, exploitability under the synthetic oracle, figures."""

"""linepo: LINE-PO and its baselines for aligning language models with general preferences.

Library modules (import what you need; none imports torch at package import time):
games (tabular games, exact dynamics), losses (DPO/IPO/INPO/SPPO on sequence
log-probs), sampled (Figure 2's sample-based dynamics), prompts, models, embedded (the
tiny default policy), sampling, judges, preferences, scoring, training, plan (the
recipe-hashed DAG), robustness (exploitability), schemas (parquet artefacts), config,
cli (the ``linepo`` command).
"""

__version__ = "0.1.0"

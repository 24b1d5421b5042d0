"""The stages of one prox step: models, prompts, sampling, judges, preferences, scoring, training (and SFT)."""

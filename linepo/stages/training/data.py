"""Scored pairs as training examples: reading, tokenising (the scorer's rule) and batching."""

from __future__ import annotations

import math
import os
from pathlib import Path

from linepo.errors import InputError

_FLOAT_COLUMNS = ("reference_chosen_logp", "reference_rejected_logp", "anchor_chosen_logp", "anchor_rejected_logp",
                  "chosen_win_rate", "rejected_win_rate", "label_probability")


def read_scored(paths, option: str = "--scored") -> "pyarrow.Table":  # noqa: F821
    """One "scored" table from one or several files (concatenated in order), all values finite.

    Raises:
        InputError: a missing or malformed file, no pairs, or a NaN/inf log-prob or win rate.
    """
    import pyarrow as pa

    from linepo.schemas import read_table

    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    if not paths:
        raise InputError(f"{option}: give at least one scored file")
    tables = []
    for path in paths:
        table = read_table(path, "scored")
        for name in _FLOAT_COLUMNS:
            values = table.column(name).to_pylist()
            bad = [i for i, v in enumerate(values) if v is None or not math.isfinite(v)]
            if bad:
                raise InputError(f"{path}: column {name!r} has {len(bad)} non-finite values (first at row {bad[0]})")
        tables.append(table)
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    if table.num_rows == 0:
        raise InputError(f"{option} {' '.join(map(str, paths))}: no pairs"
                         + (" to train on" if option == "--scored" else " to validate on"))
    return table


def pair_features(tokenizer, table, max_length: int) -> list[dict]:
    """Training examples: token ids and response masks of both responses plus the precomputed values."""
    from linepo.stages.scoring import tokenize_pairs

    features = tokenize_pairs(tokenizer, table.column("prompt").to_pylist(), table.column("chosen").to_pylist(),
                              table.column("rejected").to_pylist(), max_length=max_length,
                              chosen_finished=table.column("chosen_finished").to_pylist(),
                              rejected_finished=table.column("rejected_finished").to_pylist(),
                              chosen_stop=table.column("chosen_stop_token_id").to_pylist(),
                              rejected_stop=table.column("rejected_stop_token_id").to_pylist(),
                              chosen_ids=table.column("chosen_token_ids").to_pylist(),
                              rejected_ids=table.column("rejected_token_ids").to_pylist())
    columns = {name: table.column(name).to_pylist() for name in _FLOAT_COLUMNS}
    for i, feature in enumerate(features):
        feature.update({name: float(values[i]) for name, values in columns.items()})
    return features


class PairCollator:
    """Batch of B pairs → 2B right-padded rows (chosen first, then rejected) plus (B,) floats."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        import torch

        from linepo.stages.scoring import pad_sequences

        sequences = [f["chosen_input_ids"] for f in features] + [f["rejected_input_ids"] for f in features]
        masks = [f["chosen_response_mask"] for f in features] + [f["rejected_response_mask"] for f in features]
        ids, attention, response = pad_sequences(sequences, masks, self.pad_token_id, "right")  # (2B, T) each
        batch = {"input_ids": ids, "attention_mask": attention, "response_mask": response}
        for name in _FLOAT_COLUMNS:
            batch[name] = torch.tensor([f[name] for f in features], dtype=torch.float32)  # (B,)
        return batch



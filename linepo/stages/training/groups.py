"""Grouped batches (``prompts_per_batch``): each optimizer batch is all pairs of K prompts, and
each distinct sequence of a batch is forwarded once.

With ``preferences.selection: all_pairs`` a prompt's n samples make n(n−1)/2 pairs and each
response is in n−1 of them; per-pair batches forward it n−1 times. Here the training set is
a list of *prompt groups* (:func:`prompt_groups`: a prompt's pairs, in file order), so the
Trainer's own seeded sampler shuffles prompts (``data_seed``) and its batches of K items are
K prompts (the last one may hold fewer); :class:`GroupCollator` pads each distinct
(prompt, response ids, stop) sequence once and gives each pair the row of its chosen and of
its rejected response. :func:`linepo.stages.training.trainer.pair_loss` gathers the pair
log-probs from those rows; the loss is the mean over the batch's pairs, as with per-pair
batches, so the gradient equals theirs up to float summation order.
"""

from __future__ import annotations

from linepo.stages.training.data import _FLOAT_COLUMNS, PairCollator


def prompt_groups(features: list[dict], prompts: list[str]) -> list[list[dict]]:
    """The pair features grouped by prompt: one list per distinct prompt, in order of first appearance."""
    if len(features) != len(prompts):
        raise ValueError(f"{len(features)} pairs but {len(prompts)} prompts")
    groups: dict[str, list[dict]] = {}
    for feature, prompt in zip(features, prompts):
        groups.setdefault(prompt, []).append(feature)
    return list(groups.values())


def unique_sequences(features: list[dict]) -> tuple[list[list[int]], list[list[int]], list[int], list[int]]:
    """(distinct sequences, their response masks, chosen row per pair, rejected row per pair).

    Two responses are one sequence when their token ids and response masks are equal: the same
    prompt, response ids and stop token (a cut response has none), after truncation.
    """
    rows: dict[tuple, int] = {}
    sequences, masks, chosen, rejected = [], [], [], []

    def row(ids, mask) -> int:
        key = (tuple(ids), tuple(mask))
        if key not in rows:
            rows[key] = len(sequences)
            sequences.append(list(ids))
            masks.append(list(mask))
        return rows[key]

    for f in features:
        chosen.append(row(f["chosen_input_ids"], f["chosen_response_mask"]))
        rejected.append(row(f["rejected_input_ids"], f["rejected_response_mask"]))
    return sequences, masks, chosen, rejected


class GroupCollator:
    """A batch of prompt groups → U right-padded distinct rows plus (B,) row indices and floats.

    ``chosen_index``/``rejected_index`` (B,) name each pair's rows of ``input_ids`` (U, T). A
    batch of plain pair features (the validation set, kept per pair) is collated as
    :class:`PairCollator` does, so the validation loss is computed as without grouping.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id
        self.pairs = PairCollator(pad_token_id)

    def __call__(self, items: list) -> dict:
        import torch

        from linepo.stages.scoring import pad_sequences

        if items and isinstance(items[0], dict):
            return self.pairs(items)
        features = [f for group in items for f in group]
        sequences, masks, chosen, rejected = unique_sequences(features)
        ids, attention, response = pad_sequences(sequences, masks, self.pad_token_id, "right")  # (U, T) each
        # The index first: the Trainer's find_batch_size reads the first tensor, B pairs.
        batch = {"chosen_index": torch.tensor(chosen, dtype=torch.long),
                 "rejected_index": torch.tensor(rejected, dtype=torch.long),
                 "input_ids": ids, "attention_mask": attention, "response_mask": response}
        for name in _FLOAT_COLUMNS:
            batch[name] = torch.tensor([f[name] for f in features], dtype=torch.float32)  # (B,)
        return batch


def pair_batches(groups: list[list[dict]], prompts_per_batch: int, seed: int) -> list[list[int]]:
    """Pair indices of each batch of one epoch, as the Trainer's seeded sampler would order groups
    (for tests and benchmarks that batch by hand): the groups shuffled with ``seed``, K per batch."""
    import torch

    generator = torch.Generator()
    generator.manual_seed(seed)
    order = torch.randperm(len(groups), generator=generator).tolist()
    starts, offset = [], 0
    for group in groups:
        starts.append(offset)
        offset += len(group)
    batches = []
    for i in range(0, len(order), prompts_per_batch):
        batches.append([starts[g] + j for g in order[i: i + prompts_per_batch] for j in range(len(groups[g]))])
    return batches

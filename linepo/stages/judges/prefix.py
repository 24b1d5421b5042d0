"""Prefix-shared forward passes of a pairwise judge's sequences (transformers KV caches).

A prompt's n samples give n(n − 1) ordered sequences that all start with the same chat head,
judging rules and instruction, and each first response opens n − 1 of them. The sequences
(built by the judge exactly as for unshared forwards) form a tree on their token ids: a
*group* node holds the longest common prefix of a prompt's sequences, a *first* node the
longest common prefix of those with the same first response, a leaf the rest of one
sequence. Each node's tokens run once, on top of its parent's KV cache; only leaves read
logits, at their last token (the forced answer). Nothing is assumed about where tokens
split: a prefix is whatever the ids share (truncated sequences share less), and every
node stops at least one token before the end of each of its sequences.

Rows of a batch have ragged parents and segments. A batch's parent caches are left-padded
to one width, state segments are right-padded, leaf segments left-padded (the answer is
the last column); the attention mask covers [parent | segment] and position ids count
real tokens only, so each row computes what its unpadded sequence would, up to float
rounding. A padding query always sees a real token before it (every state row has one),
so no cached key or value comes from a fully masked row.
"""

from __future__ import annotations

import inspect

import numpy as np


def cache_argument(model) -> str | None:
    """The forward keyword that takes a KV cache, or None when prefix sharing cannot be used:
    no cache argument or position ids, or a cache layer other than a full-attention
    ``DynamicLayer`` (sliding windows would drop a shared prefix)."""
    try:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # pragma: no cover - transformers without the Cache classes
        return None
    parameters = inspect.signature(model.forward).parameters
    name = next((n for n in ("cache", "past_key_values") if n in parameters), None)
    config = getattr(model, "config", None)
    if name is None or "position_ids" not in parameters or config is None or config.is_encoder_decoder:
        return None
    try:
        layers = getattr(DynamicCache(config=config), "layers", None)
    except Exception:  # a config DynamicCache cannot read
        return None
    if layers is not None and any(type(layer) is not DynamicLayer for layer in layers):
        return None
    return name


def _common(seqs: list[list[int]]) -> int:
    """Longest common prefix of ``seqs``, kept one token short of the shortest."""
    limit = min(len(s) for s in seqs) - 1
    first = seqs[0]
    n = 0
    while n < limit and all(s[n] == first[n] for s in seqs[1:]):
        n += 1
    return n


def prefix_tree(sequences: list[list[int]], keys: list[tuple]) -> tuple[list[tuple], list[tuple]]:
    """Nodes ``(parent, start, end, sequence)`` of the sharing tree, and one leaf per sequence.

    ``keys[i] = (group, first)`` (the instruction and the first response): sequences with the
    same group may share a prefix, those with the same group and first a longer one. A node
    is made only where two or more sequences share at least one more token than its parent.
    ``parent`` is a node index or None; a node's tokens are ``sequences[sequence][start:end]``.
    """
    nodes: list[tuple] = []
    leaves: list[tuple] = [(None, 0, len(s), i) for i, s in enumerate(sequences)]
    groups: dict = {}
    for i, (group, first) in enumerate(keys):
        groups.setdefault(group, {}).setdefault(first, []).append(i)
    for firsts in groups.values():
        members = [i for part in firsts.values() for i in part]
        parent, start = None, 0
        if len(members) > 1 and (end := _common([sequences[i] for i in members])) > 0:
            nodes.append((None, 0, end, members[0]))
            parent, start = len(nodes) - 1, end
        for part in firsts.values():
            node, node_end = parent, start
            if len(part) > 1 and (end := _common([sequences[i] for i in part])) > start:
                nodes.append((parent, start, end, part[0]))
                node, node_end = len(nodes) - 1, end
            for i in part:
                leaves[i] = (node, node_end, len(sequences[i]), i)
    return nodes, leaves


class PrefixRunner:
    """Runs a sharing tree on a causal LM: :meth:`choice_logprobs` is the judge's entry point."""

    def __init__(self, model, cache_name: str, batch_size: int, pad_id: int, device, keep_last: bool):
        self.model, self.cache_name = model, cache_name
        self.batch_size, self.pad_id, self.device, self.keep_last = batch_size, pad_id, device, keep_last
        self.tokens = 0  # token positions run (padding included), over this runner's lifetime

    def choice_logprobs(self, sequences: list[list[int]], keys: list[tuple], choice) -> "torch.Tensor":  # noqa: F821
        """log p of the two choice tokens after each whole sequence, ``(len(sequences), 2)``, in order.

        Prompts are taken in waves of at least ``batch_size`` sequences, so that the caches
        held at once are those of a few prompts, not of the whole call.
        """
        import torch

        out = torch.empty((len(sequences), 2), dtype=torch.float64, device=self.device)
        order: dict = {}
        for i, key in enumerate(keys):
            order.setdefault(key[0], []).append(i)
        wave: list[int] = []
        for members in order.values():
            wave += members
            if len(wave) >= self.batch_size:
                self._wave(sequences, keys, wave, choice, out)
                wave = []
        if wave:
            self._wave(sequences, keys, wave, choice, out)
        return out

    def _wave(self, sequences, keys, rows, choice, out) -> None:
        import torch

        nodes, leaves = prefix_tree([sequences[i] for i in rows], [keys[i] for i in rows])
        local = [sequences[i] for i in rows]
        states: dict[int, tuple] = {}  # node -> (block, row in block)
        # Nodes are listed parents first (group nodes before their first nodes): two passes.
        for depth_nodes in ([k for k, n in enumerate(nodes) if n[0] is None],
                            [k for k, n in enumerate(nodes) if n[0] is not None]):
            for batch in self._batches(depth_nodes, nodes):
                block = self._forward([nodes[k] for k in batch], local, states, leaf=False)
                for row, k in enumerate(batch):
                    states[k] = (block, row)
        for batch in self._batches(list(range(len(leaves))), leaves):
            logits = self._forward([leaves[k] for k in batch], local, states, leaf=True)
            logp = torch.log_softmax(logits, dim=-1).index_select(1, choice)
            out[[rows[k] for k in batch]] = logp.double()

    def _batches(self, indices: list[int], items: list[tuple]):
        """Batches of ``batch_size``, longest segment first: segments of like length share a batch
        (less padding); parents of different widths only widen the cache, not the tokens run."""
        ranked = sorted(indices, key=lambda k: (items[k][1] - items[k][2], k))
        for start in range(0, len(ranked), self.batch_size):
            yield ranked[start:start + self.batch_size]

    def _forward(self, items: list[tuple], sequences, states: dict, leaf: bool):
        """One batch of segments on their parents' caches: a state block, or the last logits of leaves."""
        import torch
        from transformers import DynamicCache

        parents = [states[p] if p is not None else None for p, *_ in items]
        width = max((block[1].shape[1] for block, _ in filter(None, parents)), default=0)
        segments = [sequences[seq][start:end] for _, start, end, seq in items]
        span = max(len(s) for s in segments)
        rows = len(items)
        ids = np.full((rows, span), self.pad_id, dtype=np.int64)
        seg_mask = np.zeros((rows, span), dtype=np.int64)
        for r, seg in enumerate(segments):
            cols = slice(span - len(seg), span) if leaf else slice(0, len(seg))  # answer in the last column
            ids[r, cols], seg_mask[r, cols] = seg, 1
        seg_mask = torch.from_numpy(seg_mask).to(self.device)
        past_mask = torch.zeros((rows, width), dtype=torch.int64, device=self.device)
        layers = None
        if width:
            some = next(filter(None, parents))[0][0]
            layers = [[k.new_zeros((rows, k.shape[1], width, k.shape[3])),
                       v.new_zeros((rows, v.shape[1], width, v.shape[3]))] for k, v in some]
            for r, parent in enumerate(parents):
                if parent is None:
                    continue
                (kv, mask), row = parent
                w = mask.shape[1]  # parent blocks are left-padded into this batch's width
                past_mask[r, width - w:] = mask[row]
                for layer, (k, v) in zip(layers, kv):
                    layer[0][r, :, width - w:] = k[row]
                    layer[1][r, :, width - w:] = v[row]
        start = past_mask.sum(dim=1, keepdim=True)
        positions = (start + torch.cumsum(seg_mask, dim=1) - 1).clamp(min=0)
        kwargs = {"input_ids": torch.from_numpy(ids).to(self.device),
                  "attention_mask": torch.cat([past_mask, seg_mask], dim=1), "position_ids": positions}
        if self.keep_last:
            kwargs["logits_to_keep"] = 1
        cache = None
        if layers is not None or not leaf:
            cache = DynamicCache(ddp_cache_data=[tuple(layer) for layer in layers]) if layers else DynamicCache()
            kwargs[self.cache_name] = cache
            kwargs["use_cache"] = True
        else:
            kwargs["use_cache"] = False
        self.tokens += rows * span
        result = self.model(**kwargs)
        if leaf:
            return result.logits[:, -1, :].float()
        return _layers(cache), kwargs["attention_mask"]


def _layers(cache) -> list[tuple]:
    """``[(keys, values)]`` per layer of a DynamicCache (``layers`` in transformers ≥ 4.56)."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))  # pragma: no cover - older transformers

"""Deterministic, resumable, host-sharded batches of tokenized SFT examples.

Epoch e visits the examples in the order of a permutation seeded by (seed, e). Global batch b of that epoch is the
slice [b*B, (b+1)*B) of the permutation (the incomplete tail batch is dropped); data-parallel host h of H reads rows
[h*B/H, (h+1)*B/H) of it. The whole position is (epoch, batch index): a two-int state stored in the checkpoint, so a
resumed run reads exactly the batches an uninterrupted run would.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import numpy as np

from jaxrl_vlm.data.conversation import TokenizedConversation


class BatcherState(NamedTuple):
    """Position of a batcher: the epoch and the index of the next global batch within it."""

    epoch: int
    batch: int


class SFTBatch(NamedTuple):
    """input_ids int32[b, S] (right-padded); attention_mask bool[b, S]; loss_mask bool[b, S] (response tokens);
    images uint8[b, H, W, 3] of image conversations (None for text)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    loss_mask: np.ndarray
    images: np.ndarray | None = None


def pad_examples(examples: Sequence[TokenizedConversation], seq_len: int, pad_id: int) -> SFTBatch:
    """Right-pad a list of tokenized conversations into one SFTBatch; a conversation longer than seq_len is an
    error (truncating it would drop supervised reply tokens)."""
    too_long = [len(ex.input_ids) for ex in examples if len(ex.input_ids) > seq_len]
    if too_long:
        raise ValueError(f"{len(too_long)} conversation(s) of up to {max(too_long)} tokens exceed data.seq_len={seq_len}; "
                         "raise --config.data.seq_len")
    n = len(examples)
    ids = np.full((n, seq_len), pad_id, dtype=np.int32)
    attention = np.zeros((n, seq_len), dtype=bool)
    loss = np.zeros((n, seq_len), dtype=bool)
    for i, ex in enumerate(examples):
        t = len(ex.input_ids)
        ids[i, :t] = ex.input_ids[:t]
        attention[i, :t] = True
        loss[i, :t] = ex.loss_mask[:t]
    with_image = [ex.image is not None for ex in examples]
    if any(with_image) and not all(with_image):
        raise ValueError("a batch mixes conversations with and without an image")
    images = np.stack([ex.image for ex in examples]) if examples and all(with_image) else None
    return SFTBatch(ids, attention, loss, images)


class SFTBatcher:
    """Iterator of this host's share of each global batch, from a random-access source of examples.

    get_example(i) -> TokenizedConversation for i in [0, num_examples); global_batch_size must divide by num_hosts.
    """

    def __init__(
        self,
        get_example: Callable[[int], TokenizedConversation],
        num_examples: int,
        *,
        global_batch_size: int,
        seq_len: int,
        pad_id: int,
        seed: int,
        host_index: int = 0,
        num_hosts: int = 1,
    ):
        if global_batch_size % num_hosts:
            raise ValueError(f"global_batch_size {global_batch_size} is not divisible by the {num_hosts} data hosts")
        if num_examples < global_batch_size:
            raise ValueError(f"{num_examples} examples cannot fill one global batch of {global_batch_size}")
        if not 0 <= host_index < num_hosts:
            raise ValueError(f"host_index {host_index} not in [0, {num_hosts})")
        self._get = get_example
        self.num_examples = num_examples
        self.global_batch_size = global_batch_size
        self.seq_len = seq_len
        self.pad_id = pad_id
        self.seed = seed
        self.host_index = host_index
        self.num_hosts = num_hosts
        self.state = BatcherState(0, 0)

    @property
    def batches_per_epoch(self) -> int:
        """Number of full global batches in one epoch."""
        return self.num_examples // self.global_batch_size

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)

    def restore(self, state: BatcherState | Sequence[int]) -> None:
        """Continue from a saved position (epoch, batch)."""
        epoch, batch = (int(v) for v in state)
        if not 0 <= batch < self.batches_per_epoch or epoch < 0:
            raise ValueError(f"batcher state {(epoch, batch)} is outside this dataset ({self.batches_per_epoch} batches/epoch)")
        self.state = BatcherState(epoch, batch)

    def __iter__(self):
        return self

    def __next__(self) -> SFTBatch:
        epoch, batch = self.state
        per_host = self.global_batch_size // self.num_hosts
        start = batch * self.global_batch_size + self.host_index * per_host
        rows = self._order(epoch)[start:start + per_host]
        out = pad_examples([self._get(int(i)) for i in rows], self.seq_len, self.pad_id)
        batch += 1
        self.state = BatcherState(epoch + 1, 0) if batch == self.batches_per_epoch else BatcherState(epoch, batch)
        return out

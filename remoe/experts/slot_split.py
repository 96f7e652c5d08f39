"""One MoE layer's routed slots split by destination, in as few operations as the data needs.

A decode step has a handful of slots (T x K of a few dozen at most): there, Python lists beat a dozen small
torch calls per destination (each costs microseconds of dispatch), and the index and weight messages are built
straight from the lists. Larger batches (prefill) use torch masks. Both give, per destination: the rows it
computes, its [N, K] slot index with -1 where another destination serves the slot, and the slot weights with 0
there. T = tokens, K = top-k, N = rows a destination computes.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

import torch

from remoe.proto import tensor_pb2
from remoe.transport import tensor_codec

SMALL_SLOTS = 64  # T x K up to this: the list path (a 2-destination decode split: 77 µs vs 131 µs with masks,
# measured in-process on the 2-core Xeon; not a bench of its own)


@dataclass(slots=True)
class DestinationSlots:
    number: int  # the destination's number in the routing
    rows: torch.Tensor  # [N] rows it computes (all T rows at decode)
    all_rows: bool  # rows == every row: the hidden states go as they are, and its partial adds without a gather
    _index: torch.Tensor | None = None  # [N, K] int64, -1 where another destination serves the slot
    _weights: torch.Tensor | None = None  # [N, K] in the hidden states' dtype, 0 there
    _lists: tuple[list[int], list[float], list[int], torch.dtype] | None = None  # the list path's flat slots

    @property
    def index(self) -> torch.Tensor:
        if self._index is None:
            ids, _, shape, _ = self._lists
            self._index = torch.tensor(ids, dtype=torch.int64).view(shape)
        return self._index

    @property
    def weights(self) -> torch.Tensor:
        if self._weights is None:
            _, wts, shape, dtype = self._lists
            self._weights = torch.tensor(wts, dtype=dtype).view(shape)
        return self._weights

    def messages(self) -> tuple[tensor_pb2.Tensor, tensor_pb2.Tensor]:
        """The index and weights as wire tensors (from the lists without a tensor where the dtype allows)."""
        if self._lists is None:
            return tensor_codec.encode(self.index), tensor_codec.encode(self.weights)
        ids, wts, shape, dtype = self._lists
        index_msg = tensor_pb2.Tensor(dtype="int64", shape=shape, data=array("q", ids).tobytes())
        if dtype == torch.float32:  # array('f') holds exactly the float32 values
            return index_msg, tensor_pb2.Tensor(dtype="float32", shape=shape, data=array("f", wts).tobytes())
        return index_msg, tensor_codec.encode(self.weights)


def split_slots(owner: torch.Tensor, owner_list: list[int], index: torch.Tensor, weights: torch.Tensor):
    """owner [E] / owner_list: each expert's destination number; index [T, K]; weights [T, K] -> a
    DestinationSlots per destination that has slots, in destination order."""
    if index.numel() <= SMALL_SLOTS:
        return _split_lists(owner_list, index, weights)
    return _split_torch(owner, index, weights)


def _split_lists(owner_list: list[int], index: torch.Tensor, weights: torch.Tensor) -> list[DestinationSlots]:
    tokens, top_k = index.shape
    ids, wts = index.tolist(), weights.tolist()
    dests = sorted({owner_list[e] for row in ids for e in row if e >= 0})
    all_rows = torch.arange(tokens)
    out = []
    for number in dests:
        sub_ids = [[e if e >= 0 and owner_list[e] == number else -1 for e in row] for row in ids]
        keep = [t for t, row in enumerate(sub_ids) if any(e >= 0 for e in row)]
        flat_ids = [e for t in keep for e in sub_ids[t]]
        flat_w = [w if e >= 0 else 0.0 for t in keep for e, w in zip(sub_ids[t], wts[t], strict=True)]
        whole = len(keep) == tokens
        rows = all_rows if whole else torch.tensor(keep)
        lists = (flat_ids, flat_w, [len(keep), top_k], weights.dtype)
        out.append(DestinationSlots(number, rows, whole, _lists=lists))
    return out


def _split_torch(owner: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> list[DestinationSlots]:
    return split_by_destination(owner[index.clamp(min=0)].masked_fill(index < 0, -1), index, weights)


def split_rows_by_owner(owner_rows: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> list[DestinationSlots]:
    """Like split_slots when rows have owners of their own (a batched step of requests with different plans):
    owner_rows [T, E] is each row's destination number of every expert."""
    dest_of_slot = owner_rows.gather(1, index.clamp(min=0)).masked_fill(index < 0, -1)  # [T, K]
    return split_by_destination(dest_of_slot, index, weights)


def split_by_destination(
    dest_of_slot: torch.Tensor, index: torch.Tensor, weights: torch.Tensor
) -> list[DestinationSlots]:
    """dest_of_slot [T, K]: the destination number of each slot, -1 for none."""
    tokens = index.shape[0]
    out = []
    for number in sorted(set(dest_of_slot.flatten().tolist()) - {-1}):
        mine = dest_of_slot == number  # [T, K]
        sub_index = index.masked_fill(~mine, -1)  # [T, K]
        sub_weights = weights.masked_fill(~mine, 0.0)  # [T, K]
        keep = mine.any(dim=1)  # [T]
        if bool(keep.all()):
            out.append(DestinationSlots(number, torch.arange(tokens), True, sub_index, sub_weights))
        else:
            rows = keep.nonzero().flatten()  # [N]
            out.append(DestinationSlots(number, rows, False, sub_index[rows], sub_weights[rows]))
    return out

"""The bytes a block of torch code allocates, measured on any device (the CPU included).

CUDA has ``torch.cuda.max_memory_allocated``; the CPU allocator keeps no such statistics. So
that the memory estimate (``tje_hf.models.memory``) can be checked against what is actually
allocated on the machine the tests run on, :class:`AllocationMeter` watches every tensor
operation dispatched inside it and follows the storages they create until they are freed: its
``peak_bytes`` is the most memory those storages held at once. Views and in-place results
(which share a storage with an input) allocate nothing and are not counted; neither is memory
that existed before the block, nor temporaries inside one operator (between two dispatched
operations, what is alive is exact).
"""

from __future__ import annotations

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class AllocationMeter(TorchDispatchMode):
    """``with AllocationMeter() as meter: ...`` then ``meter.peak_bytes`` (and ``meter.live_bytes``,
    what is still held at the end). Slows every operation down: for measurements, not for runs."""

    def __init__(self):
        super().__init__()
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}  # data pointer -> (storage, bytes)
        self.peak_bytes = 0

    @property
    def live_bytes(self) -> int:
        self._forget_freed()
        return sum(n for _, n in self._live.values())

    def _forget_freed(self) -> None:
        self._live = {ptr: entry for ptr, entry in self._live.items() if not entry[0].expired()}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        self._forget_freed()  # before adding: a freed block's address may be given out again
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr in inputs or ptr in self._live or storage.nbytes() == 0:
                continue  # a view, an in-place result, or already followed
            self._live[ptr] = (StorageWeakRef(storage), storage.nbytes())
        self.peak_bytes = max(self.peak_bytes, sum(n for _, n in self._live.values()))
        return out

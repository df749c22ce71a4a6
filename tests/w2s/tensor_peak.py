"""A deterministic CPU memory measure for tests and benchmarks: the peak bytes of tensors alive at once.

`TensorPeak` is a TorchDispatchMode: it sees every tensor an ATen op returns while it is open (forward and
backward), counts each storage once until it is freed, and records the peak of their sum and the largest single
tensor. Tensors that existed before (weights) are not counted, nor are a kernel's internal scratch buffers, so
the figure is the extra memory a computation holds, independent of allocator, threads and timing.
"""

from __future__ import annotations

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class TensorPeak(TorchDispatchMode):
    """Peak live bytes (`peak`) and largest tensor (`largest`) of the tensors made while the mode is open."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.now = self.peak = self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self._sweep()
        out = func(*args, **(kwargs or {}))
        self._sweep()
        # a view or an in-place result shares an input's storage: not a new allocation (the input may be a weight)
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor) and leaf.device.type == "cpu":
                if leaf.untyped_storage().data_ptr() not in inputs:
                    self._add(leaf.untyped_storage())
        self.peak = max(self.peak, self.now)
        return out

    def _add(self, storage: torch.UntypedStorage) -> None:
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self.live:
            return
        self.live[key] = (StorageWeakRef(storage), size)
        self.now += size
        self.largest = max(self.largest, size)

    def _sweep(self) -> None:
        for key, (ref, size) in list(self.live.items()):
            if ref.expired():
                del self.live[key]
                self.now -= size

"""Allocated bytes of CPU tensors, live and peak, counted at the allocator's level of detail: every tensor an op
creates (forward, autograd's backward, the optimizer) is seen by a ``TorchDispatchMode`` and counted once per
storage until Python frees that storage (a weak reference's callback). Storages alive when tracking starts
(weights, adapters, AttTok modules) are counted from ``start(model)``.

Why trust it: it sums exactly the bytes torch allocates for tensors (``untyped_storage().nbytes()``), the same
quantity ``torch.cuda.max_memory_allocated`` reports on a GPU, without the allocator's caching and without Python,
libraries or the dataset that peak RSS would mix in. Views share their base's storage and are counted once.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveTensorBytes(TorchDispatchMode):
    """``with LiveTensorBytes() as meter: ...`` then ``meter.peak`` / ``meter.current`` (bytes)."""

    def __init__(self) -> None:
        super().__init__()
        self.current = self.peak = 0
        self._live: dict[int, int] = {}
        self._refs: dict[int, weakref.ref] = {}

    def _count(self, tensor: torch.Tensor) -> None:
        if tensor.device.type != "cpu" or tensor.is_sparse or tensor.is_meta:
            return
        storage = tensor.untyped_storage()
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self._live:
            return
        self._live[key] = size
        self._refs[key] = weakref.ref(storage, lambda _ref, key=key: self._free(key))
        self.current += size
        self.peak = max(self.peak, self.current)

    def _free(self, key: int) -> None:
        size = self._live.pop(key, 0)
        self._refs.pop(key, None)
        self.current -= size

    def start(self, *modules: torch.nn.Module) -> None:
        """Count what already lives in ``modules`` (parameters, buffers) before the tracked work begins."""
        for module in modules:
            for tensor in [*module.parameters(), *module.buffers()]:
                self._count(tensor.detach())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._count(leaf)
        return out

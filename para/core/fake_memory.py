"""Memory counted on tensors that have shapes but no data: what a model needs, known before it is loaded.

A model is built on the meta device (every shape, no memory), then its parameters become *fake* tensors
(`torch._subclasses.FakeTensorMode`: meta storage, but they report a real device, so the dispatcher takes the
same paths as on that device: autocast casts, the flash-attention kernel of `scaled_dot_product_attention`,
which on plain meta tensors falls back to the math kernel and would count every attention matrix).

`LiveBytes` then follows every tensor storage an operation creates, from its creation until Python frees it
(a finalizer on the storage, which autograd keeps alive while it saves it for backward), so its peak is the
high-water mark of a perfect allocator: activations kept for backward, gradients, optimizer state and every
transient of the operations that ran under it. Parameters that existed before are not counted (they are the
resident weights, counted by `storage_bytes`).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode


def storage_key(tensor: Tensor) -> int:
    """Identity of a tensor's storage (views share it)."""
    return tensor.untyped_storage()._cdata


def storage_bytes(tensors: Iterable[Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors` (a view and its base count once)."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        seen.setdefault(storage_key(tensor), tensor.untyped_storage().nbytes())
    return sum(seen.values())


def module_bytes(module: nn.Module) -> int:
    """Parameters and buffers of `module`, each storage once."""
    return storage_bytes([*module.parameters(), *module.buffers()])


class LiveBytes(TorchDispatchMode):
    """`with LiveBytes(ignore=model_tensors) as m: ...`: `m.live`, `m.peak` bytes of storages created inside."""

    def __init__(self, ignore: Iterable[Tensor] = ()):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._known = {storage_key(t) for t in ignore}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in pytree.tree_leaves(out):
            if isinstance(leaf, Tensor):
                self._track(leaf)
        return out

    def _track(self, tensor: Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self._known:  # a view, an in-place result, or a parameter
            return
        nbytes = storage.nbytes()
        self._known.add(key)
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, nbytes)

    def _free(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._known.discard(key)

    def restart_peak(self) -> None:
        """Start a new peak at what is alive now."""
        self.peak = self.live


def make_fake(module: nn.Module, mode: FakeTensorMode, device: torch.device | str = "cpu") -> dict[int, Tensor]:
    """Replace, in place, every meta parameter and buffer of `module` by a fake tensor on `device`.

    Returns {id(old parameter): new parameter}, to translate lists of parameters taken before (a method's
    trainable parameters). Tensors shared between modules stay shared; a view stays a view of its base.
    """
    device = torch.device(device)
    converted: dict[int, Tensor] = {}

    def fake(tensor: Tensor) -> Tensor:
        if id(tensor) not in converted:
            if not tensor.is_meta:
                raise ValueError(f"make_fake expects meta tensors, got one on {tensor.device}")
            new = mode.fake_tensor_converter.from_meta_and_device(mode, tensor, device)
            if isinstance(tensor, nn.Parameter):
                new = nn.Parameter(new, requires_grad=tensor.requires_grad)
            converted[id(tensor)] = new
        return converted[id(tensor)]

    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None:
                sub._parameters[name] = fake(param)
        for name, buffer in list(sub._buffers.items()):
            if buffer is not None:
                sub._buffers[name] = fake(buffer)
    return converted

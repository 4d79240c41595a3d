"""Methods that wrap each selected Linear/Conv2d in a layer adding a trainable weight change ΔW.

Shared by `svdiff` and `para_authors` (PAPER.md §5, §7): select the layers of a subset (para.core.subsets), wrap
each, train the wrappers' own parameters, save them under `<module name>.<parameter name>`, and for sampling
bake W0 + ΔW into the frozen weight (`merge`) and take it out again afterwards (`unmerge`), as PaRa does.
While merged, the wrappers are parked outside the UNet and the bare base layers (holding the merged weights) sit
in their place, so sampling runs the very modules of the base model: no wrapper call per layer (issue 8's "merged
sampling costs the same as the base model").
A method built on this is a `wrap()` and a `validate_config()`; everything else is here.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from para.core.method import Method
from para.core.subsets import check_subset, select_modules
from para.layers import flat_weight, swap_weight


def apply_weight(base: nn.Linear | nn.Conv2d, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`base`'s operation (its stride, padding, dilation, groups for a conv) with another weight and bias."""
    if isinstance(base, nn.Linear):
        return F.linear(x, weight, bias)
    return F.conv2d(x, weight, bias, base.stride, base.padding, base.dilation, base.groups)


class DeltaLayer(nn.Module):
    """A frozen nn.Linear / nn.Conv2d plus a trainable ΔW; subclasses define `delta_weight` and `adapted_forward`."""

    def __init__(self, base: nn.Linear | nn.Conv2d):
        super().__init__()
        if not isinstance(base, nn.Linear | nn.Conv2d):
            raise TypeError(f"{type(self).__name__} adapts nn.Linear and nn.Conv2d, not {type(base).__name__}")
        if isinstance(base, nn.Conv2d) and base.padding_mode != "zeros":
            raise NotImplementedError(f"{type(self).__name__} supports zero-padded convolutions (all of SDXL's)")
        self.base = base
        self.merged = False
        self._w0: Tensor | None = None  # W0 itself while merged, put back exactly by unmerge (see swap_weight)

    def delta_weight(self) -> Tensor:
        """ΔW as an m × n matrix (a conv kernel flattened to c_out × (c_in·k²)), differentiable."""
        raise NotImplementedError

    def adapted_forward(self, x: Tensor) -> Tensor:
        """(W0 + ΔW) x + b, computed however is cheapest for the method."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) if self.merged else self.adapted_forward(x)

    def adapted_weight(self) -> Tensor:
        """W0 + ΔW in the layer's weight shape, float32 (for oracles and merging)."""
        w = flat_weight(self.base).float()
        return (w + self.delta_weight().float().to(w.device)).reshape(self.base.weight.shape)

    @torch.no_grad()
    def merge(self) -> None:
        """Bake W0 + ΔW into the frozen weight: sampling then costs exactly the base model."""
        if not self.merged:
            self._w0 = swap_weight(self.base, self.adapted_weight())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Put W0 back, exactly (W − ΔW in a bf16 weight would round W0 afresh at every validation grid)."""
        if self.merged:
            swap_weight(self.base, self._w0)
            self._w0 = None
            self.merged = False


class LayerwiseMethod(Method):
    """A method that replaces every layer of `cfg.subset` by `wrap(name, layer)`; its config needs `subset`."""

    layer_type: type[DeltaLayer] = DeltaLayer

    def __init__(self, cfg: Any, base_model: str):
        super().__init__(cfg, base_model)
        self.names: list[str] = []
        # name → wrapper while the merged base layers stand in the UNet (between prepare/finish_sampling)
        self._parked: dict[str, DeltaLayer] = {}

    @classmethod
    def validate_config(cls, cfg: Any) -> None:
        check_subset(cfg.subset)

    def wrap(self, name: str, module: nn.Linear | nn.Conv2d) -> DeltaLayer:
        raise NotImplementedError

    def attach(self, unet: nn.Module) -> list[nn.Parameter]:
        self.validate_config(self.cfg)
        unet.requires_grad_(False)
        params = []
        for name, module in select_modules(unet, self.cfg.subset).items():
            layer = self.wrap(name, module)
            unet.set_submodule(name, layer)
            self.names.append(name)
            params += list(layer.parameters(recurse=False))  # the wrapper's own tensors, never the base's
        return params

    def detach(self, unet: nn.Module) -> None:
        if self._parked:
            self.finish_sampling(unet)
        for name, layer in self.layers(unet).items():
            layer.unmerge()  # W0 itself, bit for bit
            unet.set_submodule(name, layer.base)
        self.names = []

    def layer_names(self) -> list[str]:
        return self.names

    def layers(self, unet: nn.Module) -> dict[str, DeltaLayer]:
        """The wrappers by module name (also while parked for merged sampling)."""
        layers = {
            name: self._parked[name] if name in self._parked else unet.get_submodule(name)
            for name in self.layer_names()
        }
        if not all(isinstance(layer, self.layer_type) for layer in layers.values()):
            raise RuntimeError(f"{self.name}.layers() called on a UNet this instance did not attach to")
        return layers

    def state_dict(self, unet: nn.Module) -> dict[str, Tensor]:
        return {
            f"{name}.{key}": p
            for name, layer in self.layers(unet).items()
            for key, p in layer.named_parameters(recurse=False)
        }

    def load_state_dict(self, unet: nn.Module, state: dict[str, Tensor]) -> None:
        expected = self.state_dict(unet)
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"{self.name} state does not fit this UNet: missing {missing[:3]}…, unexpected {unexpected[:3]}…"
            )
        with torch.no_grad():
            for key, param in expected.items():
                if state[key].shape != param.shape:
                    raise ValueError(f"{key}: saved shape {tuple(state[key].shape)} != {tuple(param.shape)} here")
                param.copy_(state[key])

    def summary(self) -> dict[str, Any]:
        return {"layers": len(self.names)}

    def prepare_for_sampling(self, unet: nn.Module, merge: bool) -> bool:
        if merge:
            for name, layer in self.layers(unet).items():
                layer.merge()
                if name not in self._parked:
                    unet.set_submodule(name, layer.base)
                    self._parked[name] = layer
        return merge

    def finish_sampling(self, unet: nn.Module) -> None:
        for name, layer in self._parked.items():
            if unet.get_submodule(name) is not layer.base:
                raise RuntimeError(f"{self.name}.finish_sampling() on a UNet whose {name} is not the merged layer")
            unet.set_submodule(name, layer)
        self._parked = {}
        for layer in self.layers(unet).values():
            layer.unmerge()

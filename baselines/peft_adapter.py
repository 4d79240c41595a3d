"""Methods that are peft adapters injected into the UNet (`unet.add_adapter`): LoRA, LoHa, LoKr, OFT.

A subclass names its trainable tensors (`param_marker`, e.g. ".lora_") and builds its peft config for the exact
module names of the layer subset (`peft_config`); attaching, the state dict and loading are shared.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor, nn

from para.core.method import Method, check_rank_fits
from para.core.subsets import check_subset, select_modules

if TYPE_CHECKING:  # peft loads when an adapter is attached: composing a config or refusing a run never waits for it
    from peft import PeftConfig

ADAPTER = "default"


class PeftAdapter(Method):
    """Base of the peft methods. Subclasses set `param_marker` and implement `peft_config`."""

    param_marker: ClassVar[str]  # substring of the names of the adapter's trainable tensors
    factor_rank: ClassVar[bool] = False  # method.rank is the inner size of B·A factors of each layer's ΔW

    def __init__(self, cfg: Any, base_model: str):
        super().__init__(cfg, base_model)
        self.targets: list[str] = []

    @classmethod
    def validate_config(cls, cfg: Any) -> None:
        check_subset(cfg.subset)

    def target_pattern(self) -> str:
        """An anchored regex of the exact module names: peft full-matches a string target against each name."""
        return "^(" + "|".join(re.escape(n) for n in self.targets) + ")$"

    def peft_config(self) -> PeftConfig:
        """The peft config for `self.targets` (set by `attach`)."""
        raise NotImplementedError

    def peft_config_dict(self) -> dict[str, Any]:
        """The peft config as JSON-ready values (peft keeps target sets as Python sets)."""
        config = self.peft_config().to_dict()
        return {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}

    def select_targets(self, unet: nn.Module) -> list[str]:
        """Module names of the subset; a subclass refuses here the layers its peft tuner cannot adapt."""
        modules = select_modules(unet, self.cfg.subset)
        if self.factor_rank:
            check_rank_fits(self.cfg.rank, modules)
        return list(modules)

    def attach(self, unet: nn.Module) -> list[nn.Parameter]:
        self.validate_config(self.cfg)
        unet.requires_grad_(False)
        self.targets = self.select_targets(unet)
        unet.add_adapter(self.peft_config(), adapter_name=ADAPTER)
        params = [p for n, p in unet.named_parameters() if self.param_marker in n]
        for p in params:  # trainable tensors in fp32 even when the frozen weights are bf16 (diffusers example)
            p.data = p.data.float()
            p.requires_grad_(True)
        return params

    def detach(self, unet: nn.Module) -> None:
        unet.unload_lora()  # diffusers: every peft layer (LoRA, LoHa, LoKr, OFT) replaced by its base layer
        self.targets = []

    def state_dict(self, unet: nn.Module) -> dict[str, Tensor]:
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(unet, adapter_name=ADAPTER)

    def load_state_dict(self, unet: nn.Module, state: dict[str, Tensor]) -> None:
        expected = self.state_dict(unet)
        if set(state) != set(expected):
            raise ValueError(
                f"{self.name} state does not fit this UNet: {len(state)} tensors given, {len(expected)} expected"
            )
        for key, tensor in state.items():
            if tensor.shape != expected[key].shape:
                raise ValueError(f"{key}: saved shape {tuple(tensor.shape)} != {tuple(expected[key].shape)} here")
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(unet, state, adapter_name=ADAPTER)
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"{self.name} state has keys this UNet lacks: {result.unexpected_keys[:3]}")

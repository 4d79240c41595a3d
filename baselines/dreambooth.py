"""DreamBooth baseline: full fine-tuning of the UNet (text encoders frozen unless `train_text_encoder`).

Memory on SDXL (2.57 B UNet parameters): fp32 master weights 10.3 GB + fp32 grads 10.3 GB + AdamW moments
20.5 GB before activations; `make plan` counts it all (docs/resources.md). It trains with the shared AdamW (the
reading, conf/method/dreambooth.yaml): an 80 GB card; where that does not fit, the preflight names gradient
checkpointing, 8-bit AdamW and Adafactor. The saved file holds the whole UNet in `save_dtype`.

Sampling form: the trained modules in the base model's weights dtype (bf16 on GPU), the dtype the pipeline feeds
them and the one the saved file reloads in. After training (`end_training`) the fp32 master is cast down for good;
a validation grid during training casts down for the grid only, with the master waiting on the CPU, so training
continues from unrounded weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from para.core.method import Method
from para.core.models import resolve_dtype

TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


@dataclass
class DreamBoothMethodConfig:
    name: str = "dreambooth"
    lr: float = 5e-6  # reading: the DreamBooth paper's SD fine-tuning rate
    train_text_encoder: bool = False  # paper's baseline: UNet only (reading)
    master_dtype: str = "float32"  # dtype of the trained weights; bf16 saves memory but rounds away small updates
    save_dtype: str = "auto"  # auto: the base model's weights dtype (bf16 on GPU); float32 | bfloat16 | float16


class DreamBooth(Method):
    name = "dreambooth"
    Config = DreamBoothMethodConfig
    trains_base_weights = True

    def __init__(self, cfg: Any, base_model: str):
        super().__init__(cfg, base_model)
        self.text_encoders: dict[str, nn.Module] = {}
        self.weights_dtype: torch.dtype | None = None
        self._master: list[tuple[Tensor, Tensor]] = []  # (parameter or buffer, its master values on the CPU)

    @classmethod
    def validate_config(cls, cfg: Any) -> None:
        for key in ("master_dtype", "save_dtype"):
            resolve_dtype(getattr(cfg, key), torch.device("cpu"))

    def attach(self, unet: nn.Module) -> list[nn.Parameter]:
        self.weights_dtype = unet.dtype
        master = resolve_dtype(self.cfg.master_dtype, unet.device)
        if unet.dtype != master:
            unet.to(master)
        unet.requires_grad_(True)
        return list(unet.parameters())

    def detach(self, unet: nn.Module) -> None:
        """Frozen again, in the base weights' dtype; the trained values stay (the caller restores its copy)."""
        self.end_training(unet)
        for module in (unet, *self.text_encoders.values()):
            module.requires_grad_(False)
        self.text_encoders = {}

    def attach_text_encoders(self, pipe: Any) -> list[nn.Parameter]:
        if not self.cfg.train_text_encoder:
            return []
        params = []
        for name in TEXT_ENCODERS:
            encoder = getattr(pipe, name)
            encoder.to(resolve_dtype(self.cfg.master_dtype, encoder.device)).requires_grad_(True)
            self.text_encoders[name] = encoder
            params += list(encoder.parameters())
        return params

    def state_dict(self, unet: nn.Module) -> dict[str, Tensor]:
        state = {f"unet.{k}": v for k, v in unet.state_dict().items()}
        for name, encoder in self.text_encoders.items():
            state.update({f"{name}.{k}": v for k, v in encoder.state_dict().items()})
        return state

    def load_state_dict(self, unet: nn.Module, state: dict[str, Tensor]) -> None:
        modules = {"unet": unet, **self.text_encoders}
        for prefix, module in modules.items():
            part = {k.removeprefix(f"{prefix}."): v for k, v in state.items() if k.startswith(f"{prefix}.")}
            own = module.state_dict()
            for key, tensor in part.items():
                if key in own and own[key].shape != tensor.shape:
                    raise ValueError(f"{prefix}.{key}: saved shape {tuple(tensor.shape)} != {tuple(own[key].shape)}")
            module.load_state_dict({k: v.to(own[k].dtype) for k, v in part.items() if k in own}, strict=True)
        unknown = {k.split(".", 1)[0] for k in state} - set(modules)
        if unknown:
            raise ValueError(f"DreamBooth state holds modules this run does not train: {sorted(unknown)}")

    def to_saved(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.cfg.save_dtype == "auto":
            dtype = self.weights_dtype or torch.float32
        else:
            dtype = resolve_dtype(self.cfg.save_dtype, torch.device("cpu"))
        return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}

    def summary(self) -> dict[str, Any]:
        return {"trains": ["unet", *self.text_encoders]}

    def _off_sampling_dtype(self, unet: nn.Module) -> list[nn.Module]:
        """The trained modules not (yet) in the base weights' dtype."""
        dtype = self.weights_dtype or unet.dtype
        return [m for m in (unet, *self.text_encoders.values()) if m.dtype != dtype]

    def prepare_for_sampling(self, unet: nn.Module, merge: bool) -> bool:
        modules = self._off_sampling_dtype(unet)
        # exact copies: a bf16 round trip would round away the small updates the fp32 master exists to keep
        tensors = [t for m in modules for t in (*m.parameters(), *m.buffers()) if t.is_floating_point()]
        self._master = [(t, t.detach().to("cpu", copy=True)) for t in tensors]
        for module in modules:
            module.to(self.weights_dtype)
        return False

    def finish_sampling(self, unet: nn.Module) -> None:
        for tensor, master in self._master:
            tensor.data = master.to(tensor.device)  # same Parameter objects: the optimizer's state still fits
        self._master = []

    def end_training(self, unet: nn.Module) -> None:
        for module in self._off_sampling_dtype(unet):
            module.to(self.weights_dtype)

"""What the trainer knows about a method: a small object that changes the UNet in place.

The trainer never imports PaRa, LoRA or DreamBooth. It calls `attach` (freeze, wrap, return the tensors to
optimize), `state_dict` / `load_state_dict` (the smallest state that rebuilds the method, for checkpoints and
the saved adapter) and the sampling hooks. Adding a method = one module with a `Method` subclass and its
`Config` dataclass, one `conf/method/<name>.yaml`, one line in `para/run/registry.py`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, ClassVar

from omegaconf import DictConfig, OmegaConf
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from para.core.io import atomic_save_safetensors

FORMAT_VERSION = "1"


class AdapterFileError(ValueError):
    """An adapter file that is not a safetensors file, or was made for another method or base model."""


def as_dataclass(cls: type, cfg: Any) -> Any:
    """A method config (DictConfig, dict or dataclass) as an instance of `cls`."""
    if isinstance(cfg, cls):
        return cfg
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in dict(cfg).items() if k in names})


class Method:
    """Base class of every method. Subclasses set `name`, `Config` and implement the abstract hooks."""

    name: ClassVar[str]
    Config: ClassVar[type]
    # True for a method that trains the base weights themselves (DreamBooth): `detach` cannot give the base model
    # back, whoever runs the next cell on the same UNet restores its weights from a copy (para.run.worker).
    trains_base_weights: ClassVar[bool] = False

    def __init__(self, cfg: Any, base_model: str):
        self.cfg = as_dataclass(self.Config, cfg)
        self.base_model = base_model

    @classmethod
    def validate_config(cls, cfg: Any) -> None:
        """Raise ValueError for out-of-range hyper-parameters (names the key, value and allowed range)."""

    # --- training -------------------------------------------------------------------------------------
    def attach(self, unet: nn.Module) -> list[nn.Parameter]:
        """Freeze what must not train, change the UNet in place, return the parameters to optimize."""
        raise NotImplementedError

    def state_dict(self, unet: nn.Module) -> dict[str, Tensor]:
        raise NotImplementedError

    def load_state_dict(self, unet: nn.Module, state: dict[str, Tensor]) -> None:
        raise NotImplementedError

    def detach(self, unet: nn.Module) -> None:
        """Take the method out of the UNet it is attached to, leaving the base model's own modules, frozen (the
        weights too, unless `trains_base_weights`), so that another method can be attached to the same UNet."""
        raise NotImplementedError(f"{self.name} cannot be detached from its UNet")

    def summary(self) -> dict[str, Any]:
        """Facts worth recording with the run (e.g. effective rank per layer)."""
        return {}

    def attach_notes(self) -> list[str]:
        """What the user should know about how `attach` fitted the settings to the model (e.g. a rank that every
        layer caps); the preflight says them as warnings."""
        return []

    # --- sampling -------------------------------------------------------------------------------------
    def prepare_for_sampling(self, unet: nn.Module, merge: bool) -> bool:
        """Put the UNet in its inference form (e.g. merge weights, set the LoRA scale); True if weights merged."""
        return False

    def finish_sampling(self, unet: nn.Module) -> None:
        """Undo `prepare_for_sampling` so training can continue."""

    def end_training(self, unet: nn.Module) -> None:
        """Training is over (or was loaded from the adapter file): drop what only training needs, leaving the model
        in its sampling dtype. Nothing to drop for adapters; DreamBooth leaves its fp32 master weights."""

    # --- files ----------------------------------------------------------------------------------------
    def metadata(self) -> dict[str, str]:
        """Everything needed to rebuild the method on a fresh base model, as safetensors string metadata."""
        return {
            "para_format": "para-adapter",
            "para_format_version": FORMAT_VERSION,
            "method": self.name,
            "base_model": self.base_model,
            "config": json.dumps(dataclasses.asdict(self.cfg), sort_keys=True),
            "summary": json.dumps(self.summary(), sort_keys=True),
        }

    def to_saved(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """State as written to the adapter file (LoRA: diffusers' key format, so `load_lora_weights` reads it)."""
        return state

    def from_saved(self, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """Inverse of `to_saved`."""
        return tensors

    def save(self, unet: nn.Module, path: str | Path) -> Path:
        state = {k: v.detach().contiguous() for k, v in self.to_saved(self.state_dict(unet)).items()}
        return atomic_save_safetensors(state, Path(path), metadata=self.metadata())

    def load_file(self, unet: nn.Module, path: str | Path) -> dict[str, str]:
        """Load an adapter file saved by `save` onto a UNet this method is attached to; returns its metadata."""
        tensors, metadata = read_adapter_file(path)
        check_adapter_metadata(path, metadata, self.name, self.base_model)
        self.load_state_dict(unet, self.from_saved(tensors))
        return metadata

    def attach_text_encoders(self, pipe: Any) -> list[nn.Parameter]:
        """Parameters of the text encoders to train (none by default; the trainer then caches the prompt)."""
        return []


def check_range(ok: bool, key: str, value: Any, allowed: str, finite: bool = True) -> None:
    """Raise ValueError naming the setting, its value and what it accepts, unless `ok` (and, with `finite`, the
    value is no nan or inf: `method.init_std=inf` passes `> 0` and fails mid-run)."""
    if finite and isinstance(value, float) and not math.isfinite(value):
        ok = False
    if not ok:
        raise ValueError(f"{key}={value!r} is out of range; expected {allowed}")


def check_rank(cfg: Any) -> None:
    """`method.rank` must be a positive integer (every low-rank method's first check)."""
    check_range(cfg.rank > 0, "method.rank", cfg.rank, "an integer > 0")


def check_rank_fits(rank: int, modules: dict[str, nn.Module]) -> None:
    """Refuse a factor rank above what any of `modules` can hold: ΔW = B·A of an m × n layer (a conv kernel
    flattened to n = c_in·k²) has rank ≤ min(m, n), so a larger rank only adds parameters (and can ask for more
    memory than any machine has: method.rank=100000)."""
    sizes = [min(m.weight.shape[0], m.weight[0].numel()) for m in modules.values() if hasattr(m, "weight")]
    if sizes and rank > max(sizes):
        raise ValueError(
            f"method.rank={rank} is above the rank any adapted layer's weight change can have (at most "
            f"min(d_out, d_in) = {max(sizes)} here); ask for method.rank <= {max(sizes)}"
        )


def check_alpha(cfg: Any) -> None:
    """`method.alpha`: null (= rank, scale 1) or > 0 (a negative alpha would flip the adapter's update)."""
    check_range(cfg.alpha is None or cfg.alpha > 0, "method.alpha", cfg.alpha, "null (= rank) or a number > 0")


def read_adapter_file(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors adapter; anything else (e.g. a pickle) is refused, never loaded."""
    path = Path(path)
    if not path.is_file():
        raise AdapterFileError(f"adapter file {path} does not exist")
    if path.suffix != ".safetensors":
        raise AdapterFileError(
            f"{path} is not a .safetensors file; adapters are only read from safetensors (pickles can run code)"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError) as err:
        raise AdapterFileError(f"{path} is not a valid safetensors file ({err}); is it truncated?") from err
    return tensors, metadata


def safetensors_problem(path: str | Path) -> str | None:
    """Why `path` is not a whole safetensors file (its header is read, not its tensors), or None."""
    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError, ValueError) as err:
        return f"not a whole safetensors file: {err}"
    return None


def check_adapter_metadata(path: str | Path, metadata: dict[str, str], method: str, base_model: str) -> None:
    """Refuse an adapter made for another method or another base model, naming both."""
    found_method = metadata.get("method")
    if found_method != method:
        raise AdapterFileError(f"{path} holds a {found_method!r} adapter, but method {method!r} was asked for")
    found_base = metadata.get("base_model")
    if found_base != base_model:
        raise AdapterFileError(
            f"{path} was trained on base model {found_base!r}, but the model here is {base_model!r}"
        )

"""Combining trained adapters without retraining (PAPER.md §5.2–5.3).

Several PaRa adapters (one per subject), each removing the directions Q_i = qr(B_i) from a layer's output space:

    concat      W = (I − QQᵀ) W0,  Q = orthonormal basis of [Q1, Q2, …], at most ⌊γ·d_out⌋ columns (default)
    sequential  W = (I − Q2Q2ᵀ)(I − Q1Q1ᵀ) W0
    additive    W = W0 − Q1Q1ᵀW0 − Q2Q2ᵀW0       (what the authors' script does)

All three agree when the Q_i are mutually orthogonal and the cap does not bind. The combined adapter is a
`CombinedPaRa` method: a PaRa whose bases are fixed buffers, saved as safetensors (`<layer>.para_Q<i>`) with
the mode, γ and source files in its metadata, and loaded with `CombinedPaRa.load(unet, path, base_model)`.

PaRa with a LoRA (`s` = the LoRA's scale, ΔW = BA · alpha/r loaded through diffusers/peft, never converted
by hand): `para_then_lora` gives (I − QQᵀ)W0 + s·ΔW (the paper's working order), `lora_then_para` gives
(I − QQᵀ)(W0 + s·ΔW) (the order the paper reports as "severely degrading").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from para.adapter import PaRa, effective_rank, unwrap_merged
from para.core.method import AdapterFileError, as_dataclass, check_adapter_metadata, read_adapter_file
from para.layers import PaRaLayer, flat_weight, orthonormal_basis, out_features

MODES = ("concat", "sequential", "additive")
NAME = "para_combined"
# A candidate direction whose residual after orthogonalisation is below this (relative to its unit norm) is
# already spanned by the directions kept: overlapping subjects remove it once, and it never becomes noise.
SPAN_TOL = 1e-6


def _work_dtype(t: Tensor) -> torch.dtype:
    """float32 for half-precision tensors (projections are not reliable in bf16/fp16), float64 kept as is."""
    return torch.promote_types(t.dtype, torch.float32)


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown combination mode {mode!r}; expected one of {list(MODES)}")


def union_basis(bases: list[Tensor], cap: int | None = None, tol: float = SPAN_TOL) -> Tensor:
    """Orthonormal basis of span(Q1, Q2, …), at most `cap` columns, in the dtype of the first basis.

    Gram–Schmidt with re-orthogonalisation in float64 rather than one QR of [Q1, Q2]: QR of a column set that
    is linearly dependent (two subjects sharing a direction) returns arbitrary unit columns for the dependent
    ones, which would remove directions nobody learned. Columns are taken round-robin (Q1[:,0], Q2[:,0],
    Q1[:,1], …), so a binding cap trims every adapter evenly instead of dropping the last one. When nothing is
    dependent and the cap does not bind, the span (hence the projector QQᵀ) equals that of qr([Q1, Q2]).
    """
    if not bases:
        raise ValueError("union_basis needs at least one basis")
    rows = {b.shape[0] for b in bases}
    if len(rows) != 1:
        raise ValueError(f"bases of one layer must have the same number of rows, got {sorted(rows)}")
    limit = sum(b.shape[1] for b in bases) if cap is None else cap
    columns = [b[:, j] for j in range(max(b.shape[1] for b in bases)) for b in bases if j < b.shape[1]]
    kept: list[Tensor] = []
    for column in columns:
        if len(kept) >= limit:
            break
        v = column.double()
        norm0 = v.norm()
        for _ in range(2):  # "twice is enough" (Kahan–Parlett): one pass loses orthogonality in float arithmetic
            if kept:
                u = torch.stack(kept, dim=1)
                v = v - u @ (u.T @ v)
        if v.norm() > tol * norm0:
            kept.append(v / v.norm())
    return torch.stack(kept, dim=1).to(bases[0].dtype)


def combine_bases(bases: list[Tensor], mode: str, cap: int | None = None) -> list[Tensor]:
    """The bases a combined layer projects out, in order. `cap` (total rank) applies to `concat` only:
    sequential and additive are the paper's alternative formulas, kept exactly as written."""
    check_mode(mode)
    if mode == "concat":
        return [union_basis(bases, cap)]
    return list(bases)


def project_out(h: Tensor, bases: list[Tensor], mode: str, dim: int = -1) -> Tensor:
    """Apply the combined projection to features along `dim` (out features of W0 x, or conv channels)."""
    check_mode(mode)
    h = h.movedim(dim, -1)
    if mode == "additive":  # h − Σ Q_i Q_iᵀ h = h − [Q1 Q2][Q1 Q2]ᵀ h, one pass over h
        q = torch.cat(bases, dim=1).to(h.dtype)
        h = h - (h @ q) @ q.T
    else:
        for q in bases:
            q = q.to(h.dtype)
            h = h - (h @ q) @ q.T
    return h.movedim(-1, dim)


def reduce_weight(w0: Tensor, bases: list[Tensor], mode: str) -> tuple[Tensor, list[Tensor]]:
    """Merged weight M·W0 of an (m × n) matrix, and the coefficients C_i with W0 = W + Σ Q_i C_i (for unmerge)."""
    check_mode(mode)
    w, coeffs = w0, []
    for q in bases:
        q = q.to(w0.dtype)
        c = q.T @ (w0 if mode == "additive" else w)  # additive: every term projects the original W0
        w = w - q @ c
        coeffs.append(c)
    return w, coeffs


class CombinedPaRaLayer(PaRaLayer):
    """A PaRa layer whose removed directions are fixed buffers (one basis per combined term), nothing trains."""

    def __init__(self, base: nn.Linear | nn.Conv2d, bases: list[Tensor], mode: str):
        nn.Module.__init__(self)  # no trainable B: PaRaLayer's constructor would create one
        if not isinstance(base, nn.Linear | nn.Conv2d):
            raise TypeError(f"PaRa adapts nn.Linear and nn.Conv2d, not {type(base).__name__}")
        check_mode(mode)
        m = out_features(base)
        for q in bases:
            if q.shape[0] != m or not 0 < q.shape[1] < m:
                raise ValueError(f"a basis of shape {tuple(q.shape)} does not fit a layer with {m} outputs")
        self.base, self.mode, self.merged = base, mode, False
        self.n_bases = len(bases)
        for i, q in enumerate(bases):
            self.register_buffer(f"para_Q{i}", q.to(base.weight.device, _work_dtype(q)))
        self._coeffs: list[Tensor] | None = None

    @property
    def bases(self) -> list[Tensor]:
        return [getattr(self, f"para_Q{i}") for i in range(self.n_bases)]

    @property
    def rank(self) -> int:
        return sum(q.shape[1] for q in self.bases)

    def forward(self, x: Tensor) -> Tensor:
        if self.merged:
            return self.base(x)
        h = self._frozen_forward(x)
        y = project_out(h, self.bases, self.mode, dim=-1 if isinstance(self.base, nn.Linear) else 1)
        bias = self.base.bias  # not projected, as in PaRa
        if bias is None:
            return y
        return y + (bias if isinstance(self.base, nn.Linear) else bias[:, None, None]).to(y.dtype)

    def _weight(self) -> Tensor:
        w = flat_weight(self.base)
        return w.to(_work_dtype(w))

    def reduced_weight(self) -> Tensor:
        return reduce_weight(self._weight(), self.bases, self.mode)[0].reshape(self.base.weight.shape)

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        w, self._coeffs = reduce_weight(self._weight(), self.bases, self.mode)
        self.base.weight.copy_(w.reshape(self.base.weight.shape))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        w = self._weight()
        for q, c in zip(self.bases, self._coeffs, strict=True):
            w = w + q @ c
        self.base.weight.copy_(w.reshape(self.base.weight.shape))
        self._coeffs, self.merged = None, False


def saved_bases(state: dict[str, Tensor]) -> dict[str, list[Tensor]]:
    """The bases per layer of a saved combined adapter (`<layer>.para_Q<i>` tensors), in their order."""
    bases: dict[str, dict[int, Tensor]] = {}
    for key, q in state.items():
        layer, _, index = key.rpartition(".para_Q")
        if not layer or not index.isdigit():
            raise AdapterFileError(f"unexpected tensor {key!r} in a {NAME} adapter")
        bases.setdefault(layer, {})[int(index)] = q
    return {layer: [parts[i] for i in sorted(parts)] for layer, parts in bases.items()}


@dataclass
class CombinedConfig:
    name: str = NAME
    mode: str = "concat"
    gamma: float | None = 0.025  # cap on the total rank per layer (concat): ⌊d_out·γ⌋, as in training
    sources: list[str] = field(default_factory=list)  # the PaRa adapter files combined, in order


class CombinedPaRa(PaRa):
    """Several trained PaRa adapters as one method: built from their files, saved and loaded as one file."""

    name = NAME
    Config = CombinedConfig
    layer_type = CombinedPaRaLayer

    def __init__(self, cfg: Any, base_model: str):
        super().__init__(cfg, base_model)
        self.bases: dict[str, list[Tensor]] = {}

    @classmethod
    def validate_config(cls, cfg: Any) -> None:
        check_mode(cfg.mode)
        if cfg.gamma is not None and not 0 < cfg.gamma <= 1:
            raise ValueError(f"gamma={cfg.gamma} is out of range; expected (0, 1] or null to disable the cap")

    @classmethod
    def from_files(cls, paths: list[str | Path], mode: str = "concat", gamma: float | None = 0.025) -> CombinedPaRa:
        """Combine PaRa adapter files (same base model). Layers adapted by only some of them combine those."""
        if len(paths) < 2:
            raise ValueError(f"combining needs at least 2 PaRa adapters, got {len(paths)}")
        per_layer: dict[str, list[Tensor]] = {}
        base_model = None
        for path in paths:
            tensors, metadata = read_adapter_file(path)
            base_model = base_model or metadata.get("base_model")
            check_adapter_metadata(path, metadata, "para", base_model)
            for key, b in tensors.items():
                per_layer.setdefault(key.removesuffix(".para_B"), []).append(orthonormal_basis(b))
        combined = cls(CombinedConfig(mode=mode, gamma=gamma, sources=[str(p) for p in paths]), base_model)
        combined.validate_config(combined.cfg)
        for layer, bases in per_layer.items():
            m = bases[0].shape[0]
            cap = effective_rank(sum(q.shape[1] for q in bases), m, gamma)
            combined.set_bases(layer, combine_bases(bases, mode, cap) if len(bases) > 1 else bases)
        return combined

    def set_bases(self, layer: str, bases: list[Tensor]) -> None:
        self.bases[layer] = bases
        self.ranks[layer] = sum(q.shape[1] for q in bases)

    def attach(self, unet: nn.Module) -> list[nn.Parameter]:
        unet.requires_grad_(False)
        for name, bases in self.bases.items():
            module = unet.get_submodule(name)
            if isinstance(module, PaRaLayer):
                raise ValueError(f"{name} is already a PaRa layer; attach to a fresh base model")
            unet.set_submodule(name, CombinedPaRaLayer(module, bases, self.cfg.mode))
        return []  # nothing trains

    def layer_names(self) -> list[str]:
        return list(self.bases)

    def state_dict(self, unet: nn.Module | None = None) -> dict[str, Tensor]:
        """The bases themselves (the layers hold copies), so a combination can be saved without a UNet."""
        return {f"{name}.para_Q{i}": q.float() for name, bases in self.bases.items() for i, q in enumerate(bases)}

    def load_state_dict(self, unet: nn.Module, state: dict[str, Tensor]) -> None:
        """Rebuild the layers from a saved state (the file holds every basis, so no prior attach is needed)."""
        for layer, bases in saved_bases(state).items():
            self.set_bases(layer, bases)
        self.attach(unet)

    @classmethod
    def load(cls, unet: nn.Module, path: str | Path, base_model: str) -> CombinedPaRa:
        """A saved combined adapter on a fresh UNet (refuses another method's file or another base model)."""
        tensors, metadata = read_adapter_file(path)
        check_adapter_metadata(path, metadata, NAME, base_model)
        method = cls(as_dataclass(CombinedConfig, json.loads(metadata["config"])), base_model)
        method.load_state_dict(unet, tensors)
        return method


# --- PaRa together with an existing LoRA ---------------------------------------------------------------------

LORA_ORDERS = ("para_then_lora", "lora_then_para")


def lora_scale_of(path: str | Path, default: float = 1.0) -> float:
    """The sampling scale recorded in a LoRA file by our baseline (`lora_scale`), else `default`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:  # the metadata only: a LoRA file can be hundreds of MB
        metadata = f.metadata() or {}
    return float(metadata.get("lora_scale", default))


def apply_para(pipe: Any, para: PaRa, path: str | Path) -> None:
    """Attach a PaRa adapter file to `pipe.unet` and bake (I − QQᵀ)W into the weights (plain layers again)."""
    para.attach(pipe.unet)
    para.load_file(pipe.unet, path)
    unwrap_merged(pipe.unet)


def para_with_lora(
    pipe: Any,
    para: PaRa,
    para_path: str | Path,
    lora_path: str | Path,
    scale: float,
    order: str,
    adapter_name: str = "style",
) -> None:
    """Apply a PaRa adapter and a diffusers-format LoRA file to a fresh pipeline in the given order.

    para_then_lora: W = (I − QQᵀ)W0, then the LoRA is loaded on top and active at `scale` → (I − QQᵀ)W0 + s·ΔW.
    lora_then_para: the LoRA is loaded, fused at `scale` into W0 and unloaded, then PaRa projects the fused
    weight → (I − QQᵀ)(W0 + s·ΔW). Loading goes through `pipe.load_lora_weights` (diffusers/peft), which reads
    diffusers and peft files (tested) and kohya-style SDXL files (through diffusers' converter, not tested here).
    """
    if order not in LORA_ORDERS:
        raise ValueError(f"unknown order {order!r}; expected one of {list(LORA_ORDERS)}")
    if order == "para_then_lora":
        apply_para(pipe, para, para_path)
        pipe.load_lora_weights(str(lora_path), adapter_name=adapter_name)
        pipe.set_adapters([adapter_name], adapter_weights=[scale])
    else:
        pipe.load_lora_weights(str(lora_path), adapter_name=adapter_name)
        pipe.fuse_lora(lora_scale=scale, adapter_names=[adapter_name])
        pipe.unload_lora_weights()  # the fused weights stay; the LoRA wrappers go, so PaRa wraps plain layers
        apply_para(pipe, para, para_path)

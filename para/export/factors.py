"""Every exportable adapter as exact low-rank factors of its weight change: W − W0 = up · down, per layer.

    para           up = −Q           down = QᵀW0         Q = qr(B)          (PAPER.md §1: W = (I − QQᵀ)W0)
    para_combined  up = −[Q1 Q2 …]   down = [C1; C2; …]  W = W0 − Σ Qi Ci   (para/combine.py, any mode; rank ≤ Σ ri)
    para_authors   up = −U           down = D                               (baselines/para_authors.py)
    lora           up = s·(α/r)·B    down = A            s = the sampling scale the run used (2.2 in the paper)

So a file of these factors at scale 1 *is* the adapter, to float rounding: no approximation, no SVD. A conv
layer's factors are a k×k conv with r output channels (down, the base conv's kernel, stride and padding) and a
1×1 conv (up): ΔW = up · down with the kernel flattened to c_out × (c_in·k²), the layout of kohya's LoRA, of peft's
and of ComfyUI's. PaRa's `down` holds QᵀW0, so its file is tied to the base weights it was computed from.

Other methods change W0 by more than a rank-r product; they are refused with the reason (`NOT_LOW_RANK`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from para.combine import NAME as COMBINED
from para.combine import reduce_weight, saved_bases
from para.core.method import AdapterFileError
from para.layers import orthonormal_basis

# Why a method's adapter has no exact rank-r LoRA form (its ΔW is not a product of two thin factors).
NOT_LOW_RANK = {
    "dreambooth": "DreamBooth fine-tunes every weight, so W − W0 has full rank; its adapter file already is the "
    "whole UNet (load it with UNet2DConditionModel.load_state_dict)",
    "svdiff": "SVDiff shifts every singular value of W0: W − W0 = U diag(δ) Vᵀ has the rank of W0, not a low rank",
    "loha": "LoHa's ΔW = (A1B1) ⊙ (A2B2) is a Hadamard product of two rank-r matrices, of rank up to r², so no "
    "rank-r LoRA equals it",
    "lokr": "LoKr's ΔW = W1 ⊗ W2 has rank rank(W1)·rank(W2), far above the LoRA rank it would be exported at",
    "oft": "OFT rotates the inputs of W0: W − W0 = W0(Rᵀ − I) has the full rank of W0 in general",
}

# What each exportable method's factors are, written into every exported file.
EXACT = {
    "para": "exported from PaRa (exact: W − W0 = −Q QᵀW0, Q = qr(B))",
    COMBINED: "exported from combined PaRa adapters (exact: W − W0 = −Σ Qi Ci, rank ≤ Σ ri; para/combine.py)",
    "para_authors": "exported from PaRa in the authors' parametrization (exact: W − W0 = −U D)",
    "lora": "exported from LoRA (exact: the trained factors, α/r and the sampling scale baked into up)",
    "lora_attn": "exported from LoRA on every attention (exact: the trained factors, α/r and the sampling scale "
    "baked into up)",
}
LORA_METHODS = ("lora", "lora_attn")  # peft LoRA files (baselines/lora.py)


class NotExportable(ValueError):
    """An adapter whose weight change is not an exact low-rank product (or not an adapter of this project)."""


@dataclass
class LowRank:
    """ΔW = up @ down of one layer (float32), and the layer's weight shape (for the conv layouts)."""

    up: Tensor  # (m, r)
    down: Tensor  # (r, n·k_h·k_w)
    weight_shape: torch.Size

    @property
    def rank(self) -> int:
        return self.up.shape[1]

    def up_weight(self) -> Tensor:
        """up as a Linear weight (m, r), or a 1×1 conv kernel (m, r, 1, 1)."""
        if len(self.weight_shape) == 4:
            return self.up.reshape(*self.up.shape, 1, 1)
        return self.up

    def down_weight(self) -> Tensor:
        """down as a Linear weight (r, n), or a conv kernel with r output channels (r, c_in, k_h, k_w)."""
        return self.down.reshape(self.rank, *self.weight_shape[1:])

    def delta(self) -> Tensor:
        """ΔW in the layer's weight shape."""
        return (self.up @ self.down).reshape(self.weight_shape)


def check_exportable(method: str | None) -> None:
    if method in EXACT:
        return
    if method in NOT_LOW_RANK:
        raise NotExportable(
            f"a {method!r} adapter cannot be exported exactly as a LoRA: {NOT_LOW_RANK[method]}. "
            "`python -m para.export <run> --format merged` writes it as a whole diffusers UNet, which every tool reads"
        )
    raise NotExportable(
        f"{method!r} is not an adapter method this project exports; exportable: {sorted(EXACT)} "
        "(files exported already load as they are)"
    )


def low_rank_factors(
    tensors: dict[str, Tensor], metadata: dict[str, str], base_weight: Callable[[str], Tensor]
) -> dict[str, LowRank]:
    """Exact factors per layer of one of this project's adapter files (tensors + metadata as saved).

    `base_weight(name)` returns the frozen weight W0 of a UNet layer (PaRa's `down` is QᵀW0; the others only need
    its shape).
    """
    method = metadata.get("method")
    check_exportable(method)
    config = json.loads(metadata.get("config", "{}"))
    flat = {}  # name -> (up, down) as matrices
    if method == "para":
        for key, b in tensors.items():
            name = key.removesuffix(".para_B")
            flat[name] = _projection_factors([orthonormal_basis(b)], "sequential", base_weight(name))
    elif method == COMBINED:
        for name, bases in saved_bases(tensors).items():
            flat[name] = _projection_factors(bases, config["mode"], base_weight(name))
    elif method == "para_authors":
        for key, u in tensors.items():
            if key.endswith(".para_U"):
                name = key.removesuffix(".para_U")
                flat[name] = (-u.float(), tensors[f"{name}.para_D"].float())
    else:  # LORA_METHODS: peft keys under diffusers' `unet.` prefix (baselines/lora.py)
        scale = (config.get("alpha") or config["rank"]) / config["rank"] * float(metadata.get("lora_scale", 1.0))
        for key, a in tensors.items():
            if key.endswith(".lora_A.weight"):
                name = key.removeprefix("unet.").removesuffix(".lora_A.weight")
                b = tensors[key.replace(".lora_A.", ".lora_B.")]
                flat[name] = (b.float().flatten(1) * scale, a.float().flatten(1))
    if not flat:
        raise AdapterFileError(f"the {method!r} adapter holds no layer tensors")
    return {name: LowRank(up, down, base_weight(name).shape) for name, (up, down) in flat.items()}


def _projection_factors(bases: list[Tensor], mode: str, w0: Tensor) -> tuple[Tensor, Tensor]:
    """(−[Q1 Q2 …], [C1; C2; …]) with (PaRa's merged weight) = W0 − Σ Qi Ci, computed as PaRa merges (float32)."""
    w = w0.detach().reshape(w0.shape[0], -1).float()
    bases = [q.float().to(w.device) for q in bases]
    _, coeffs = reduce_weight(w, bases, mode)
    return -torch.cat(bases, dim=1), torch.cat(coeffs, dim=0)


def base_weight_of(unet: torch.nn.Module) -> Callable[[str], Tensor]:
    """W0 of a UNet layer by name, also under a peft LoRA wrapper (`base_layer`) or one of ours (`base`)."""

    def weight(name: str) -> Tensor:
        module = unet.get_submodule(name)
        for attr in ("base_layer", "base"):
            if isinstance(getattr(module, attr, None), torch.nn.Module):
                module = getattr(module, attr)
        return module.weight

    return weight

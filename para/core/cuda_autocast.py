"""CUDA's autocast rules on the CPU, for counting what a training step keeps on a card without a card.

Autocast decides per operator what its inputs are cast to, and the rules differ by device. Under CUDA's,
GroupNorm, LayerNorm, softmax, the nearest upsampling and the losses run in fp32 (each consumer of their output
then casts its own bf16 copy, which autograd keeps for backward), `cat` does not promote; under the CPU's the
norms run in the input's dtype. A count on CPU tensors with CPU rules is therefore not a count for a card
(issue 25: PaRa's activations 5.73 GiB by CPU rules, 7.05 by CUDA's at 1024 px).

Fake CUDA tensors would take CUDA's rules by themselves, but the autograd engine needs a real CUDA device for
their backward. So `cuda_rules()` registers, for as long as it is active, CUDA's policy for every operator
whose CUDA policy differs from its CPU one on the CPU's autocast key (`AutocastCPU`, a Python kernel per
operator): under `torch.autocast("cpu", dtype)` CPU tensors, fake or real, are then cast as CUDA tensors are.
The policies are CUDA's op lists of PyTorch's `aten/src/ATen/autocast_mode.h` (`AT_FORALL_LOWER_PRECISION_FP`,
`AT_FORALL_FP32`, `AT_FORALL_FP32_SET_OPT_DTYPE`, the `norm` overloads that append a dtype,
`AT_FORALL_PROMOTE`), and the CPU's of `autocast_mode.cpp`; `tests/test_cuda_autocast.py` checks both sets
against the operators the installed torch registers for `AutocastCUDA` and `AutocastCPU`, so a torch whose
lists moved fails there, not silently here.

Casts of fp32 leaf tensors that require grad (DreamBooth's fp32 master weights) to the lower precision are
cached per autocast region, as CUDA's autocast does; `CountingTrainer` clears the cache at the region's end.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

# CUDA's policies (overloads as registered; "" = the default overload)
LOWER = (
    "_convolution.deprecated _convolution conv1d conv2d conv3d conv_tbc conv_transpose1d conv_transpose2d.input "
    "conv_transpose3d.input convolution prelu addmm addmv addr matmul einsum mm mv linalg_vecdot linear addbmm "
    "baddbmm bmm chain_matmul linalg_multi_dot _thnn_fused_lstm_cell _thnn_fused_gru_cell lstm_cell gru_cell "
    "rnn_tanh_cell rnn_relu_cell _scaled_dot_product_flash_attention scaled_dot_product_attention "
    "cudnn_convolution cudnn_convolution_transpose _cudnn_rnn"
).split()
FP32 = (
    "acos asin cosh erfinv exp expm1 log log10 log2 log1p reciprocal rsqrt sinh tan pow.Tensor_Scalar "
    "pow.Tensor_Tensor pow.Scalar softplus layer_norm native_layer_norm group_norm rms_norm frobenius_norm.dim "
    "nuclear_norm nuclear_norm.dim cosine_similarity poisson_nll_loss cosine_embedding_loss nll_loss nll_loss2d "
    "hinge_embedding_loss kl_div l1_loss smooth_l1_loss huber_loss mse_loss margin_ranking_loss "
    "multilabel_margin_loss soft_margin_loss triplet_margin_loss multi_margin_loss "
    "binary_cross_entropy_with_logits dist pdist cdist renorm logsumexp linalg_matrix_sqrth upsample_nearest1d "
    "_upsample_nearest_exact1d upsample_nearest2d _upsample_nearest_exact2d upsample_nearest3d "
    "_upsample_nearest_exact3d upsample_linear1d upsample_bilinear2d _upsample_bilinear2d_aa upsample_trilinear3d "
    "upsample_bicubic2d _upsample_bicubic2d_aa"
).split()
FP32_SET_OPT_DTYPE = (
    "prod prod.dim_int softmax.int log_softmax.int cumprod cumsum linalg_vector_norm linalg_matrix_norm "
    "linalg_matrix_norm.str_ord sum sum.dim_IntList"
).split()
FP32_APPEND_DTYPE = {"norm.Scalar": "norm.ScalarOpt_dtype", "norm.ScalarOpt_dim": "norm.ScalarOpt_dim_dtype"}
PROMOTE = "addcdiv addcmul atan2 bilinear cross dot vdot grid_sampler index_put tensordot scatter_add".split()
BANNED = ["binary_cross_entropy"]  # CUDA refuses it under autocast (use binary_cross_entropy_with_logits)
CUDA_POLICY = {
    **dict.fromkeys(LOWER, "lower"),
    **dict.fromkeys(FP32, "fp32"),
    **dict.fromkeys(FP32_SET_OPT_DTYPE, "fp32_set_opt_dtype"),
    **dict.fromkeys(FP32_APPEND_DTYPE, "fp32_append_dtype"),
    **dict.fromkeys(PROMOTE, "promote"),
    **dict.fromkeys(BANNED, "banned"),
}
# The CPU's registrations whose policy CUDA shares (left to torch's own kernels); every other CPU registration
# is replaced by CUDA's policy, or by none ("pass") where CUDA has no autocast kernel for it.
CPU_SAME = (
    "_convolution.deprecated conv1d conv2d conv3d bmm mm linalg_vecdot baddbmm addmm addbmm linear matmul conv_tbc "
    "conv_transpose1d conv_transpose2d.input conv_transpose3d.input prelu scaled_dot_product_attention cdist "
    "mse_loss cosine_embedding_loss nll_loss nll_loss2d hinge_embedding_loss poisson_nll_loss smooth_l1_loss "
    "l1_loss huber_loss margin_ranking_loss soft_margin_loss triplet_margin_loss multi_margin_loss kl_div "
    "multilabel_margin_loss binary_cross_entropy_with_logits"
).split()

_KEY = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)
_CACHE: dict[int, tuple[Tensor, Tensor]] = {}  # id(fp32 leaf) -> (the leaf, its lower-precision copy)


def registered(key: str) -> list[str]:
    """Operators (`name` or `name.overload`) with a kernel for dispatch key `key` in the installed torch."""
    names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("aten::")]
    return sorted(n.removeprefix("aten::") for n in names if torch._C._dispatch_has_kernel_for_dispatch_key(n, key))


def _op(name: str):
    base, _, overload = name.partition(".")
    return getattr(getattr(torch.ops.aten, base), overload or "default")


def _eligible(value: Any) -> bool:
    return isinstance(value, Tensor) and value.is_floating_point() and value.dtype != torch.float64


def _cast(value: Any, dtype: torch.dtype) -> Any:
    if not _eligible(value) or value.dtype == dtype:
        return value
    cacheable = dtype != torch.float32 and value.dtype == torch.float32 and value.requires_grad
    if not (cacheable and value.is_leaf and not value._is_view()):
        return value.to(dtype)
    if id(value) not in _CACHE:
        _CACHE[id(value)] = (value, value.to(dtype))
    return _CACHE[id(value)][1]


def _cast_to(policy: str, args: tuple, kwargs: dict) -> torch.dtype:
    """The dtype `policy` casts the floating-point inputs to (`promote`: the widest of them)."""
    if policy == "promote":
        widest = any(t.dtype == torch.float32 for t in pytree.tree_leaves((args, kwargs)) if _eligible(t))
        return torch.float32 if widest else torch.get_autocast_dtype("cpu")
    return torch.float32 if policy == "fp32" else torch.get_autocast_dtype("cpu")


def _kernel(name: str, policy: str):
    """CUDA's `policy` for operator `name`, as a Python kernel for the CPU's autocast key."""
    op = _op(name)
    dtype_at = [a.name for a in op._schema.arguments].index("dtype") if policy == "fp32_set_opt_dtype" else -1

    def kernel(*args: Any, **kwargs: Any) -> Any:
        with torch._C._ExcludeDispatchKeyGuard(_KEY):  # below autocast: the casts are recorded by autograd
            first = args[0] if args else None
            if policy == "pass":
                return op(*args, **kwargs)
            if policy == "banned":
                raise RuntimeError(f"aten::{name} is unsafe to autocast on CUDA; use binary_cross_entropy_with_logits")
            if policy == "fp32_set_opt_dtype":  # an output dtype of float32 unless one was given
                given = args[dtype_at] if len(args) > dtype_at else kwargs.get("dtype")
                if _eligible(first) and given is None:
                    kwargs["dtype"] = torch.float32
                return op(*args, **kwargs)
            if policy == "fp32_append_dtype":  # norm: redispatched to its overload with an output dtype
                dtype = torch.float32 if _eligible(first) else first.dtype
                return _op(FP32_APPEND_DTYPE[name])(*args, **kwargs, dtype=dtype)
            dtype = _cast_to(policy, args, kwargs)
            args, kwargs = pytree.tree_map(lambda v: _cast(v, dtype), (args, kwargs))
            return op(*args, **kwargs)

    return kernel


def emulated() -> dict[str, str]:
    """{operator: the CUDA policy registered on AutocastCPU} for every operator whose policies differ."""
    cpu = set(registered("AutocastCPU"))
    plan = {name: policy for name, policy in CUDA_POLICY.items() if name not in CPU_SAME}
    plan.update({name: "pass" for name in cpu - set(CUDA_POLICY)})
    return plan


@contextmanager
def cuda_rules() -> Iterator[None]:
    """While active, `torch.autocast("cpu", dtype)` casts as `torch.autocast("cuda", dtype)` does (see above)."""
    library = torch.library.Library("aten", "IMPL")
    try:
        with warnings.catch_warnings():  # "overriding a previously registered kernel": that is the point
            warnings.simplefilter("ignore")
            for name, policy in emulated().items():
                try:
                    _op(name)
                except (AttributeError, RuntimeError):
                    continue  # an operator this torch does not have (the test compares the lists)
                library.impl(name, _kernel(name, policy), "AutocastCPU")
        yield
    finally:
        library._destroy()
        clear_cache()


def clear_cache() -> None:
    _CACHE.clear()

"""The resource plan for a CUDA card, counted without one (issue 25 item 6): CUDA's autocast rules, merged PaRa's
W0 beside its merged weights, the evaluation nets, cards as torch reports them, a shared card's free memory, and
the host RAM a checkpoint goes through."""

from __future__ import annotations

import dataclasses
import types

import pytest
import torch
import torch.nn.functional as F
from conftest import QUICK, compose_config
from torch import nn

from para.core.cuda_autocast import CPU_SAME, CUDA_POLICY, cuda_rules, registered
from para.run import plan
from para.run.plan_count import count_sampling, count_training
from para.run.plan_table import CARDS

GIB = 2**30


def test_the_rules_are_the_installed_torchs_autocast_operators():
    """Every operator with a CUDA autocast kernel in this torch has its policy here, and nothing else does; the
    CPU registrations left in place are CPU ones with CUDA's policy."""
    assert set(CUDA_POLICY) == set(registered("AutocastCUDA"))
    assert set(CPU_SAME) <= set(registered("AutocastCPU")) & set(CUDA_POLICY)


def _saved_copies(block: nn.Module, x: torch.Tensor, shape: tuple[int, ...]) -> set[int]:
    """Storages of the bf16 tensors of `shape` autograd saves for backward in `block(x)`, `x` aside."""
    storages: set[int] = set()
    own = x.untyped_storage()._cdata

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.dtype == torch.bfloat16 and tuple(t.shape) == shape and t.untyped_storage()._cdata != own:
            storages.add(t.untyped_storage()._cdata)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        block(x)
    return storages


class Attention(nn.Module):
    """LayerNorm, then three projections reading its output (a transformer block's q, k, v)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.q, self.k, self.v = nn.LayerNorm(16), nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.norm(x)
        return [h, self.q(h), self.k(h), self.v(h)]


def test_under_cudas_rules_norms_run_in_fp32_and_each_consumer_keeps_its_own_copy():
    block = Attention().to(torch.bfloat16)
    block.norm.requires_grad_(False)  # trained projections save their input for their weight's gradient
    x = torch.randn(4, 16, dtype=torch.bfloat16, requires_grad=True)
    assert block(x)[0].dtype == torch.bfloat16 and len(_saved_copies(block, x, (4, 16))) == 1  # the CPU's rules
    image = torch.randn(1, 32, 4, 4, dtype=torch.bfloat16)
    with cuda_rules():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert block(x)[0].dtype == torch.float32
            assert F.group_norm(image, 8).dtype == torch.float32
            assert F.interpolate(image, scale_factor=2.0, mode="nearest").dtype == torch.float32
            assert torch.softmax(image, -1).dtype == torch.float32
            assert block.q(x).dtype == torch.bfloat16
        assert len(_saved_copies(block, x, (4, 16))) == 3  # q, k and v each cast the fp32 output themselves
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert block(x)[0].dtype == torch.bfloat16  # the CPU's own rules are back


def test_cuda_rules_count_the_same_on_shapes_as_on_real_tensors():
    """A card's count (CUDA's rules, bf16) on fake tensors equals the same step on real CPU tensors under the
    same rules, but for mse_loss's 1 KiB CPU workspace (tests/test_plan.py)."""
    cfg = compose_config(*QUICK, "method=para", "device=cuda", "run_dir=unused", "plan.cache_dir=null")
    setting = plan.setting_of(cfg, plan.CUDA)
    assert (setting.device, setting.autocast, setting.weights_dtype) == ("cuda", "bfloat16", "bfloat16")
    fake, real = count_training(setting, cfg), count_training(setting, cfg, device="cpu")
    assert 0 <= real.activations - fake.activations <= 1024 and 0 <= real.step_peak - fake.step_peak <= 1024
    cpu_rules = count_training(dataclasses.replace(setting, device="cpu"), cfg)
    assert fake.activations > cpu_rules.activations  # fp32 norm outputs, one bf16 copy per consumer


def test_merged_para_sampling_counts_w0_beside_the_merged_weights():
    """The sampling form adds exactly the adapted layers' merged weights (W0 stays, to unmerge exactly)."""
    from para.adapter import PaRa
    from para.core.sdxl_architecture import build_models

    cfg = compose_config(*QUICK, "method=para", "run_dir=unused", "plan.cache_dir=null")
    setting = plan.setting_of(cfg, torch.device("cpu"))
    unet = build_models(setting.architecture, torch.float32)["unet"]
    method = PaRa(cfg.method, "plan")
    method.attach(unet)
    adapted = sum(layer.base.weight.numel() * 4 for layer in method.layers(unet).values())
    assert count_sampling(setting).sampling_form == adapted > 0
    assert count_sampling(dataclasses.replace(setting, sample_merge=False)).sampling_form == 0


@pytest.mark.slow
def test_table1_plan_counts_cudas_rules_and_merged_sampling():
    """The review's figures at 1024 px (issue 25): activations 7.05 GiB (PaRa) and 7.40 (LoRA) under CUDA's
    rules (the CPU's gave 5.73 and 6.17), merged PaRa sampling +1.42 GiB."""
    para = plan.estimate(plan.table1_config("para", "sdxl", 1024), plan.CUDA)
    lora = plan.estimate(plan.table1_config("lora", "sdxl", 1024), plan.CUDA)
    assert para["activations_gb"] == pytest.approx(7.05, abs=0.01)
    assert lora["activations_gb"] == pytest.approx(7.40, abs=0.01)
    assert para["sampling_form_gb"] == pytest.approx(1.42, abs=0.01) and lora["sampling_form_gb"] == 0


def test_cards_are_planned_at_the_size_torch_reports():
    """An A100 40GB reports 39.6 GiB, an 80 GB card 79.2: a run needing 39.8 GiB does not fit a "40 GB" card."""
    assert CARDS == {"24 GB": 23.6, "A100 40GB": 39.6, "80 GB": 79.2}
    row = plan._row("x", "", {"total_gb": 39.8}, list(CARDS.values()))
    assert (row["fits_23.6"], row["fits_39.6"], row["fits_79.2"]) == (False, False, True)


def _pretend_card(monkeypatch, free_gib: float, total_gib: float = 79.2) -> None:
    props = types.SimpleNamespace(total_memory=int(total_gib * GIB), name="NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda _device: props)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda _device=None: props.name)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda _device=None: (int(free_gib * GIB), props.total_memory))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda _device=None: 0)


def test_a_shared_cards_budget_is_its_free_memory(monkeypatch):
    _pretend_card(monkeypatch, free_gib=39.6)
    cfg = compose_config(*QUICK, "device=cuda", "run_dir=unused", "plan.cache_dir=null")
    budget, what = plan.memory_budget_gb(cfg, plan.CUDA)
    assert budget == pytest.approx(39.6) and "39.6 of its 79.2 GiB free" in what
    problem = plan.memory_problem(cfg, {"total_gb": 50.0, "peak_phase": "train"})
    assert "needs ~50.0 GiB" in problem and "39.6 of its 79.2 GiB free" in problem


def _cuda_plan(*overrides: str) -> tuple:
    cfg = compose_config(*QUICK, "device=cuda", "run_dir=unused", "plan.cache_dir=null", *overrides)
    return cfg, plan.estimate(cfg)


def test_scoring_counts_the_evaluation_nets_beside_the_model():
    """The nets `eval` loads (random weights here: the same architectures), counted on the meta device."""
    from eval.backbones import load_backbones
    from eval.clip_score import load_clip_score
    from eval.options import EvalOptions
    from para.core.fake_memory import module_bytes

    cfg, record = _cuda_plan("method=para")
    opts = EvalOptions.from_any(cfg.eval, device="cpu")
    nets = load_backbones(opts)
    loaded = [nets.dino.model, nets.clip.encode_image.__self__, nets.lpips.model]
    loaded.append(load_clip_score(opts.clip_score_model, opts.pretrained, "cpu").model)
    assert record["eval_nets_gb"] * GIB == sum(module_bytes(m) for m in loaded)
    assert record["eval_peak_gb"] > record["weights_gb"] + record["eval_nets_gb"]
    assert "eval_peak_gb" not in _cuda_plan("method=para", "eval.enabled=false")[1]


def test_a_run_on_a_card_needs_the_host_ram_its_checkpoints_go_through(monkeypatch, tmp_path):
    """DreamBooth with AdamW writes its moments through the host: the plan counts them and refuses a host
    without the RAM, before anything loads."""
    cfg, record = _cuda_plan("method=dreambooth", "train.optimizer=adamw", "eval.enabled=false")
    moments = 2 * 4 * record["trainable_params"] / GIB
    assert record["host_gb"] >= moments
    monkeypatch.setattr(plan, "ram_budget_gb", lambda: record["host_gb"] - 0.01)
    problems = plan.check(compose_config(*QUICK, "device=cuda", "method=dreambooth", "train.optimizer=adamw",
                                         "eval.enabled=false", "plan.cache_dir=null", "plan.gpu_memory_gb=80",
                                         f"run_dir={tmp_path / 'run'}"))  # fmt: skip
    assert len(problems) == 1 and "of host RAM" in problems[0] and "train.optimizer=adafactor" in problems[0]

"""The public Python API (`import para`): use a trained adapter in your own diffusers code, or export it.

    handle = para.load_adapter(pipe, "runs/para/dog/steps200-seed0/adapter.safetensors")
    image = pipe("a photo of sks dog in the snow").images[0]
    handle.remove()                      # the pipeline's weights are bit-for-bit the base weights again

`load_adapter` turns any adapter file of this project that has an exact LoRA form (PaRa, combined PaRa,
`para_authors`, our LoRA at its recorded sampling scale, and the files `python -m para.export` writes) into a peft
LoRA on the stock pipeline's UNet: nothing of the base model is changed, so removing it restores it exactly.
`export_lora` is `python -m para.export` (docs/adapters.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from para.core.method import AdapterFileError, read_adapter_file
from para.export.convert import export
from para.export.factors import base_weight_of, check_exportable, low_rank_factors
from para.export.formats import lora_config, peft_tensors
from para.export.hub import HubError, check_hub, push_files
from para.export.source import EXPORT_FORMAT, check_pipeline_base, open_source
from para.run.model_card import Exported, card_data, load_run, render_model_card
from para.run.registry import METHODS

ADAPTER_FORMAT = "para-adapter"  # `para_format` of a run's own adapter file (para.core.method)


@dataclass
class AdapterHandle:
    """An adapter applied to a pipeline by `load_adapter` (a peft LoRA named `name` in its UNet)."""

    pipe: Any
    name: str
    path: Path
    metadata: dict[str, str] = field(repr=False)
    removed: bool = False

    def set_scale(self, scale: float) -> None:
        """Strength of this adapter alone (1 = the trained adapter; other adapters keep theirs)."""
        from peft.tuners.lora import LoraLayer

        for module in self.pipe.unet.modules():
            if isinstance(module, LoraLayer):
                module.set_scale(self.name, scale)  # no-op on layers without this adapter

    def remove(self) -> None:
        """Take the adapter out; with no other LoRA left the UNet's modules are the plain base modules again."""
        if self.removed:
            return
        self.pipe.delete_adapters([self.name])
        if not getattr(self.pipe.unet, "peft_config", None):  # ours was the last one: unwrap the peft layers
            self.pipe.unet.unload_lora()
        self.removed = True


def _free_name(pipe: Any) -> str:
    taken = {name for names in pipe.get_list_adapters().values() for name in names}
    return next(f"para_{i}" for i in range(len(taken) + 1) if f"para_{i}" not in taken)


def load_adapter(
    pipe: Any,
    path: str | Path,
    scale: float = 1.0,
    *,
    adapter_name: str | None = None,
    base_model: str | None = None,
) -> AdapterHandle:
    """Apply an adapter file of this project to a stock `StableDiffusionXLPipeline`; returns a handle.

    Args:
        pipe: the base pipeline (its UNet's current weights are W0; PaRa's LoRA form is computed from them).
        path: a run's `adapter.safetensors` (para, para_combined, para_authors, lora) or an exported lora/kohya file.
        scale: strength; 1 is the trained adapter (our LoRA: at the scale its run sampled with, e.g. 2.2).
        adapter_name: the peft adapter name (default: the first free `para_<i>`).
        base_model: `pipe`'s base-model id when its `name_or_path` does not say it (e.g. loaded from a folder).

    Raises:
        AdapterFileError: not an adapter of this project, or made for another base model (both are named).
        NotExportable: a method without an exact LoRA form (SVDiff, LoHa, LoKr, OFT, DreamBooth), with the reason.
    """
    path = Path(path)
    tensors, metadata = read_adapter_file(path)
    kind = metadata.get("para_format")
    if kind not in (ADAPTER_FORMAT, EXPORT_FORMAT):
        raise AdapterFileError(
            f"{path} is not an adapter file of this project (no para metadata); a LoRA from elsewhere loads with "
            "pipe.load_lora_weights(path)"
        )
    if kind == EXPORT_FORMAT and metadata.get("para_export_format") == "merged":
        raise AdapterFileError(f"{path} is a merged UNet: load its folder with UNet2DConditionModel.from_pretrained")
    check_exportable(metadata.get("method"))
    check_pipeline_base(path, metadata.get("base_model"), pipe, base_model)
    name = adapter_name or _free_name(pipe)
    if kind == EXPORT_FORMAT:  # already a LoRA file at scale 1: stock diffusers reads it (kohya via its converter)
        pipe.load_lora_weights(str(path), adapter_name=name)
    else:
        factors = low_rank_factors(tensors, metadata, base_weight_of(pipe.unet))
        config = lora_config({layer: f.rank for layer, f in factors.items()})
        state = peft_tensors(factors, factors[next(iter(factors))].up.dtype, prefix="")
        pipe.unet.load_lora_adapter(state, prefix=None, adapter_name=name, metadata=config, _pipeline=pipe)
    handle = AdapterHandle(pipe, name, path, metadata)
    handle.set_scale(scale)
    return handle


def export_lora(
    source: str | Path,
    out: str | Path,
    format: str = "lora",  # the CLI's --format (shadows the builtin only here)
    dtype: str = "fp16",
    *,
    overwrite: bool = False,
    pipe: Any = None,
    base_model: str | None = None,
    device: str = "cpu",
    push_to_hub: str | None = None,
    private: bool | None = None,
    hub_endpoint: str | None = None,
    hub_token: str | None = None,
) -> Path:
    """`python -m para.export`: write `source`'s adapter as a `lora`, `kohya` or `merged` export (see
    `para.export.export` for the arguments); with `push_to_hub="<user>/<name>"` also upload it with the run's model
    card and sample images, in one commit. The hub is checked first: offline, nothing is exported or uploaded."""
    src = open_source(source)
    if push_to_hub:
        if src.run_dir is None:
            raise HubError("--push-to-hub needs a run folder: its model card and samples go with the file")
        check_hub(push_to_hub, hub_endpoint, hub_token)
    written = export(
        src, out, format, dtype, overwrite=overwrite, pipe=pipe, base_model=base_model, device=device, methods=METHODS
    )
    if push_to_hub:
        url = _push(src.run_dir, written, format, push_to_hub, private, hub_endpoint, hub_token)
        print(f"uploaded to {url}")
    return written


def _push(run_dir: Path, written: Path, fmt: str, repo_id: str, private, endpoint, token) -> str:
    cfg, metrics = load_run(run_dir)
    name = "unet" if fmt == "merged" else written.name
    card = render_model_card(run_dir, cfg, metrics, Exported(fmt, name, repo_id))
    files: dict[str, Path | bytes] = {"README.md": card.encode()}
    if fmt == "merged":
        files.update({f"unet/{f.name}": f for f in sorted(written.iterdir()) if f.is_file()})
    else:
        files[name] = written
    for item in card_data(cfg, run_dir).widget or []:  # the sample images the card shows
        files[item["output"]["url"]] = run_dir / item["output"]["url"]
    message = f"{cfg.method.name} adapter for {cfg.subject.name} (python -m para.export --format {fmt})"
    return push_files(repo_id, files, message, endpoint, token, private)

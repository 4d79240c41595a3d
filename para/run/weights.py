"""`make weights`: fetch exactly what the configured runs load into the local Hugging Face / open_clip caches.

    python -m para.run.weights [--dry-run] [overrides…]     # e.g. model.variant=fp16 (`make weights WEIGHTS_ARGS=…`)

The files come from the run config (`conf/`, plus overrides): the base model's `model.path` at `model.revision`,
only the weights `from_pretrained(variant=model.variant)` reads (SDXL 1.0 in fp16: ~6.9 GB instead of ~14 GB in
fp32, never the repository's `vae_1_0/`, ONNX, Flax, OpenVINO or single-file copies), `model.vae_path` instead of
the base VAE, the configs and tokenizers of `model.config_path` for a single-file checkpoint, and the evaluation
backbones (`eval.dino`, `eval.clip_arch`/`eval.clip_pretrained`, `eval.clip_score_model`), each weights file once:
the safetensors file where the repository has one, as the loaders pick it. `--dry-run` lists the files and their
sizes (from the hub, or from the local cache when offline) and downloads nothing.

Run it once on a machine with internet; afterwards runs work offline (HF_HUB_OFFLINE=1). Each item is tried on its
own and the summary says which ones failed and why, so a partial download is visible.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from para.core.models import SDXL_HUB_ID

# diffusers pipeline folder: component -> weights file stem (diffusers models / transformers models)
PIPELINE_WEIGHTS = {
    "unet": "diffusion_pytorch_model",
    "vae": "diffusion_pytorch_model",
    "text_encoder": "model",
    "text_encoder_2": "model",
}
PIPELINE_FILES = ["model_index.json", "scheduler/scheduler_config.json", "tokenizer/*", "tokenizer_2/*"]
# a transformers CLIP folder: configs, tokenizer, processor and the safetensors weights (not .bin / TF / Flax)
CLIP_PATTERNS = ["*.json", "*.txt", "model.safetensors"]


def weight_patterns(stem: str, variant: str | None) -> list[str]:
    """One model's safetensors as diffusers / transformers name them: whole, sharded, the shards' index."""
    v = f".{variant}" if variant else ""
    return [f"{stem}{v}.safetensors", f"{stem}-?????-of-?????{v}.safetensors", f"{stem}.safetensors.index{v}.json"]


def pipeline_patterns(variant: str | None, skip: tuple[str, ...] = ()) -> list[str]:
    """allow_patterns of an SDXL diffusers folder: configs, tokenizers and the weights of `variant` only."""
    patterns = list(PIPELINE_FILES)
    for component, stem in PIPELINE_WEIGHTS.items():
        if component not in skip:
            patterns += [f"{component}/config.json", *(f"{component}/{p}" for p in weight_patterns(stem, variant))]
    return patterns


CONFIG_PATTERNS = ["model_index.json", "*/config.json", "scheduler/scheduler_config.json", "tokenizer*/*"]


@dataclass
class HubItem:
    """A hub repository (or part of it) to fetch."""

    label: str
    repo: str
    revision: str | None = None
    patterns: list[str] | None = None  # None: every file
    # weights files of which only the first the repository has is fetched (safetensors before a pickle copy of the
    # same weights, as transformers' and open_clip's loaders choose)
    prefer: list[str] | None = None

    def selects(self, names: list[str]) -> list[str]:
        """Of a repository's `names`: the pattern matches and the first preferred file it has."""
        from huggingface_hub.utils import filter_repo_objects

        chosen = list(filter_repo_objects(names, allow_patterns=self.patterns))
        first = next((name for name in self.prefer or [] if name in names), None)
        return chosen + [first] if first and first not in chosen else chosen

    @property
    def asked(self) -> list[str] | None:
        """allow_patterns of the listing: the patterns and every preferred file (`selects` keeps one)."""
        return self.patterns if not self.prefer else [*(self.patterns or []), *self.prefer]


DINO_WEIGHTS = ["model.safetensors", "pytorch_model.bin"]
OPEN_CLIP_WEIGHTS = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]  # open_clip's hub file names


def open_clip_item(arch: str, tag: str) -> HubItem | None:
    """The hub repository open_clip downloads `arch`'s weights `tag` from (ViT-B-32/openai:
    timm/vit_base_patch32_clip_224.openai); None for a local file or folder, or a tag with a download URL only."""
    import open_clip

    if Path(tag).expanduser().exists():
        return None
    # open_clip's own reading (pretrained.download_pretrained): "org/model/" = the default file names,
    # "org/model/file.bin" = that file, or its .safetensors twin where the repository has one
    repo, file = os.path.split((open_clip.get_pretrained_cfg(arch, tag) or {}).get("hf_hub", ""))
    if not repo:
        return None
    twin = [file[:-4] + ".safetensors"] if file.endswith((".bin", ".pth")) else []
    return HubItem(f"CLIP ({arch}, {tag})", repo, None, [], [*twin, file] if file else OPEN_CLIP_WEIGHTS)


def hub_items(cfg) -> list[HubItem]:
    """What the runs of `cfg` load from the hub (local paths are left alone)."""
    m = cfg.model
    items = []
    path = m.path or SDXL_HUB_ID
    if m.kind == "pretrained":
        single = path.endswith((".safetensors", ".ckpt"))
        if not single and not Path(path).exists():
            skip = ("vae",) if m.vae_path else ()
            items.append(HubItem(f"base model ({path})", path, m.revision, pipeline_patterns(m.variant, skip)))
        if single and m.config_path and not Path(m.config_path).exists():
            items.append(HubItem(f"configs for {path} ({m.config_path})", m.config_path, None, CONFIG_PATTERNS))
        if m.vae_path and not Path(m.vae_path).exists():
            vae = ["config.json", *weight_patterns("diffusion_pytorch_model", None)]
            items.append(HubItem(f"VAE ({m.vae_path})", m.vae_path, None, vae))
    if not Path(cfg.eval.dino).expanduser().exists():  # the hub's repo has the weights as .bin and .safetensors
        items.append(HubItem(f"DINO ({cfg.eval.dino})", cfg.eval.dino, None, ["*.json"], DINO_WEIGHTS))
    clip = open_clip_item(cfg.eval.clip_arch, cfg.eval.clip_pretrained)
    if clip is not None:
        items.append(clip)
    score_model = cfg.eval.clip_score_model
    if not Path(score_model).expanduser().exists():
        items.append(HubItem(f"CLIP-score model ({score_model})", score_model, None, CLIP_PATTERNS))
    return items


def listing(item: HubItem) -> list[tuple[str, int | None, bool]]:
    """(file, size, cached) of what `item` selects: asked of the hub (huggingface_hub's dry run), or, offline,
    read from the local cache. Raises if neither can answer."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import DryRunError

    if os.environ.get("HF_HUB_OFFLINE", "0") in ("0", "", "false"):
        try:
            infos = snapshot_download(item.repo, revision=item.revision, allow_patterns=item.asked, dry_run=True)
            keep = set(item.selects([i.filename for i in infos]))
            return [(i.filename, i.file_size, i.is_cached) for i in infos if i.filename in keep]
        except DryRunError:
            pass  # no network: what does the cache hold?
    cached = snapshot_download(item.repo, revision=item.revision, allow_patterns=item.asked, local_files_only=True)
    folder = Path(cached)  # the whole cached snapshot: select as the download would
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return [(n, (folder / n).stat().st_size, True) for n in item.selects(names)]


def _fetch_hub(item: HubItem) -> Callable[[], str]:
    def fetch() -> str:
        from huggingface_hub import snapshot_download

        files = [name for name, _, _ in listing(item)] if item.prefer else item.patterns  # each weights file once
        return snapshot_download(item.repo, revision=item.revision, allow_patterns=files)

    return fetch


def _fetch_open_clip(arch: str, tag: str) -> Callable[[], str]:
    def fetch() -> str:
        import open_clip

        open_clip.create_model(arch, pretrained=tag)
        return f"open_clip {arch}/{tag} cached"

    return fetch


def _open_clip_url_only(cfg) -> bool:
    """CLIP weights open_clip downloads from a URL itself (a tag without a hub repository)."""
    local = Path(cfg.eval.clip_pretrained).expanduser().exists()
    return not local and open_clip_item(cfg.eval.clip_arch, cfg.eval.clip_pretrained) is None


def fetchers(cfg) -> dict[str, Callable[[], str]]:
    out = {item.label: _fetch_hub(item) for item in hub_items(cfg)}
    if _open_clip_url_only(cfg):
        out[f"CLIP ({cfg.eval.clip_arch}, {cfg.eval.clip_pretrained})"] = _fetch_open_clip(
            cfg.eval.clip_arch, cfg.eval.clip_pretrained
        )
    return out


def dry_run(cfg) -> int:
    """Print every file `make weights` would fetch with its size; 1 if an item could not be listed."""
    failed, total = 0, 0
    for item in hub_items(cfg):
        print(f"{item.label}: {item.repo}@{item.revision or 'main'}")
        try:
            files = listing(item)
        except Exception as err:  # noqa: BLE001 - offline and not cached, gated, missing: report and go on
            print(f"  cannot list: {type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}")
            failed += 1
            continue
        for name, size, cached in files:
            print(f"  {_size(size):>10}  {name}{'  (cached)' if cached else ''}")
            total += size or 0
        print(f"  {_size(sum(s or 0 for _, s, _ in files)):>10}  in {len(files)} files")
    url = _open_clip_url_only(cfg)
    print(f"total {_size(total)}" + (f" (+ open_clip {cfg.eval.clip_arch}/{cfg.eval.clip_pretrained}, URL)" * url))
    return 1 if failed else 0


def _size(nbytes: int | None) -> str:
    if nbytes is None:
        return "?"
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e8 else f"{nbytes / 1e6:.2f} MB" if nbytes >= 1e5 else f"{nbytes} B"


def main(argv: list[str] | None = None) -> int:
    from para.run.config import compose_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="list the files and sizes; download nothing")
    parser.add_argument("overrides", nargs="*", help="run-config overrides, e.g. model.variant=fp16")
    args = parser.parse_args(argv)
    cfg = compose_config(*args.overrides, "run_dir=unused")
    if args.dry_run:
        return dry_run(cfg)
    failed = []
    for name, fetch in fetchers(cfg).items():
        print(f"fetching {name} ...", flush=True)
        try:
            print(f"  ok: {fetch()}")
        except Exception as err:  # noqa: BLE001 - report every failure, keep going with the other items
            first_line = (str(err).splitlines() or [""])[0][:300]
            print(f"  FAILED: {type(err).__name__}: {first_line}")
            failed.append(name)
    if failed:
        print(
            f"\n{len(failed)} item(s) could not be fetched: {', '.join(failed)}.\n"
            "Is there internet access (and `hf auth login` for gated repos)? "
            "Alternatively copy the folders and set model.path=... / eval.dino=... to local paths."
        )
        return 1
    print("\nall weights cached; runs can now use HF_HUB_OFFLINE=1")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The build's figures as markdown, kept in docs/world.md between markers (`make world` writes them; a test checks
that the page shows what world/assets/build.json holds)."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "world.md"
BUILD = Path(__file__).resolve().parent / "assets" / "build.json"


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def gate_markdown(build: dict) -> str:
    gate, s = build["gate"], build["settings"]
    p = s["pretrain"]
    stages = build["stages"]
    minutes = {name: stage["seconds"] / 60 for name, stage in stages.items()}
    assembly = build["build_seconds"] / 60  # writing and the gate (stages already in the cache take no time)
    from_nothing = minutes["vae"] + max(minutes["evaluator"], minutes["pretrain"]) + assembly
    lines = [
        f"`make world` from nothing: **{from_nothing:.0f} min** on {build['machine']['cpus']} CPU threads "
        f"({build['machine']['processor']}): the VAE, then the evaluator (a process of its own) beside the "
        f"pretraining, then writing and the gate ({assembly:.1f} min), each stage's time as measured when it was "
        f"built (below). Digest `{build['digest']}` (the settings, each stage's digest and the code of the photos, "
        "prompts and gate; `world/assets/build.json` holds everything below).",
        "",
        "| stage | settings | result | minutes |",
        "|---|---|---|---|",
        f"| VAE | {s['vae_steps']} steps x {s['vae_batch']} renders | mean error "
        f"{stages['vae']['reconstruction_error']['ordinary']:.1f} (ordinary scenes), "
        f"{stages['vae']['reconstruction_error']['subjects']:.1f} (subjects) of 255 levels | "
        f"{stages['vae']['seconds'] / 60:.1f} |",
        f"| evaluator | {s['evaluator_steps']} steps x {s['evaluator_batch']} renders | "
        f"loss {stages['evaluator']['final_loss']:.3f} | {stages['evaluator']['seconds'] / 60:.1f} |",
        f"| pretraining | {p['steps']} steps x {p['batch']} ({p['steps'] * p['batch']:,} samples of {p['pool']:,} "
        f"scenes), lr {p['lr']:g}, UNet width {s['unet_width']} | loss {stages['pretrain']['final_loss']:.4f} | "
        f"{stages['pretrain']['seconds'] / 60:.1f} |",
        "",
        f"**The gate: {'passed' if gate['passed'] else 'FAILED'}.**",
        "",
        "| check | threshold | measured |",
        "|---|---|---|",
    ]
    accuracy = gate["evaluator_accuracy"]
    renders = {k.split("/", 1)[1]: v for k, v in accuracy.items() if k.startswith("renders/")}
    vae = {k.split("/", 1)[1]: v for k, v in accuracy.items() if k.startswith("vae/")}
    worst = min(renders, key=renders.get)
    lines.append(
        f"| evaluator accuracy, every head, held-out renders augmented | ≥ "
        f"{_pct(gate['thresholds']['evaluator_accuracy'])} | lowest {_pct(renders[worst])} ({worst}); "
        + ", ".join(f"{k} {_pct(v)}" for k, v in renders.items())
        + " |"
    )
    lines.append(
        "| the same through the VAE's round trip (what the evaluator sees of a perfect generation; reported, not "
        "gated) | – | " + ", ".join(f"{k} {_pct(v)}" for k, v in vae.items()) + " |"
    )
    identity = gate["base_identity"]
    lines.append(
        "| base model's samples of each subject's prompts: subject identity "
        f"| ≤ {gate['thresholds']['base_identity']} | highest {max(identity.values()):.4f}; "
        + ", ".join(f"{k} {v:.4f}" for k, v in identity.items())
        + " |"
    )
    for attribute, row in gate["caption_fidelity"].items():
        lo, hi = row["ci95"]
        lines.append(
            f"| captions followed: {attribute} ({row['n']} samples, 95 % Wilson interval) | ≥ "
            f"{gate['thresholds']['caption_fidelity']} | {row['share']:.3f} [{lo:.3f}, {hi:.3f}] |"
        )
    lines += [
        "",
        f"Sampler: DDIM, {s['sample_steps']} steps, guidance {s['guidance']} (what `conf/model/world.yaml` sets). "
        "Gate samples: `world/assets/gate_samples.png` (prompts in `gate_prompts.json`). Measure again: "
        "`make world WORLD_ARGS=--force` (or delete `world/assets/build.json`).",
    ]
    return "\n".join(lines)


def replace_section(text: str, name: str, body: str) -> str:
    """`text` with the part between `<!-- world:name -->` and `<!-- /world:name -->` replaced by `body`."""
    start, end = f"<!-- world:{name} -->", f"<!-- /world:{name} -->"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError(f"{DOC}: no {start} ... {end} section")
    return pattern.sub(lambda _: f"{start}\n{body}\n{end}", text)


def section(text: str, name: str) -> str:
    start, end = f"<!-- world:{name} -->", f"<!-- /world:{name} -->"
    return text.split(start, 1)[1].split(end, 1)[0].strip()


def update_docs(build_file: Path = BUILD, doc: Path = DOC) -> None:
    build = json.loads(build_file.read_text())
    doc.write_text(replace_section(doc.read_text(), "gate", gate_markdown(build)))


if __name__ == "__main__":
    update_docs()

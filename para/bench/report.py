"""Ratios, targets and the markdown tables of `make bench` (pure functions of the records)."""

from __future__ import annotations

from typing import Any

# (ratio key, value key, reference method, reference's value key): all ratios compare records of the same model
# and resolution, trained with cached latents. The base model (`frozen`) has nothing to merge: merged sampling
# is compared with its plain sampling.
RATIOS = (
    ("step_ratio_lora", "step_seconds", "lora", "step_seconds"),
    ("step_ratio_frozen", "step_seconds", "frozen", "step_seconds"),
    ("step_cpu_ratio_lora", "step_cpu_seconds", "lora", "step_cpu_seconds"),
    ("step_cpu_ratio_frozen", "step_cpu_seconds", "frozen", "step_cpu_seconds"),
    ("memory_ratio_lora", "peak_memory_mb", "lora", "peak_memory_mb"),
    ("memory_increase_ratio_lora", "peak_increase_mb", "lora", "peak_increase_mb"),
    ("sample_ratio_base", "sample_seconds_per_image", "frozen", "sample_seconds_per_image"),
    ("sample_merged_ratio_base", "sample_merged_seconds_per_image", "frozen", "sample_seconds_per_image"),
    ("sample_merged_cpu_ratio_base", "sample_merged_cpu_seconds_per_image", "frozen", "sample_cpu_seconds_per_image"),
)
# Issue 8's targets: (name, ratio key, method, bound, how the bound applies). Wall-clock and CPU-time variants:
# on a shared CPU machine the CPU time of the process is the steadier measure of the work done.
TARGETS = (
    ("PaRa train step ≤ 1.05× LoRA (same rank, same layers), wall", "step_ratio_lora", "para", 1.05, "max"),
    ("PaRa train step ≤ 1.05× LoRA (same rank, same layers), CPU time", "step_cpu_ratio_lora", "para", 1.05, "max"),
    ("PaRa peak memory ≤ LoRA's", "memory_ratio_lora", "para", 1.0, "max"),
    ("PaRa peak memory increase over the base ≤ LoRA's", "memory_increase_ratio_lora", "para", 1.0, "max"),
    ("PaRa merged sampling within 2% of the base model, wall", "sample_merged_ratio_base", "para", 0.02, "within"),
    (
        "PaRa merged sampling within 2% of the base model, CPU time",
        "sample_merged_cpu_ratio_base",
        "para",
        0.02,
        "within",
    ),
)


# Table 1 protocol (conf/experiment/table1.yaml, PAPER.md §4, §6): training steps per method, 25 prompts × 4
# images sampled with 50 DDIM steps, 30 subjects.
TABLE1_STEPS = {"para": 200, "lora": 1000, "lora_attn": 1000, "dreambooth": 1000}
TABLE1_IMAGES, TABLE1_SAMPLE_STEPS, TABLE1_SUBJECTS = 100, 50, 30


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference <= 0:
        return None
    return value / reference


def _group(record: dict) -> tuple[Any, Any]:
    return record["model"], record["resolution"]


def _primary(record: dict) -> bool:
    """The main comparison: cached latents, eager. Uncached and compiled records are compared with it."""
    return record.get("cache_latents", True) and not record.get("compile", False)


def add_ratios(records: list[dict]) -> list[dict]:
    """Each record with its ratios to LoRA and to the frozen floor, and what caching and compiling change.

    A ratio is None when its reference method was not run or has no value. Compiled records are compared with
    compiled references where those were run (PaRa compiled vs LoRA compiled) and get `compile_speedup` (eager ÷
    compiled step time of the same method) and the eager twin's first warm-up time. Records trained without
    cached latents get `cache_saving_seconds` (uncached − cached step time of the same method) instead.
    """
    cached = {(_group(r), r["method"], r.get("compile", False)): r for r in records if r.get("cache_latents", True)}
    out = []
    for record in records:
        record = dict(record)
        group, compiled = _group(record), record.get("compile", False)
        twin = cached.get((group, record["method"], False), {})  # the same method, cached, eager
        if record.get("cache_latents", True):
            for key, value_key, reference, reference_key in RATIOS:
                ref = cached.get((group, reference, compiled))
                record[key] = _ratio(record.get(value_key), ref.get(reference_key) if ref else None)
            if compiled:
                record["compile_speedup"] = _ratio(twin.get("step_seconds"), record.get("step_seconds"))
                record["eager_first_warmup_seconds"] = twin.get("first_warmup_seconds")
        else:
            both = None not in (twin.get("step_seconds"), record.get("step_seconds"))
            record["cache_saving_seconds"] = record["step_seconds"] - twin["step_seconds"] if both else None
            record["cache_speedup"] = _ratio(record.get("step_seconds"), twin.get("step_seconds"))
        out.append(record)
    return out


def targets(records: list[dict]) -> list[dict]:
    """Where each (model, resolution) stands against issue 8's targets; `met` is None when not measured."""
    rows = []
    for record in records:
        if not _primary(record):
            continue
        for name, key, method, bound, kind in TARGETS:
            if record["method"] != method or ("cpu" in key and record["device"] != "cpu"):
                continue
            value = record.get(key)
            met = None if value is None else (value <= bound if kind == "max" else abs(value - 1.0) <= bound)
            rows.append(
                {
                    "target": name,
                    "model": record["model"],
                    "resolution": record["resolution"],
                    "value": value,
                    "met": met,
                }
            )
    for e in table1_estimate(records):
        if e["method"] == "para" and e["resolution"] == 1024:
            rows.append(
                {
                    "target": "Table 1 PaRa cell (200 steps + 100 images, 1024 px) ≤ 10 min, estimate",
                    "model": "sdxl",
                    "resolution": 1024,
                    "value": e["cell_minutes"],
                    "met": e["cell_minutes"] <= 10 and e["sampling_measured"],
                }
            )
    return rows


def table1_estimate(records: list[dict]) -> list[dict]:
    """Minutes per Table 1 cell (train + sample 100 images) and GPU-hours for 30 subjects, from measured figures.

    Only for the real-size SDXL records measured on a GPU. Sampling time per image is scaled from the benchmark's
    few DDIM steps to 50 in proportion, which also scales the one-off text encoding and VAE decoding: an
    overestimate.
    Evaluation scoring is not included. PaRa samples merged (costs the base model), LoRA unmerged.
    """
    rows = []
    for r in records:
        steps = TABLE1_STEPS.get(r["method"])
        on_gpu = r["device"] != "cpu"  # a CPU run of SDXL's real-size UNet (small latents) says nothing of a cell
        if r["model"] != "sdxl" or not on_gpu or not _primary(r) or steps is None or r.get("step_seconds") is None:
            continue
        own = r.get("sample_merged_seconds_per_image") or r.get("sample_seconds_per_image")
        source = (
            r
            if own is not None
            else next((b for b in records if b["method"] == "frozen" and _group(b) == _group(r)), {})
        )  # the base model's
        per_image = own if own is not None else source.get("sample_seconds_per_image")
        sample_s = 0.0 if per_image is None else per_image * TABLE1_SAMPLE_STEPS / source["sample_steps"]
        cell = steps * r["step_seconds"] + sample_s * TABLE1_IMAGES
        rows.append(
            {
                "method": r["method"],
                "resolution": r["resolution"],
                "train_steps": steps,
                "cell_minutes": cell / 60,
                "sampling_measured": own is not None,
                "table_gpu_hours": cell * TABLE1_SUBJECTS / 3600,
            }
        )
    return rows


def _attention(kernels: dict | None) -> str:
    """', attention AttnProcessor2_0 (SDPA: flash, mem_efficient)' from a record's `attention` entry."""
    if not kernels:
        return ""
    enabled = [k for k in ("flash", "mem_efficient", "math") if kernels.get(k)]
    return f", attention {'/'.join(kernels['processors'])}" + (f" (SDPA: {', '.join(enabled)})" if enabled else "")


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "–"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value:{spec}}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _training_rows(rows: list[dict]) -> list[list[str]]:
    return [
        [
            r["method"] + (" (compiled)" if r.get("compile") else ""),
            _fmt(r["step_seconds"]),
            _fmt(r.get("step_ratio_lora"), ".2f"),
            _fmt(r.get("step_ratio_frozen"), ".2f"),
            _fmt(r.get("step_cpu_seconds")),
            _fmt(r.get("step_cpu_ratio_lora"), ".2f"),
            _fmt(r["peak_memory_mb"], ".0f"),
            _fmt(r.get("memory_ratio_lora"), ".2f"),
            _fmt(r.get("peak_increase_mb"), ".0f"),
            _fmt(r.get("memory_increase_ratio_lora"), ".2f"),
            _fmt(r.get("trainable_params")),
            _fmt(r.get("dispatches_per_step")),
            _fmt(r.get("qr_per_step")),
            _fmt(None if r.get("adapter_file_bytes") is None else r["adapter_file_bytes"] / 2**20)
            + (f" (error: {r['error']})" if r.get("error") else ""),
        ]
        for r in rows
    ]


def _sampling_rows(rows: list[dict]) -> list[list[str]]:
    return [
        [
            r["method"],
            _fmt(r.get("sample_seconds_per_image")),
            _fmt(r.get("sample_merged_seconds_per_image")),
            _fmt(r.get("sample_merged_ratio_base"), ".3f"),
            _fmt(r.get("sample_cpu_seconds_per_image")),
            _fmt(r.get("sample_merged_cpu_seconds_per_image")),
            _fmt(r.get("sample_merged_cpu_ratio_base"), ".3f"),
        ]
        for r in rows
        if r.get("sample_seconds_per_image") is not None
    ]


def _qr_note(rows: list[dict]) -> list[str]:
    """PaRa with one batched QR per B shape against one QR per layer (para.batched_qr), when both were run."""
    by = {r["method"]: r for r in rows if not r.get("compile")}
    batched, per_layer = by.get("para"), by.get("para_qr_per_layer")
    if not (batched and per_layer):
        return []

    def pair(key: str, spec: str = ".3g") -> str:
        return f"{_fmt(batched.get(key), spec)} vs {_fmt(per_layer.get(key), spec)}"

    return [
        "",
        f"PaRa's QRs, one batched QR per B shape vs one QR per layer: QRs per step {pair('qr_per_step')}; "
        f"operators per step {pair('dispatches_per_step')}; step time ×LoRA {pair('step_ratio_lora', '.2f')} "
        f"(CPU time ×LoRA {pair('step_cpu_ratio_lora', '.2f')}).",
    ]


def to_markdown(records: list[dict]) -> str:
    """Per (model, resolution): a training table, a sampling table, what caching saves; then the targets."""
    lines = [
        "# `make bench`: training and sampling cost",
        "",
        "All models have RANDOM weights (speed and memory only, never quality). Step time: median of warm steps, "
        "methods interleaved round-robin in one process; CPU = CPU seconds of the process (on CPU only). Peak "
        "memory: the pipeline + the method's peak increase while attaching and training (CPU: resident set; "
        "GPU: allocated tensors); +MB = the increase alone.",
        "",
    ]
    for group in dict.fromkeys(_group(r) for r in records):
        rows = [r for r in records if _group(r) == group]
        cached = [r for r in rows if r.get("cache_latents", True)]
        first, prov = rows[0], rows[0].get("provenance", {})
        lines += [
            f"## {group[0]}, {group[1]} px — {first['device']}, {first.get('dtype', '?')} weights, autocast "
            f"{first.get('amp_dtype') or 'off'}, batch {first.get('batch_size')}, "
            f"{_fmt(first.get('unet_params'))} UNet params, torch {prov.get('packages', {}).get('torch')}, "
            f"{prov.get('threads')} threads, {first.get('rounds')} rounds{_attention(first.get('attention'))}",
            "",
        ]
        lines += _table(
            [
                "method",
                "step s",
                "×LoRA",
                "×frozen",
                "CPU s",
                "×LoRA",
                "peak MB",
                "×LoRA",
                "+MB",
                "×LoRA",
                "trainable",
                "ops/step",
                "QRs/step",
                "file MB",
            ],
            _training_rows(cached),
        )
        lines += _qr_note(cached)
        sampling = _sampling_rows(cached)
        if sampling:
            steps = next((r["sample_steps"] for r in cached if r.get("sample_steps")), "?")
            lines += ["", f"Sampling ({steps} DDIM steps, per image; ×base = merged vs the base model):", ""]
            lines += _table(
                ["method", "s/img", "merged s/img", "×base", "CPU s/img", "merged CPU s/img", "×base"], sampling
            )
        for r in rows:
            if r.get("compile"):
                lines += [
                    "",
                    f"torch.compile ({r['method']}, inductor): "
                    f"{_fmt(r['step_seconds'])} s/step compiled, {_fmt(r.get('compile_speedup'), '.2f')}× faster "
                    f"than eager; its first {r.get('warmup_steps', '?')} warm-up steps, compiling included, took "
                    f"{_fmt(r.get('first_warmup_seconds'))} s (eager: "
                    f"{_fmt(r.get('eager_first_warmup_seconds'))} s).",
                ]
            if not r.get("cache_latents", True):
                lines += [
                    "",
                    f"Caching latents and text embeddings ({r['method']}): {_fmt(r['step_seconds'])} s/step "
                    f"without, saves {_fmt(r.get('cache_saving_seconds'))} s/step "
                    f"({_fmt(r.get('cache_speedup'), '.2f')}× slower uncached).",
                ]
        lines.append("")
    estimate = table1_estimate(records)
    if estimate:
        lines += [
            "## Table 1 estimate (real-size SDXL on this GPU: training + 100 images at 50 DDIM steps, no scoring)",
            "",
        ]
        lines += _table(
            ["method", "px", "train steps", "min per cell", "GPU-h for 30 subjects"],
            [
                [
                    e["method"],
                    str(e["resolution"]),
                    str(e["train_steps"]),
                    _fmt(e["cell_minutes"]),
                    _fmt(e["table_gpu_hours"]) + ("" if e["sampling_measured"] else " (sampling: the base model's)"),
                ]
                for e in estimate
            ],
        )
        lines.append("")
    lines += ["## Targets (issue 8)", ""]
    lines += _table(
        ["target", "model", "px", "value", "met"],
        [
            [
                t["target"],
                t["model"],
                str(t["resolution"]),
                _fmt(t["value"], ".3f"),
                {True: "yes", False: "**no**", None: "not measured"}[t["met"]],
            ]
            for t in targets(records)
        ],
    )
    return "\n".join(lines) + "\n"

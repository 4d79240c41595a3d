"""The paper's experiments beyond Table 1 (PAPER.md §5), one module and one `make` target each.

- `multi_subject`: PaRa adapters combined without retraining (`para.combine`) vs two LoRAs together
- `para_lora`: PaRa with an existing LoRA file, in both orders
- `edit`: single-image editing without inversion, PaRa vs a one-shot LoRA
- `ablations`: rank, γ, layer subset and steps-curve sweeps (Hydra multirun of run.py) → table + plots
- `study_sheet`: HTML sheets for a PaRa-vs-LoRA user study, with a separate answer key

Shared: `common` (configuration, training runs through the harness, sampling), `scoring` (per-image scores on
the `eval` backbones), `report` (tables, grids, provenance). See docs/experiments.md.
"""

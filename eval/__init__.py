"""Evaluation: images on disk -> scores -> tables. Never imports the trainer.

`eval` shadows a builtin: write `from eval import metrics`, `python -m eval <run>`, `python -m eval.table`.

- `eval.backbones`: DINO / CLIP / LPIPS loaders (pretrained or seeded random), fail fast offline
- `eval.metrics`: DINO, CLIP-I, CLIP-T, CLIP score, LPIPS, pairwise SSIM on PIL images
- `eval.score`: `score_run(run_dir, eval_cfg)` for one run folder, with a real-photo embedding cache
- `python -m eval <run>`: re-score a run and update its `metrics.json`
- `python -m eval.table`: Table 1 with bootstrap intervals over subjects, failed cells, trade-off plot
"""

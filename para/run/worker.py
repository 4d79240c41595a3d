"""Several runs (cells of a sweep) in one process, on one loaded base model: `make reproduce-table1`'s local worker.

    python -m para.run.worker +experiment=table1 model=sdxl resume=true \\
        --cell "method=para subject=dog seed=0 steps=200" --cell "method=lora subject=dog seed=0 steps=1000" …

Each Table 1 cell run as its own process re-reads SDXL's files (13.9 GB in fp32), casts them and reloads the
evaluation nets: about a minute of an idle GPU per cell. The worker loads the base once (`SharedBase`) and
runs the cells one after another through the same `para.run.runner.Run` as `run.py` (preflight, folder lock,
resume, metrics.json, failure records), each on the same base: after a cell its method is taken out
(`Method.detach`: the base model's own modules and weights, bit for bit) and DreamBooth's UNet, which trains the
base weights themselves, gets them back from a host copy made before the first DreamBooth cell. The evaluation
nets stay loaded (`eval.backbones` keeps them per process). Every draw of a cell comes from its own seed
(`Run` reseeds after loading), so a cell gives the adapter and scores it gives in a process of its own
(tests/test_worker.py). A cell that fails, or trains the text encoders, leaves its base to be loaded afresh.

Like `make -k`, a failed cell does not stop the others; the worker lists them at the end and exits 1. SIGTERM
or Ctrl-C stops it (the running cell is recorded as interrupted and continues with resume=true).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from typing import Any

import torch
from omegaconf import OmegaConf

from para.core.interrupts import RunInterrupted
from para.core.method import Method
from para.core.models import load_pipeline

log = logging.getLogger("para.worker")


class SharedBase:
    """The base pipeline of the last model config asked for, kept loaded across runs (see the module docstring)."""

    def __init__(self) -> None:
        self.key: str | None = None
        self.pipe: Any = None
        self.loads = 0  # how many times a base was loaded (the saving: cells − loads)
        self._unet_copy: dict[str, torch.Tensor] | None = None  # host copy of the UNet, for DreamBooth cells

    def pipeline(self, model_cfg: Any, device: torch.device) -> Any:
        key = json.dumps([OmegaConf.to_container(model_cfg, resolve=True), str(device)], sort_keys=True)
        if key != self.key or self.pipe is None:
            self.drop()
            self.pipe, self.key = load_pipeline(model_cfg, device), key
            self.loads += 1
        return self.pipe

    def before_attach(self, pipe: Any, method: Method) -> None:
        if method.trains_base_weights and self._unet_copy is None:  # the base weights, before anything trains them
            self._unet_copy = {k: v.detach().to("cpu", copy=True) for k, v in pipe.unet.state_dict().items()}

    def after_run(self, pipe: Any, method: Method | None, ok: bool) -> None:
        """Give the next run the base model as loaded, or, where that is not certain, none (it loads afresh)."""
        trains_text = bool(getattr(method, "text_encoders", None))
        if not ok or trains_text:
            self.drop()
            return
        unet = pipe.unet
        if method is not None:
            method.detach(unet)
        if method is not None and method.trains_base_weights:
            unet.load_state_dict(self._unet_copy)  # into the tensors in place: same dtype (detach cast it back)
        if unet.is_gradient_checkpointing:
            unet.disable_gradient_checkpointing()
        unet._compiled_call_impl = None  # train.compile compiled it in place (nn.Module.compile)
        for module in (unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
            module.requires_grad_(False).eval().to(unet.device)  # as load_pipeline leaves them

    def drop(self) -> None:
        self.key, self.pipe, self._unet_copy = None, None, None


def run_cells(common: list[str], cells: list[list[str]], base: SharedBase | None = None) -> dict[str, Any]:
    """Run every cell (`python run.py <common> <cell>`) in this process on a shared base; {"finished": [...],
    "failed": [(run folder or overrides, error)], "loads": n}."""
    from para.run.config import compose_config
    from para.run.runner import Run

    base = base or SharedBase()
    finished, failed = [], []
    for overrides in cells:
        label = " ".join(overrides)
        try:
            cfg = compose_config(*common, *overrides)
            run = Run(cfg, base)
            label = str(run.run_dir)
            metrics = run.execute()
        except (RunInterrupted, KeyboardInterrupt):
            raise
        except Exception as err:  # noqa: BLE001 - like `make -k`: the other cells go on; listed at the end
            log.error("%s failed: %s: %s", label, type(err).__name__, err)
            failed.append((label, f"{type(err).__name__}: {err}"))
            continue
        log.info("%s: %s", label, metrics.get("status"))
        finished.append(label)
    return {"finished": finished, "failed": failed, "loads": base.loads}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m para.run.worker", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides shared by every cell (as for run.py)")
    parser.add_argument("--cell", action="append", default=[], help="one run: its own overrides, quoted")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="split the cells over this many worker processes (each its own base, the CPU's threads shared out); "
        "for CPU-sized models: one GPU runs one worker",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    if args.processes < 1:
        parser.error(f"--processes {args.processes}: expected 1 or more")
    if args.processes > 1 and len(args.cell) > 1:
        return _split(args.overrides, args.cell, args.processes)
    cells = [shlex.split(c) for c in args.cell] or [[]]
    try:
        result = run_cells(args.overrides, cells)
    except RunInterrupted as stop:
        log.warning("stopped by %s; re-run the same command to continue", stop.signal_name)
        return stop.exit_code
    done, failed = result["finished"], result["failed"]
    log.info("worker: %d of %d cells ran, %d base load(s)", len(done), len(cells), result["loads"])
    for label, error in failed:
        print(f"FAILED {label}: {error}", file=sys.stderr)
    return 1 if failed else 0


def _split(common: list[str], cells: list[str], processes: int) -> int:
    """Round-robin the cells over `processes` workers of this module, each with an equal share of the threads."""
    import os
    import subprocess

    threads = str(max(1, (os.cpu_count() or 1) // processes))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    shares = [cells[k::processes] for k in range(processes) if cells[k::processes]]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "para.run.worker", *common, *(a for c in share for a in ("--cell", c))], env=env
        )
        for share in shares
    ]
    codes = [proc.wait() for proc in procs]
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())

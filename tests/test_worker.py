"""Several cells on one loaded base (para.run.worker): the same adapters and scores as runs of their own, the base
model given back after every method, the make target, failures that do not stop the others."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAST, REPO, compose_config
from safetensors.torch import load_file
from test_methods import _train, _unet_out

from para.run.registry import METHODS
from para.run.runner import execute
from para.run.worker import SharedBase, main, run_cells

# DreamBooth in the middle: the cell after it runs on its restored UNet, with another subject and seed. (Every
# method's way back to the base model: the parametrized test below.)
CELLS = [
    ["method=para", "method.lr=1e-2"],
    ["method=dreambooth", "method.lr=1e-4"],
    ["method=para", "method.lr=1e-2", "subject=cat", "seed=1"],
]


def _same_run(folder: Path, reference: Path, tol: float = 1e-6) -> None:
    tensors, expected = load_file(folder / "adapter.safetensors"), load_file(reference / "adapter.safetensors")
    assert tensors.keys() == expected.keys()
    for key, value in tensors.items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=tol)
    scores, expected = (json.loads((f / "metrics.json").read_text())["scores"] for f in (folder, reference))
    numbers = [k for k, v in expected.items() if isinstance(v, float)]
    assert numbers and all(scores[k] == pytest.approx(expected[k], abs=tol) for k in numbers)


def test_a_worker_gives_each_cell_the_adapter_and_scores_of_a_run_of_its_own(tmp_path):
    for i, cell in enumerate(CELLS):
        execute(compose_config(*FAST, *cell, f"run_dir={tmp_path / 'alone' / str(i)}"))
    base = SharedBase()
    cells = [[*cell, f"run_dir={tmp_path / 'worker' / str(i)}"] for i, cell in enumerate(CELLS)]
    result = run_cells(FAST, cells, base)
    assert (len(result["finished"]), result["failed"], base.loads) == (len(CELLS), [], 1)
    for i in range(len(CELLS)):
        _same_run(tmp_path / "worker" / str(i), tmp_path / "alone" / str(i))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_after_a_run_the_shared_base_is_the_base_model_again(tiny_pipe, name):
    """Trained, sampled in its sampling form (merged where the method merges), given back: the base model's own
    modules and weights, bit for bit."""
    base = SharedBase()
    modules = [type(m) for m in tiny_pipe.unet.modules()]
    weights = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    expected = _unet_out(tiny_pipe)
    base.before_attach(tiny_pipe, METHODS[name]({}, "tiny"))  # as a run calls it, before attaching
    _, method, _, _, _, _ = _train(tiny_pipe, name, 2)
    method.end_training(tiny_pipe.unet)
    method.prepare_for_sampling(tiny_pipe.unet, merge=True)
    assert not torch.equal(_unet_out(tiny_pipe), expected)
    method.finish_sampling(tiny_pipe.unet)
    base.after_run(tiny_pipe, method, ok=True)
    assert [type(m) for m in tiny_pipe.unet.modules()] == modules
    state = tiny_pipe.unet.state_dict()
    assert state.keys() == weights.keys() and all(torch.equal(state[k], weights[k]) for k in weights)
    assert not any(p.requires_grad for p in tiny_pipe.unet.parameters())
    assert torch.equal(_unet_out(tiny_pipe), expected)


def test_the_worker_cli_runs_the_cells_and_lists_the_failed_ones(tmp_path, capsys):
    ok, bad = f"method=para run_dir={tmp_path / 'ok'}", f"method=para method.rank=0 run_dir={tmp_path / 'bad'}"
    assert main([*FAST, "--cell", bad, "--cell", ok]) == 1
    assert json.loads((tmp_path / "ok" / "metrics.json").read_text())["status"] == "finished"
    assert "FAILED" in capsys.readouterr().err and not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_a_worker_gives_the_adapters_and_scores_of_separate_processes(tmp_path):
    """The same, against `python run.py` processes (as `make reproduce-table1` ran every cell before)."""
    cells = [["method=lora", "method.lr=1e-2"], ["method=dreambooth", "method.lr=1e-4", "seed=1"]]
    for i, cell in enumerate(cells):
        argv = [sys.executable, "run.py", *FAST, *cell, f"hydra.run.dir={tmp_path / 'alone' / str(i)}"]
        subprocess.run(argv, cwd=REPO, check=True, capture_output=True)
    worker = [[*cell, f"run_dir={tmp_path / 'worker' / str(i)}"] for i, cell in enumerate(cells)]
    assert run_cells(FAST, worker)["failed"] == []
    for i in range(len(cells)):
        _same_run(tmp_path / "worker" / str(i), tmp_path / "alone" / str(i))


@pytest.mark.slow
def test_cells_split_over_worker_processes_give_what_one_worker_gives(tmp_path):
    """`--processes 2` (a CPU's cores, MODEL=world's `make reproduce-table1`): each cell as a single worker runs it;
    a failed cell in either process makes the exit code 1."""
    cells = [["method=para", "method.lr=1e-2"], ["method=lora", "method.lr=1e-2", "seed=1"]]
    argv = [sys.executable, "-m", "para.run.worker", "--processes", "2", *FAST]
    for i, cell in enumerate(cells):
        argv += ["--cell", " ".join([*cell, f"run_dir={tmp_path / 'split' / str(i)}"])]
    assert subprocess.run(argv, cwd=REPO, capture_output=True).returncode == 0
    one = [[*cell, f"run_dir={tmp_path / 'one' / str(i)}"] for i, cell in enumerate(cells)]
    assert run_cells(FAST, one)["failed"] == []
    for i in range(len(cells)):  # one thread each there, this process's here: float sums in another order
        _same_run(tmp_path / "split" / str(i), tmp_path / "one" / str(i), tol=1e-4)
    bad = [*argv, "--cell", f"method=para method.rank=0 run_dir={tmp_path / 'bad'}"]
    assert subprocess.run(bad, cwd=REPO, capture_output=True).returncode == 1


def test_worker_processes_below_one_are_refused(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--processes", "0", "--cell", "method=para"])
    assert stop.value.code == 2 and "--processes 0: expected 1 or more" in capsys.readouterr().err

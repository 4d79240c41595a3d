"""`python run.py …` on copies of a finished tiny run (tests/test_bad_inputs.py trains it once per session)."""

from __future__ import annotations

from pathlib import Path

from bad_inputs import case
from bad_inputs.setups import all_of, file_at, folder_at, removed, truncated
from para.core.method import safetensors_problem

USER_README = "# My dog\n\nNotes I keep with the run.\n"


def _whole_adapter(tmp: Path, _out: str) -> None:
    assert safetensors_problem(tmp / "para" / "adapter.safetensors") is None


def _readme_kept(tmp: Path, out: str) -> None:
    assert (tmp / "para" / "README.md").read_text() == USER_README
    assert "written by the para harness" in (tmp / "para" / "MODEL_CARD.md").read_text()
    assert "the card is MODEL_CARD.md" in out


RUN = "hydra.run.dir={tmp}/para"
# one case, a few lines: the table reads as a table
# fmt: off
CASES = [
    case("folder-truncated-adapter", "run", RUN, 2, "adapter.safetensors cannot be read", "overwrite=true",
         "a finished run whose adapter.safetensors is truncated (was `kept as is`, and its samples re-scored)",
         uses=("para",), setup=truncated("para/adapter.safetensors")),
    case("folder-truncated-adapter-overwrite", "run", f"{RUN} overwrite=true", 0, "overwrite=true: replacing",
         "status finished", "the same, with the way out taken: trained again", uses=("para",),
         setup=truncated("para/adapter.safetensors"), writes=("para/*", "para/*/*"), check=_whole_adapter),
    case("folder-user-readme-overwrite", "run", f"{RUN} overwrite=true", 0,
         "README.md there is not a model card of the harness", "the card is MODEL_CARD.md",
         "`overwrite=true` on a run folder holding the user's own README.md (was replaced by the model card)",
         uses=("para",), setup=file_at("para/README.md", USER_README), writes=("para/*", "para/*/*"),
         check=_readme_kept),
    case("folder-moved", "run", RUN, 0, "holds a finished run with these settings", "run folder: {tmp}/para",
         "a finished run folder moved or copied elsewhere, run again (printed the old folder's path)",
         uses=("para",), absent=("/trained0/",), hydra_main=True),
    case("folder-config-not-yaml", "run", RUN, 0, "holds a finished run with these settings; kept as is",
         "overwrite=true", "a finished run whose config.yaml is not YAML: its metrics.json's settings are compared",
         uses=("para",), setup=file_at("para/config.yaml", "{{: [")),
    case("folder-settings-unknown", "run", RUN, 2, "no readable config.yaml", "overwrite=true",
         "a run folder whose config.yaml and metrics.json both are unreadable", uses=("para",),
         setup=all_of(file_at("para/config.yaml", "{{: ["), file_at("para/metrics.json", "{half"))),
    case("folder-adapter-is-folder", "run", RUN, 2, "adapter.safetensors (a folder)", "hydra.run.dir=",
         "a folder named adapter.safetensors in a run folder", uses=("para",),
         setup=all_of(removed("para/adapter.safetensors"), folder_at("para/adapter.safetensors"))),
    case("folder-checkpoints-is-file", "run", RUN, 2, "checkpoints (not a folder)", "Move them away",
         "a file named checkpoints in a run folder", uses=("para",), setup=file_at("para/checkpoints", "mine")),
    case("folder-marker-is-folder", "run", RUN, 2, ".para-run (a folder)", "hydra.run.dir=",
         "a folder named .para-run", uses=("para",),
         setup=all_of(removed("para/.para-run"), folder_at("para/.para-run"))),
]
# fmt: on

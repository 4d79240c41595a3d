"""The W&B dashboard that compares methods, as code (wandb-workspaces), so nobody builds it by hand.

    python -m para.tracking.dashboard --entity ENTITY --project para              # save a report (needs `wandb login`)
    python -m para.tracking.dashboard --entity ENTITY --project para --workspace  # ... and a saved workspace view
    python -m para.tracking.dashboard --entity ENTITY --project para --dry-run    # print the panels, no network

The panels read what para.tracking.loggers logs (group = method = `config.method.name`):

- Scores per method: bars of summary `eval/dino`, `eval/clip_i`, `eval/clip_t`, grouped by method, mean ± stderr
  over the runs (subjects × seeds) in the run set;
- Fidelity vs alignment: scatter, x = `eval/clip_t` (prompt alignment), y = `eval/dino` (subject fidelity), one
  point per run (the paper's trade-off plot);
- Loss curves per method: `train/loss` vs step, grouped by method (mean line, min-max band), smoothed;
- Sample grids side by side: `validation/samples` (one grid per logged step) with runs as columns, steps as rows;
- Per-prompt scores: the `eval/per_prompt` tables (prompt, image grid, scores) of all runs, merged.

The run set holds the finished runs of one base model (tag `model:<name>`; `--model`, default sdxl: Table 1).
Runs scored with random-weight backbones carry `eval/backbones_pretrained_all = false` in their summary
(`--pretrained-only` hides them).
"""

from __future__ import annotations

import argparse
from typing import Any

SCORES = ("eval/dino", "eval/clip_i", "eval/clip_t")
TITLE = "PaRa vs LoRA vs DreamBooth"


def _import() -> tuple[Any, Any, Any]:
    try:
        import wandb_workspaces.expr as expr
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
    except ImportError as err:
        raise SystemExit("the dashboard needs wandb-workspaces: pip install wandb-workspaces==0.4.13") from err
    return wr, ws, expr


def run_filters(model: str, pretrained_only: bool) -> list[Any]:
    """Finished runs of one base model (and, if asked, only those scored with pretrained backbones)."""
    _, _, expr = _import()
    # the `model:<name>` tag (para.tracking.loggers) rather than the nested config key: tags filter the same everywhere
    filters = [expr.Tags().isin([f"model:{model}"]), expr.Metric("State") == "finished"]
    if pretrained_only:
        filters.append(expr.Summary("eval/backbones_pretrained_all") == True)  # noqa: E712 (builds a filter)
    return filters


def panels() -> dict[str, list[Any]]:
    """The panels by section; the same objects go into the report and into the workspace."""
    wr, _, _ = _import()
    by_method = wr.Config("method.name")
    return {
        "Scores": [
            wr.BarPlot(
                title="Scores per method (mean ± stderr over subjects)",
                metrics=list(SCORES),
                groupby=by_method,
                groupby_aggfunc="mean",
                groupby_rangefunc="stderr",
                orientation="v",
                layout=wr.Layout(w=12, h=8),
            ),
            wr.ScatterPlot(
                title="Fidelity vs alignment (one point per run)",
                x=wr.SummaryMetric("eval/clip_t"),
                y=wr.SummaryMetric("eval/dino"),
                layout=wr.Layout(w=12, h=8),
            ),
        ],
        "Training": [
            wr.LinePlot(
                title="train/loss per method (mean, min-max)",
                x="Step",
                y=["train/loss"],
                groupby=by_method,
                groupby_aggfunc="mean",
                groupby_rangefunc="minmax",
                smoothing_type="exponential",
                smoothing_factor=0.6,
                layout=wr.Layout(w=12, h=8),
            ),
            wr.LinePlot(
                title="Training speed (it/s)",
                x="Step",
                y=["train/it_per_s"],
                groupby=by_method,
                groupby_aggfunc="mean",
                groupby_rangefunc="stderr",
                layout=wr.Layout(w=12, h=8),
            ),
        ],
        "Samples": [
            wr.MediaBrowser(
                title="Validation grids: runs side by side, one row per step",
                media_keys=["validation/samples"],
                mode="grid",
                grid_x_axis="run",
                grid_y_axis="step",
                layout=wr.Layout(w=24, h=12),
            ),
            wr.WeavePanelSummaryTable(table_name="eval/per_prompt", layout=wr.Layout(w=24, h=12)),
        ],
    }


def build_report(entity: str, project: str, model: str = "sdxl", pretrained_only: bool = False) -> Any:
    """The report object (nothing is sent until `.save()`)."""
    wr, _, _ = _import()
    runset = wr.Runset(
        entity=entity, project=project, name=f"{model} runs", filters=run_filters(model, pretrained_only)
    )
    blocks: list[Any] = [
        wr.MarkdownBlock(
            text=f"Runs of `model={model}`, grouped by method (`config.method.name` = W&B group). "
            "Scores: DINO and CLIP-I (subject fidelity), CLIP-T (prompt alignment)."
        )
    ]
    for section, section_panels in panels().items():
        blocks += [wr.H2(text=section), wr.PanelGrid(runsets=[runset], panels=section_panels)]
    return wr.Report(
        entity=entity,
        project=project,
        title=f"{TITLE} ({model})",
        width="fluid",
        blocks=blocks,
        description="Generated by `python -m para.tracking.dashboard`; edit that file, not the report.",
    )


def build_workspace(entity: str, project: str, model: str = "sdxl", pretrained_only: bool = False) -> Any:
    """A saved workspace view with the same panels, one section each (nothing is sent until `.save()`)."""
    _, ws, _ = _import()
    sections = [
        ws.Section(name=name, panels=section_panels, is_open=True) for name, section_panels in panels().items()
    ]
    return ws.Workspace(
        entity=entity,
        project=project,
        name=f"{TITLE} ({model})",
        sections=sections,
        runset_settings=ws.RunsetSettings(filters=run_filters(model, pretrained_only)),
    )


def describe(report: Any) -> str:
    """One line per panel: what a dry run prints."""
    lines = [f"report {report.title!r} -> {report.entity}/{report.project}"]
    for block in report.blocks:
        for panel in getattr(block, "panels", []):
            fields = {
                k: v
                for k, v in vars(panel).items()
                if k in ("metrics", "x", "y", "media_keys", "table_name", "groupby")
            }
            lines.append(f"  {type(panel).__name__}: {getattr(panel, 'title', None) or ''} {fields}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entity", required=True, help="W&B entity (user or team)")
    parser.add_argument("--project", default="para", help="W&B project (logger.project)")
    parser.add_argument("--model", default="sdxl", help="base model of the runs shown (config model.name)")
    parser.add_argument("--pretrained-only", action="store_true", help="hide runs scored with random backbones")
    parser.add_argument("--workspace", action="store_true", help="also save a workspace view")
    parser.add_argument("--dry-run", action="store_true", help="build and print the panels; send nothing")
    args = parser.parse_args(argv)
    report = build_report(args.entity, args.project, args.model, args.pretrained_only)
    workspace = build_workspace(args.entity, args.project, args.model, args.pretrained_only)
    print(describe(report))
    if args.dry_run:
        return
    report.save()
    print(f"report: {report.url}")
    if args.workspace:
        workspace.save()
        print(f"workspace: {workspace.url}")


if __name__ == "__main__":
    main()

"""User-study sheets (PAPER.md §5.6): `make study-sheet`.

    python -m experiments.study_sheet [hydra overrides]        # parameters: conf/experiment/study_sheet.yaml

1. finds (or trains, with Table 1's preset and folders) one run per subject and method;
2. pairs image i of prompt p of the two methods (the same starting noise), shuffles the questions and puts each
   method left or right at random (seeded: the same seed gives the same sheet and key);
3. writes `<out>/sheet/index.html` + `sheet/images/` (anonymous file names, no method anywhere: this folder is
   what participants get), and, kept apart, `answer_key.{csv,json,md}`, `grid.png`, `provenance.json`;
4. with `experiment.responses=<csv>` (columns question, choice = L | R | none, optional participant), tallies
   the answers against the key → `preferences.{csv,md}` (share of answers preferring each method, per subject).
"""

from __future__ import annotations

import html
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image

from eval.score import load_image, real_photo_paths
from experiments.common import Experiment, load_experiment, main_entry, subject_info, train
from experiments.report import banners, flags, label_grid, write_provenance, write_table
from para.core.io import atomic_write_json, atomic_write_text
from para.core.sampling import read_prompts

CONF_PRESETS = Path(__file__).resolve().parent.parent / "conf" / "experiment"
CHOICES = ("L", "R", "none")


@dataclass
class Params:
    name: str = "study_sheet"
    out: str = "runs/study_sheet"
    subjects: list[str] = field(default_factory=lambda: ["dog", "cat", "backpack", "teapot"])
    methods: list[str] = field(default_factory=lambda: ["para", "lora"])
    steps: list[int | None] = field(default_factory=lambda: [None, None])
    training_preset: str | None = "table1"
    images_per_prompt: int = 1
    shuffle_seed: int = 0
    question: str = "Which image shows the subject of the reference photos better, in the scene the text describes?"
    responses: str | None = None


def check(p: Params) -> None:
    if len(p.methods) != 2 or len(p.steps) != 2:
        raise ValueError(f"experiment.methods={p.methods} / steps={p.steps}: a sheet compares exactly two methods")
    if p.images_per_prompt < 1:
        raise ValueError(f"experiment.images_per_prompt={p.images_per_prompt} is out of range; expected >= 1")
    if p.training_preset and not (CONF_PRESETS / f"{p.training_preset}.yaml").is_file():
        raise ValueError(
            f"experiment.training_preset={p.training_preset}: no conf/experiment/{p.training_preset}.yaml"
        )


def run_folders(exp: Experiment) -> dict[tuple[str, str], Path]:
    """(method, subject) → a finished run folder with samples, trained through the harness if missing."""
    p = exp.params
    folders = {}
    for subject in p.subjects:
        for method, steps in zip(p.methods, p.steps, strict=True):
            budget = [f"steps={steps}"] if steps is not None else []
            folders[method, subject] = train(
                exp, f"method={method}", f"subject={subject}", "sample.enabled=true", *budget, preset=p.training_preset
            )
    return folders


def questions(exp: Experiment, folders: dict[tuple[str, str], Path]) -> pd.DataFrame:
    """The answer key: one row per question, shuffled, with the method shown left and right."""
    p = exp.params
    a, b = p.methods
    rng = random.Random(p.shuffle_seed)
    pairs = []
    for subject in p.subjects:
        samples = {m: folders[m, subject] / "samples" for m in p.methods}
        entries = {m: {e["prompt_index"]: e for e in read_prompts(samples[m])} for m in p.methods}
        for index in sorted(entries[a].keys() & entries[b].keys()):
            shared = [n for n in entries[a][index]["images"] if n in entries[b][index]["images"]]
            for name in shared[: p.images_per_prompt]:
                pairs.append(
                    {
                        "subject": subject,
                        "prompt": entries[a][index]["clean_prompt"],
                        "image": name,
                        "source_a": str(samples[a] / name),
                        "source_b": str(samples[b] / name),
                    }
                )
    if not pairs:
        raise ValueError(f"no prompt has samples from both {a} and {b}; check the runs' samples/ folders")
    rng.shuffle(pairs)
    rows = []
    for number, pair in enumerate(pairs, start=1):
        a_left = rng.random() < 0.5
        rows.append(
            {
                "question": f"q{number:03d}",
                "subject": pair["subject"],
                "prompt": pair["prompt"],
                "image": pair["image"],
                "left": a if a_left else b,
                "right": b if a_left else a,
                "left_source": pair["source_a" if a_left else "source_b"],
                "right_source": pair["source_b" if a_left else "source_a"],
            }
        )
    return pd.DataFrame(rows)


def write_sheet(exp: Experiment, key: pd.DataFrame, sheet: Path) -> Path:
    """`sheet/index.html` and its images, named by question only (q001_L.png), never by method."""
    if sheet.exists():
        shutil.rmtree(sheet)
    (sheet / "images").mkdir(parents=True)
    refs = {}
    for subject in exp.params.subjects:
        refs[subject] = []
        for k, path in enumerate(real_photo_paths(exp.cfg.data.root, subject)[:3]):
            image = load_image(path)
            image.thumbnail((256, 256))
            save_pixels(image, sheet / "images" / f"ref_{subject}_{k}.png")
            refs[subject].append(f"images/ref_{subject}_{k}.png")
    sections = []
    for row in key.itertuples(index=False):
        for side in ("L", "R"):
            source = Path(getattr(row, "left_source" if side == "L" else "right_source"))
            save_pixels(load_image(source), sheet / "images" / f"{row.question}_{side}.png")
        class_word = subject_info(row.subject).class_word
        sections.append(
            SECTION.format(
                q=row.question,
                n=int(row.question[1:]),
                prompt=html.escape(row.prompt),
                cls=html.escape(class_word),
                refs="".join(f'<img src="{r}" alt="reference">' for r in refs[row.subject]),
            )
        )
    page = PAGE.format(question=html.escape(exp.params.question), n=len(key), sections="\n".join(sections))
    return atomic_write_text(sheet / "index.html", page)


def save_pixels(image: Image.Image, path: Path) -> None:
    """The pixels only, as PNG: a sample's text chunks, EXIF or colour profile (ComfyUI, A1111 and other tools
    write the model, adapter and settings there) would tell a participant which method made it."""
    Image.frombytes(image.mode, image.size, image.tobytes()).save(path, format="PNG")


def tally(key: pd.DataFrame, responses: pd.DataFrame) -> pd.DataFrame:
    """Share of answers preferring each method, overall and per subject; unknown questions/choices are refused."""
    unknown = sorted(set(responses["question"]) - set(key["question"]))
    if unknown:
        raise ValueError(f"responses name questions not in the answer key: {unknown[:5]}")
    bad = sorted(set(responses["choice"].astype(str)) - set(CHOICES))
    if bad:
        raise ValueError(f"responses hold choices {bad}; expected one of {list(CHOICES)}")
    merged = responses.merge(key, on="question")
    merged["preferred"] = [
        r.left if r.choice == "L" else r.right if r.choice == "R" else "no preference"
        for r in merged.itertuples(index=False)
    ]
    tables = []
    for scope, group in [("all", merged), *merged.groupby("subject")]:
        counts = group["preferred"].value_counts()
        tables.append(
            pd.DataFrame(
                {
                    "subject": scope,
                    "preferred": counts.index,
                    "answers": counts.values,
                    "share": counts.values / len(group),
                }
            )
        )
    return pd.concat(tables, ignore_index=True)


def run(argv: Sequence[str]) -> pd.DataFrame:
    """Build the sheet and its key (and tally responses when given); returns the answer key."""
    exp = load_experiment("study_sheet", Params, argv)
    p = exp.params
    check(p)
    folders = run_folders(exp)
    key = questions(exp, folders)
    write_sheet(exp, key, exp.out / "sheet")
    flag = flags(exp, None)
    notes = [*banners(flag), "SECRET: do not hand this file out with the sheet (it says which side is which method)"]
    write_table(key, exp.out, "answer_key", "Study sheet answer key", notes)
    atomic_write_json(exp.out / "answer_key.json", key.to_dict(orient="records"))
    shown = key.head(12)
    rows = [
        (f"{r.question} {r.prompt}", [load_image(Path(r.left_source)), load_image(Path(r.right_source))])
        for r in shown.itertuples(index=False)
    ]
    label_grid(rows, ["left", "right"]).save(exp.out / "grid.png")
    extra = {}
    if p.responses:
        preferences = tally(key, pd.read_csv(p.responses))
        write_table(preferences, exp.out, "preferences", "Study preferences", banners(flag))
        extra["responses"] = p.responses
    write_provenance(exp, exp.out, flags=flag, runs={f"{m}/{s}": str(f) for (m, s), f in folders.items()}, **extra)
    return key


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Image comparison</title>
<style>body{{font-family:sans-serif;max-width:980px;margin:auto;padding:1em}} section{{border-top:1px solid #ccc;
padding:1em 0}} .refs img{{height:96px;margin-right:4px}} .pair{{display:flex;gap:16px}} .pair img{{width:440px;
max-width:45vw}} figure{{margin:0;text-align:center}}</style></head><body>
<h1>Image comparison</h1>
<p>{question} For each of the {n} questions, look at the reference photos and the text, then pick the left or
the right image (or "no preference"). When done, press the button at the bottom to save your answers.</p>
<form id="answers">
{sections}
<button type="button" onclick="save()">Download my answers (CSV)</button>
</form>
<script>
function save() {{
  const rows = [["question", "choice"]];
  document.querySelectorAll("section[data-q]").forEach(s => {{
    const c = s.querySelector("input:checked"); rows.push([s.dataset.q, c ? c.value : ""]); }});
  const blob = new Blob([rows.map(r => r.join(",")).join("\\n") + "\\n"], {{type: "text/csv"}});
  const a = document.createElement("a"); a.href = URL.createObjectURL(blob); a.download = "answers.csv"; a.click();
}}
</script></body></html>
"""

SECTION = """<section data-q="{q}"><h2>Question {n}</h2>
<p>Text: <b>{prompt}</b> — reference photos of the {cls}:</p><div class="refs">{refs}</div>
<div class="pair"><figure><img src="images/{q}_L.png" alt="left"><figcaption><label><input type="radio"
name="{q}" value="L"> left</label></figcaption></figure><figure><img src="images/{q}_R.png" alt="right">
<figcaption><label><input type="radio" name="{q}" value="R"> right</label></figcaption></figure></div>
<label><input type="radio" name="{q}" value="none"> no preference</label></section>"""


if __name__ == "__main__":
    main_entry(run)

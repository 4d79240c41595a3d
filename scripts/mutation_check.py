"""`make mutation-check`: each planted harness bug of tests/mutations.py against the random-weight suite and against
the world's known-answer tests; the table goes to docs/world.md ("Mutation check") and runs/world/mutations.json.

A bug is *caught* when a test fails with it: one of the world's known answers, or a test of the random-weight suite
(an oracle such as diffusers' own encoding of the prompt). The bugs only the world catches are why it exists. Runs
each suite once per bug (about 5 minutes a bug on 2 cores; --together: the random-weight suite once).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from mutations import MUTATIONS  # noqa: E402
from test_world_known_answers import UNSEEN  # noqa: E402

from world.report import DOC, replace_section  # noqa: E402

KNOWN = "tests/test_world_known_answers.py"
SUMMARY = re.compile(r"(\d+) (passed|failed|error|errors)")


def pytest(args: list[str]) -> tuple[dict[str, int], list[str]]:
    """Counts by outcome and the ids of the failed tests."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", *args]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True).stdout
    counts: dict[str, int] = {}
    for n, outcome in SUMMARY.findall(out.splitlines()[-1] if out.strip() else ""):
        counts[outcome.rstrip("s")] = int(n)
    failed = [
        line.split()[1]
        for line in out.splitlines()
        if line.startswith(("FAILED tests/", "ERROR tests/"))  # not a tested command's own "FAILED <folder>"
    ]
    return counts, sorted(set(failed))


def check(name: str, jobs: int, together: tuple[dict, list[str]] | None) -> dict:
    """One bug: the random-weight suite with it in place and the world's known answers with it. With `together`
    (the suite's result with every bug at once), only the files of the tests that failed then are run again with
    this bug alone: a test file that passes with every bug in place is taken to pass with each."""
    if together is None:
        suite = pytest(["-m", "not slow", "-n", str(jobs), "--ignore", KNOWN, "--mutation", name])
    elif together[1]:  # the files (a fixture's error fails a whole file) with a failure, this bug alone
        files = sorted({test.split("::")[0] for test in together[1]})
        counts, failed = pytest([*files, "-m", "not slow", "-n", str(jobs), "--mutation", name])
        passed = sum(together[0].values()) - len(failed)
        suite = ({"passed": passed, **({"failed": len(failed)} if failed else {})}, failed)
    else:
        suite = together
    known, known_failed = pytest([KNOWN, "-m", "slow", "-k", "learns", "-n", str(jobs), "--mutation", name])
    return {
        "bug": name,
        "doc": " ".join(MUTATIONS[name].__doc__.split()),
        "random_weight_suite": suite[0],
        "random_weight_failures": suite[1],
        "known_answers": known,
        "caught_by": known_failed,
        "caught": bool(known_failed or suite[1]),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| planted bug | random-weight suite (tests that fail) | world known answers (tests that fail) | caught |",
        "|---|---|---|---|",
    ]
    for row in rows:
        suite = ", ".join(f"{n} {k}" for k, n in row["random_weight_suite"].items())
        if row["random_weight_failures"]:  # the random-weight suite sees this bug after all: which tests
            shown = ", ".join(f"`{t.split('::', 1)[1]}`" for t in row["random_weight_failures"][:3])
            more = len(row["random_weight_failures"]) - 3
            suite += f" ({shown}{f' and {more} more' if more > 0 else ''})"
        world = "<br>".join(f"`{t.split('::', 1)[1]}`" for t in row["caught_by"])
        world = world or f"none: {UNSEEN.get(row['bug'], 'no known answer breaks')}"
        caught = "yes" if row["caught_by"] or row["random_weight_failures"] else "**no**"
        lines.append(f"| `{row['bug']}`: {row['doc']} | {suite} | {world} | {caught} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/mutation_check.py", description=__doc__.splitlines()[0])
    parser.add_argument("--bugs", nargs="+", default=sorted(MUTATIONS), choices=sorted(MUTATIONS))
    parser.add_argument("--jobs", type=int, default=2, help="pytest-xdist workers for the random-weight suite")
    parser.add_argument(
        "--together", action="store_true", help="run the random-weight suite once with every bug in place"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "world" / "mutations.json")
    args = parser.parse_args(argv)
    together = None
    if args.together:  # one run of the random-weight suite with every bug in place: ~5 min instead of ~5 per bug
        print(f"the random-weight suite with {len(args.bugs)} bugs at once ...", flush=True)
        together = pytest(
            ["-m", "not slow", "-n", str(args.jobs), "--ignore", KNOWN, "--mutation", ",".join(args.bugs)]
        )
    rows = []
    for name in args.bugs:
        print(f"mutation {name} ...", flush=True)
        rows.append(check(name, args.jobs, together))
        print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    if args.bugs == sorted(MUTATIONS):  # the documented table covers every bug
        DOC.write_text(replace_section(DOC.read_text(), "mutations", table(rows)))
    caught = all(row["caught_by"] or row["random_weight_failures"] for row in rows)
    print(table(rows))
    return 0 if caught else 1


if __name__ == "__main__":
    sys.exit(main())

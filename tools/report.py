"""Summarise finished runs (their results.json) as a markdown table, optionally appended to RESULTS.md.

    python tools/report.py runs/alr-cpu/ce runs/alr-cpu/alr --title "..." --command "..." --append RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable without installing it
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.outputs import write_atomic  # noqa: E402


def load_results(run_dir: Path) -> dict:
    path = run_dir / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the run has not finished (resume it with --resume)")
    return json.loads(path.read_text())


def method_label(results: dict) -> str:
    params = results["config"]["method"]["params"]
    if results["method"] == "alr" and params.get("lam", 0.2) == 0:
        return "selc (alr, lam=0)"
    return results["method"]


def table(runs: list[dict]) -> str:
    lines = ["| run | method | model | label set (noise rate) | epochs | best test acc | last test acc | "
             "train time | img/s |", "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in runs:
        rate = r.get("label_set_noise_rate")
        label = f"{r['label_set']} ({rate:.3f})" if rate is not None else r["label_set"]
        lines.append(
            f"| {r['run']} | {method_label(r)} | {r['model']} | {label} | {r['epochs']} | "
            f"{100 * r['best_test_acc']:.2f} | {100 * r['last_test_acc']:.2f} | {r['train_seconds'] / 60:.1f} min | "
            f"{r['images_per_s']:.0f} |"
        )
    return "\n".join(lines)


def section(runs: list[dict], title: str, command: str | None, paper: str | None) -> str:
    hw = runs[0]["hardware"]
    gpus = ", ".join(hw["gpus"]) or "no GPU"
    parts = [f"## {title}", "", table(runs), ""]
    if paper:
        parts.append(f"Published (for reference): {paper}.")
    parts.append(f"Hardware: {hw['cpu']}, {hw['cpu_cores']} cores, {gpus}, {hw['num_processes']} process(es); "
                 f"torch {hw['torch']}; code {runs[0]['code_version']['commit'][:10]}; {date.today().isoformat()}.")
    if command:
        parts.append(f"Command: `{command}`")
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Markdown table of finished runs (results.json).")
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--title", default="Results", help="section heading")
    parser.add_argument("--command", help="the command that produced the runs")
    parser.add_argument("--paper", help="published numbers to quote beside ours")
    parser.add_argument("--append", type=Path, help="append the section to this markdown file")
    args = parser.parse_args(argv)
    try:
        runs = [load_results(r) for r in args.runs]
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = section(runs, args.title, args.command, args.paper)
    print(text)
    if args.append:
        existing = args.append.read_text() if args.append.exists() else "# Results\n\n"
        write_atomic(args.append, upsert_section(existing, text, args.title))
    return 0


def upsert_section(document: str, text: str, title: str) -> str:
    """Appends `text`, or, when a section with the same heading exists, replaces its generated part
    (heading to the Hardware / Command lines) and keeps the prose written below it: re-running an
    experiment script updates its table instead of adding a second one."""
    heading = f"## {title}\n"
    start = document.find(heading)
    if start < 0:
        return document.rstrip("\n") + "\n\n" + text
    next_heading = document.find("\n## ", start + len(heading))
    end_of_section = len(document) if next_heading < 0 else next_heading + 1
    block = document[start:end_of_section]
    last = max(block.rfind("\nCommand: `"), block.rfind("\nHardware: "))
    if last < 0:
        raise ValueError(f"section {title!r} has no generated Hardware/Command lines to replace; rename one of them")
    end = start + block.index("\n", last + 1) + 1 if "\n" in block[last + 1:] else end_of_section
    return document[:start] + text + document[end:]


if __name__ == "__main__":
    sys.exit(main())

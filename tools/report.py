"""Summarise finished runs (their results.json) as a markdown table, optionally appended to RESULTS.md.

    python tools/report.py runs/alr-cpu/ce runs/alr-cpu/alr --title "..." --command "..." --append RESULTS.md
    python tools/report.py runs/demo/ce runs/demo/selc --plot runs/demo/test_accuracy.png
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


# Per-epoch keys every run has; any other key in the last epoch's row is the method's own diagnostic.
COMMON_KEYS = {"epoch", "lr", "train_samples", "train_loss", "train_acc_noisy", "train_acc_clean", "memorised",
               "epoch_seconds", "images_per_s", "test_acc", "test_top5"}
LAST_EPOCHS = 5  # CE's accuracy swings several points per epoch while it memorises: average the tail


def tail_mean(results: dict) -> float:
    accs = [r["test_acc"] for r in results["history"] if "test_acc" in r]
    return sum(accs[-LAST_EPOCHS:]) / len(accs[-LAST_EPOCHS:])


def diagnostics(results: dict, most: int = 5) -> str:
    """The method's own numbers of the last epoch, detection AUROCs first; timings are left out."""
    last = results["history"][-1]
    keys = [k for k, v in last.items() if k not in COMMON_KEYS and isinstance(v, (int, float))
            and not k.endswith(("_acc", "_top5", "_seconds"))]
    keys.sort(key=lambda k: "auroc" not in k)  # stable: otherwise the method's own order
    return ", ".join(f"{k} {last[k]:.3f}" for k in keys[:most]) or "-"


def table(runs: list[dict]) -> str:
    """One row per run; "vs first" compares the mean of the last 5 test accuracies with the first run's."""
    lines = ["| run | method | model | label set (noise rate) | epochs | best test acc | last test acc | "
             f"mean last {LAST_EPOCHS} | vs first | memorised | diagnostics (last epoch) | train time | img/s |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    reference = tail_mean(runs[0])
    for r in runs:
        rate = r.get("label_set_noise_rate")
        label = f"{r['label_set']} ({rate:.3f})" if rate is not None else r["label_set"]
        memorised = r["history"][-1].get("memorised")
        lines.append(
            f"| {r['run']} | {method_label(r)} | {r['model']} | {label} | {r['epochs']} | "
            f"{100 * r['best_test_acc']:.2f} | {100 * r['last_test_acc']:.2f} | {100 * tail_mean(r):.2f} | "
            f"{100 * (tail_mean(r) - reference):+.2f} | {'-' if memorised is None else f'{100 * memorised:.1f} %'} | "
            f"{diagnostics(r)} | {r['train_seconds'] / 60:.1f} min | {r['images_per_s']:.0f} |"
        )
    return "\n".join(lines)


def plot_curves(runs: list[dict], path: Path) -> None:
    """Test accuracy per epoch of every run in one figure (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in runs:
        rows = [h for h in r["history"] if "test_acc" in h]
        ax.plot([h["epoch"] for h in rows], [100 * h["test_acc"] for h in rows], label=f"{r['run']} ({method_label(r)})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{runs[0]['dataset']}, {runs[0]['label_set']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    parser.add_argument("--plot", type=Path, help="write the runs' test-accuracy curves to this PNG")
    args = parser.parse_args(argv)
    try:
        runs = [load_results(r) for r in args.runs]
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = section(runs, args.title, args.command, args.paper)
    print(text)
    if args.plot:
        plot_curves(runs, args.plot)
        print(f"test-accuracy curves: {args.plot}")
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

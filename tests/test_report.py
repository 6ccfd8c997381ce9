"""tools/report.py: the regime columns (tail mean, difference to the first run, memorised, diagnostics)."""

from __future__ import annotations

from support.tools import load_tool

report = load_tool("report")
plot_curves, table = report.plot_curves, report.table


def _results(run: str, accs: list[float], **last) -> dict:
    history = [{"epoch": i + 1, "test_acc": a, "memorised": 0.5, "train_loss": 1.0} for i, a in enumerate(accs)]
    history[-1].update(last)
    return {"run": run, "method": run, "model": "m", "label_set": "sym", "label_set_noise_rate": 0.4,
            "epochs": len(accs), "best_test_acc": max(accs), "last_test_acc": accs[-1], "train_seconds": 60.0,
            "images_per_s": 100.0, "config": {"method": {"params": {}}}, "history": history}


def test_table_reports_tail_mean_difference_memorised_and_method_diagnostics():
    ce = _results("ce", [0.1, 0.5, 0.4, 0.3, 0.2, 0.1, 0.5])  # last 5: 0.4 0.3 0.2 0.1 0.5 -> 0.30
    alr = _results("alr", [0.5] * 7, corrected=0.25, broken=0.125)
    rows = table([ce, alr]).splitlines()[2:]
    ce_cells = [c.strip() for c in rows[0].split("|")]
    alr_cells = [c.strip() for c in rows[1].split("|")]
    assert ce_cells[8:11] == ["30.00", "+0.00", "50.0 %"]
    assert alr_cells[8:12] == ["50.00", "+20.00", "50.0 %", "corrected 0.250, broken 0.125"]
    assert ce_cells[11] == "-"  # CE has no diagnostics of its own



def test_diagnostics_put_aurocs_first_and_leave_timings_out():
    run = _results("surrogate", [0.5], weight_right=0.9, pass_seconds=7.0, weight_wrong=0.2, weight_auroc=0.75)
    assert report.diagnostics(run) == "weight_auroc 0.750, weight_right 0.900, weight_wrong 0.200"


def test_plot_curves_writes_a_png(tmp_path):
    runs = [_results("ce", [0.2, 0.4, 0.3]), _results("selc", [0.2, 0.4, 0.45])]
    runs[0]["dataset"] = runs[1]["dataset"] = "d"
    plot_curves(runs, tmp_path / "sub" / "curves.png")
    assert (tmp_path / "sub" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""End-to-end CPU runs of training/run.py on a tiny converted dataset."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from support.launch import launch_cpu
from support.tools import load_tool
from state.reader import StateReader
from training.run import main
from training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
report = load_tool("report")
report_main, upsert_section = report.main, report.upsert_section


def _args(dataset: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--config", str(ROOT / "training/configs/demo_cpu.yaml"),
        f"data.root={dataset.parent}", f"data.name={dataset.name}", f"out_dir={out}", "run_name=r",
        "data.batch_size=32", "data.eval_batch_size=64", "epochs=2", *extra,
    ]


def _history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "r" / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_run_writes_outputs(tiny_dataset, tmp_path):
    assert main(_args(tiny_dataset, tmp_path)) == 0
    run = tmp_path / "r"
    results = json.loads((run / "results.json").read_text())
    manifest = json.loads((tiny_dataset / "manifest.json").read_text())
    assert results["label_set_sha256"] == manifest["splits"]["train"]["label_sets"]["sym-0.40-s0"]["sha256"]
    assert results["epochs"] == 2 and len(results["history"]) == 2
    assert 0.0 <= results["best_test_acc"] <= 1.0 and results["last_test_acc"] == results["history"][-1]["test_acc"]
    assert results["code_version"]["commit"] and results["hardware"]["cpu_cores"]
    row = results["history"][0]
    n_train = manifest["splits"]["train"]["num_samples"]
    assert row["train_samples"] == n_train  # every training sample once per epoch
    for key in ("train_loss", "train_acc_noisy", "train_acc_clean", "memorised", "images_per_s", "test_top5"):
        assert key in row
    assert (run / "config.yaml").is_file()
    assert len(_history(tmp_path)) == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch-0002"]

    results_md = tmp_path / "RESULTS.md"
    assert report_main([str(run), "--title", "T", "--append", str(results_md)]) == 0
    assert report_main([str(run), "--append", str(results_md)]) == 0
    text = results_md.read_text()
    assert text.count("## ") == 2 and "| r | ce | tiny_cnn | sym-0.40-s0" in text
    assert report_main([str(tmp_path / "missing")]) == 2


def test_report_replaces_its_own_section_and_keeps_the_prose_below():
    doc = ("# Results\n\n## A\n\n| old |\nHardware: x\nCommand: `a.sh`\n\nWhy A looks so.\n\n"
           "## B\n\n| b |\nHardware: y\n")
    new_a = "## A\n\n| new |\nHardware: z\nCommand: `a.sh`\n"
    out = upsert_section(doc, new_a, "A")
    assert out.count("## A") == 1 and "| new |" in out and "| old |" not in out
    assert "Why A looks so." in out and out.endswith("## B\n\n| b |\nHardware: y\n")
    new_b = "## B\n\n| b2 |\nHardware: w\n"
    assert upsert_section(out, new_b, "B").endswith("## B\n\n| b2 |\nHardware: w\n")  # last section, no Command
    assert upsert_section(doc, "## C\n", "C").endswith("Hardware: y\n\n## C\n")  # a new title is appended


@pytest.mark.slow
def test_run_resume_matches_uninterrupted_run(tiny_dataset, tmp_path, monkeypatch):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert main(_args(tiny_dataset, straight, "deterministic=true")) == 0

    original = Trainer._train_epoch

    def crash_in_second_epoch(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt("simulated crash")
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "_train_epoch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        main(_args(tiny_dataset, broken, "deterministic=true"))
    assert [p.name for p in (broken / "r" / "checkpoints").iterdir()] == ["epoch-0001"]
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    assert main(_args(tiny_dataset, broken, "deterministic=true", "--resume")) == 0

    def comparable(rows):
        return [{k: v for k, v in r.items() if k not in ("epoch_seconds", "images_per_s")} for r in rows]

    assert comparable(_history(broken)) == comparable(_history(straight))


def test_run_evaluates_extra_test_splits_top1_and_top5(tiny_dataset, tmp_path):
    """Every test split is evaluated each epoch; top-5 is at least top-1; the headline stays test_acc."""
    assert main(_args(tiny_dataset, tmp_path, "epochs=1", "data.extra_test_splits=[train]")) == 0
    row = _history(tmp_path)[0]
    assert row["test_top5"] >= row["test_acc"] and row["train_top5"] >= row["train_acc"]
    assert 0 < row["test_top5"] <= 1 and row["train_acc"] != row["test_acc"]


def test_run_refuses_to_overwrite_and_to_resume_nothing(tiny_dataset, tmp_path, capsys):
    assert main(_args(tiny_dataset, tmp_path, "--resume")) == 2
    assert "no checkpoint" in capsys.readouterr().err
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "results.json").write_text("{}")
    assert main(_args(tiny_dataset, tmp_path)) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_run_unknown_label_set_names_it(tiny_dataset, tmp_path, capsys):
    assert main(_args(tiny_dataset, tmp_path, "data.label_set=sym-0.99-s7")) == 2
    err = capsys.readouterr().err
    assert "sym-0.99-s7" in err and "make_shards" in err


@pytest.mark.slow
def test_run_two_processes_sees_every_sample_once(tiny_dataset, tmp_path):
    """Two CPU processes through `accelerate launch` (gloo): metrics are reduced over both."""
    proc = launch_cpu(2, ROOT / "training/run.py", *_args(tiny_dataset, tmp_path, "epochs=1", "cpu=true"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    manifest = json.loads((tiny_dataset / "manifest.json").read_text())
    assert results["hardware"]["num_processes"] == 2
    assert results["history"][0]["train_samples"] == manifest["splits"]["train"]["num_samples"]
    assert "test_acc" in results["history"][0]


ALR = ("method.name=alr", "method.params.warmup_epochs=1", "deterministic=true")


@pytest.mark.slow
def test_run_two_processes_on_class_balanced_subsets_in_stream_mode(tiny_dataset, tmp_path):
    """data.epoch_samples: each epoch a fresh class-balanced subset, read by idx through DALI (or the
    fallback), split over 2 processes in equal steps, with a method that keeps per-sample state."""
    proc = launch_cpu(2, ROOT / "training/run.py", *_args(
        tiny_dataset, tmp_path, "cpu=true", "data.loader=stream", "data.batch_size=16", "data.epoch_samples=100",
        *ALR))
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = json.loads((tmp_path / "r" / "results.json").read_text())["history"]
    # ceil(100 / 16) = 7 batches of 16 over 2 processes: 4 steps each, 128 samples an epoch
    assert [row["train_samples"] for row in history] == [128, 128]
    assert np.isfinite(history[-1]["train_loss"]) and "test_acc" in history[-1]


@pytest.mark.slow
def test_run_killed_mid_epoch_resumes_to_the_same_state(tiny_dataset, tmp_path):
    """kill -9 during epoch 3 (after an epoch of refinement), then --resume: same metrics and sample-store
    state as an uninterrupted run."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main(_args(tiny_dataset, straight, *ALR, "epochs=4")) == 0

    cmd = [sys.executable, str(ROOT / "training/run.py"), *_args(tiny_dataset, killed, *ALR, "epochs=4")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = killed / "r" / "checkpoints" / "epoch-0002"
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed / "r" / "results.json").exists()

    assert main(_args(tiny_dataset, killed, *ALR, "epochs=4", "--resume")) == 0

    def comparable(rows):
        return [{k: v for k, v in r.items() if k not in ("epoch_seconds", "images_per_s")} for r in rows]

    assert comparable(_history(killed)) == comparable(_history(straight))
    final = {run: StateReader(run / "r" / "state.zarr").array("soft_target") for run in (straight, killed)}
    np.testing.assert_array_equal(final[straight], final[killed])
    assert "corrected" in _history(killed)[-1]

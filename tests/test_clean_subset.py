"""The clean meta subset: left out of the noisy stream, served to methods that ask for it."""

from pathlib import Path

import numpy as np
import pytest
import torch.nn.functional as F

from pipeline.load.loader import dali_available
from training import methods
from training.config import load_config
from training.methods.base import DataNeeds, Method
from training.run import main
from training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
MASK = "clean-subset-20-s0"


class CleanProbe(Method):
    """CE that also draws one clean batch per step and records what it saw."""

    name = "clean_probe"
    needs = DataNeeds(clean_subset=True)
    seen_noisy: list = []
    seen_clean: list = []

    def loss(self, logits, labels, batch, run):
        clean = run.clean.next_batch()
        CleanProbe.seen_noisy.append(batch.idx.tolist())
        CleanProbe.seen_clean.append((clean.idx.tolist(), run.clean.labels[clean.idx].tolist()))
        return {"loss": F.cross_entropy(logits.float(), labels)}


@pytest.fixture
def probe(monkeypatch):
    monkeypatch.setitem(methods.METHODS, "clean_probe", CleanProbe)
    CleanProbe.seen_noisy, CleanProbe.seen_clean = [], []
    return CleanProbe


def _config(dataset, out, *extra):
    return load_config(ROOT / "training/configs/demo_cpu.yaml", [
        f"data.root={dataset.parent}", f"data.name={dataset.name}", f"out_dir={out}", "run_name=r",
        "data.batch_size=16", "data.clean_batch_size=8", "data.eval_batch_size=64", "epochs=1", *extra])


def test_clean_subset_stream_serves_only_the_subset(tiny_dataset, tmp_path, probe):
    config = _config(tiny_dataset, tmp_path, "method.name=clean_probe", f"data.clean_subset={MASK}")
    trainer = Trainer(config)
    results = trainer.fit()
    mask = np.load(tiny_dataset / "labels" / "train" / "masks" / f"{MASK}.npy")
    clean = np.load(tiny_dataset / "labels" / "train" / "clean.npy")
    subset = set(np.flatnonzero(mask).tolist())
    noisy_seen = [i for step in probe.seen_noisy for i in step]
    assert sorted(noisy_seen) == sorted(set(range(len(mask))) - subset)  # every non-subset sample once
    assert results["history"][0]["train_samples"] == len(mask) - len(subset)
    clean_seen = [i for idx, _ in probe.seen_clean for i in idx]
    assert set(clean_seen) <= subset and len(probe.seen_clean) == len(probe.seen_noisy)
    assert set(clean_seen) == subset  # 12 steps x 8 > 20: the stream cycled through all of it
    for idx, labels in probe.seen_clean:
        assert labels == clean[idx].tolist()


@pytest.mark.parametrize("loader", ["cache", "dali", "fallback"])
def test_clean_subset_batches_are_full_in_every_loader_mode(loader, tiny_dataset, tmp_path, probe, monkeypatch):
    """20 subset samples in batches of 8: passes of 8, 8, 4 in every mode (the stream modes once planned
    over all 200 and gave 25 batches of 0-3, an empty one a NaN loss)."""
    if loader == "dali" and not dali_available():
        pytest.skip("nvidia.dali is not installed")
    if loader == "fallback":
        monkeypatch.setattr("pipeline.load.loader.dali_available", lambda: False)
    mode = "cache" if loader == "cache" else "stream"
    stream = Trainer(_config(tiny_dataset, tmp_path, "method.name=clean_probe", f"data.clean_subset={MASK}",
                             f"data.loader={mode}")).clean_subset
    sizes = [len(stream.next_batch().idx) for _ in range(6)]
    assert sizes == [8, 8, 4, 8, 8, 4]


def test_clean_subset_required_by_method_names_the_fix(tiny_dataset, tmp_path, probe, capsys):
    args = ["--config", str(ROOT / "training/configs/demo_cpu.yaml"), f"data.root={tiny_dataset.parent}",
            f"data.name={tiny_dataset.name}", f"out_dir={tmp_path}", "method.name=clean_probe", "epochs=1"]
    assert main(args) == 2
    assert "data.clean_subset=" in capsys.readouterr().err


def test_clean_subset_resumes_mid_pass(tiny_dataset, tmp_path, probe):
    config = _config(tiny_dataset, tmp_path, "method.name=clean_probe", f"data.clean_subset={MASK}")
    stream = Trainer(config).clean_subset
    first = [stream.next_batch().idx.tolist() for _ in range(3)]
    state = stream.state_dict()
    expected = [stream.next_batch().idx.tolist() for _ in range(4)]
    other = Trainer(_config(tiny_dataset, tmp_path / "b", "method.name=clean_probe",
                            f"data.clean_subset={MASK}")).clean_subset
    other.load_state_dict(state)
    assert [other.next_batch().idx.tolist() for _ in range(4)] == expected
    assert first[0] != expected[0]

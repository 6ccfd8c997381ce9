"""Every registered method trains end to end on the tiny dataset: registering a method is enough to
have it tested here (STYLE 19). Parameters without a default come from REQUIRED; methods that declare
needs.clean_subset get the tiny dataset's clean meta subset. About a second per method."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pipeline.format.dataset import Dataset
from test_training import _args
from training.methods import METHODS
from training.methods.base import DataNeeds, Run
from training.methods.ce import CE
from training.run import main

TINY_SUBSET = "clean-subset-20-s0"  # the tiny_dataset fixture's 20-sample clean meta subset
REQUIRED = {  # method -> overrides for its parameters without a default
    "coteaching": ("method.params.forget_rate=0.36",),
    "jocor": ("method.params.forget_rate=0.36",),
    "dividemix": ("method.params.lambda_u=25",),
    "ido": ("method.params.stage1_epochs=1", "epochs=2"),  # stage 1 must leave a stage 2
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_registered_method_trains_one_epoch_on_the_tiny_dataset(tiny_dataset, tmp_path, name):
    cls = METHODS[name]
    subset = (f"data.clean_subset={TINY_SUBSET}",) if cls.needs.clean_subset else ()
    args = _args(tiny_dataset, tmp_path, "epochs=1", f"method.name={name}", *REQUIRED.get(name, ()), *subset)
    assert main(args) == 0
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    row = results["history"][-1]
    manifest = json.loads((tiny_dataset / "manifest.json").read_text())
    expected = manifest["splits"]["train"]["num_samples"] - (20 if subset else 0)
    assert results["method"] == name and row["train_samples"] == expected
    assert np.isfinite(row["train_loss"]) and 0 <= row["test_acc"] <= 1


class Probe(CE):
    """CE that records what on_epoch_start receives, and predicts class 0 for every image."""

    name = "probe"
    needs = DataNeeds(train_eval=True)
    seen: list[dict] = []

    def on_epoch_start(self, run: Run) -> None:
        def fn(models, batch):  # (B, 2): the sample's idx, and whether the model was in train mode
            return torch.stack([batch.idx.float(), torch.full_like(batch.idx, models["model"].training).float()], 1)

        idx, values = run.eval_train(fn)
        Probe.seen.append({"epoch": run.epoch, "steps": run.steps, "models": sorted(run.models), "idx": idx,
                           "values": values, "train_mode_after": run.models["model"].training})

    def predict(self, models, images):
        logits = torch.zeros(images.shape[0], self.ctx.num_classes, device=images.device)
        logits[:, 0] = 1.0
        return logits


def test_trainer_hands_epoch_start_an_eval_pass_over_the_training_stream_and_evaluates_predict(
        tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "probe", Probe)
    monkeypatch.setattr(Probe, "seen", [])
    args = _args(tiny_dataset, tmp_path, "method.name=probe", f"data.clean_subset={TINY_SUBSET}")
    assert main(args) == 0
    kept = np.flatnonzero(~Dataset(tiny_dataset).mask("train", TINY_SUBSET))  # the training stream: 180 idx
    assert [s["epoch"] for s in Probe.seen] == [0, 1]
    for seen in Probe.seen:
        assert seen["steps"] == math.ceil(len(kept) / 32) and seen["models"] == ["model"]
        np.testing.assert_array_equal(seen["idx"].numpy(), kept)  # every sample once, in idx order
        np.testing.assert_array_equal(seen["values"][:, 0].numpy(), kept)  # values travel with their idx
        assert (seen["values"][:, 1] == 0).all() and seen["train_mode_after"]  # eval mode during, train after
    history = json.loads((tmp_path / "r" / "results.json").read_text())["history"]
    test_labels = Dataset(tiny_dataset).labels("test", "clean")
    assert history[-1]["test_acc"] == pytest.approx(float(np.mean(test_labels == 0)))  # Probe.predict, not the model


class Selector(CE):
    """CE that trains on the even idx from its second epoch, recording the idx of every batch."""

    name = "selector"
    needs = DataNeeds(select=True)
    seen: list[list[int]] = []

    def select(self, run: Run):
        Selector.seen.append([])
        return None if run.epoch == 0 else torch.arange(self.ctx.num_samples) % 2 == 0

    def loss(self, logits, labels, batch, run):
        Selector.seen[-1].extend(batch.idx.tolist())
        return super().loss(logits, labels, batch, run)


def test_trainer_trains_each_epoch_on_the_method_selection(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "selector", Selector)
    monkeypatch.setattr(Selector, "seen", [])
    assert main(_args(tiny_dataset, tmp_path, "method.name=selector", f"data.clean_subset={TINY_SUBSET}")) == 0
    kept = np.flatnonzero(~Dataset(tiny_dataset).mask("train", TINY_SUBSET))  # 180 training idx
    first, second = (np.array(s) for s in Selector.seen)
    assert len(first) == len(second) == math.ceil(len(kept) / 32) * 32  # the epoch keeps its length
    assert set(first.tolist()) == set(kept.tolist())
    assert set(second.tolist()) == set(kept[kept % 2 == 0].tolist())  # only the selection, repeated to fill

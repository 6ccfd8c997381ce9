"""The training step never waits for the device: host transfers per epoch stay a small constant.

On a GPU every read of a device number (`.item()`, `float(t)`, `if t:`, `.tolist()`, `.cpu()`) stalls
the host until the queue drains. These tests count such calls on CPU, where they are cheap but
go through the same Python methods, over one epoch of CE and of ALR; the count must not grow with
the number of steps. Calls made inside C++ (e.g. a boolean-mask index) are not seen here.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from training.config import load_config
from training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
HOST_READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")
PER_EPOCH = 4  # the end-of-epoch loss check and tally reduction, plus slack for set-up per epoch


def _trainer(dataset: Path, out: Path, *overrides: str) -> Trainer:
    config = load_config(ROOT / "training/configs/demo_cpu.yaml", [
        f"data.root={dataset.parent}", f"data.name={dataset.name}", f"out_dir={out}", "run_name=r",
        "data.batch_size=16", "epochs=2", "log_every=1000", *overrides])
    return Trainer(config)


class HostReads:
    """Counts calls of torch.Tensor's host-reading methods while active (monkeypatch undoes it)."""

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        for name in HOST_READS:
            real = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counting(name, real))

    def _counting(self, name, real):
        def method(tensor, *args, **kwargs):
            self.calls.append(name)
            return real(tensor, *args, **kwargs)
        return method


def _epoch_reads(trainer: Trainer, monkeypatch, epoch: int) -> tuple[list[str], int]:
    with monkeypatch.context() as m:
        reads = HostReads(m)
        trainer._train_epoch(epoch)
    return reads.calls, len(trainer.train_loader)


@pytest.mark.parametrize("method", [
    ("method.name=ce",),
    ("method.name=alr", "method.params.warmup_epochs=0", "state.placement=device"),
], ids=["ce", "alr-device-state"])
def test_training_epoch_reads_the_device_a_fixed_number_of_times(tiny_dataset, tmp_path, monkeypatch, method):
    trainer = _trainer(tiny_dataset, tmp_path, *method)
    calls, steps = _epoch_reads(trainer, monkeypatch, 0)
    assert steps >= 10, "too few steps to tell per-step reads from per-epoch ones"
    assert len(calls) <= PER_EPOCH, f"{len(calls)} host reads in {steps} steps: {calls}"


def test_logging_reads_the_loss_once_per_log_step(tiny_dataset, tmp_path, monkeypatch):
    trainer = _trainer(tiny_dataset, tmp_path, "log_every=2")
    calls, steps = _epoch_reads(trainer, monkeypatch, 0)
    assert calls.count("tolist") >= steps // 2
    assert len(calls) <= steps // 2 + PER_EPOCH


def test_nan_loss_raises_on_the_next_log_step_naming_the_steps(tiny_dataset, tmp_path, monkeypatch):
    trainer = _trainer(tiny_dataset, tmp_path, "log_every=4")
    real = trainer.method.loss
    seen = []

    def nan_on_step_6(logits, labels, batch, run):
        seen.append(1)
        terms = real(logits, labels, batch, run)
        return {**terms, "loss": terms["loss"] * math.nan} if len(seen) == 6 else terms

    monkeypatch.setattr(trainer.method, "loss", nan_on_step_6)
    with pytest.raises(FloatingPointError, match=r"steps 5\.\.8 is not finite"):
        trainer._train_epoch(0)
    assert len(seen) == 8, "training went on past the log step that saw the NaN"


def test_step_skips_accelerates_per_step_package_probe(tiny_dataset, tmp_path, monkeypatch):
    """Accelerate's optimiser wrapper probes for an optional package (importlib find_spec) on every step;
    Run.step steps the torch optimiser inside it instead, and the schedule still tracks that step."""
    import warnings

    import accelerate.optimizer

    probes = []
    monkeypatch.setattr(accelerate.optimizer, "is_lomo_available", lambda: probes.append(1) or False)
    trainer = _trainer(tiny_dataset, tmp_path)
    start = [p.detach().clone() for p in trainer.models["model"].parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "lr_scheduler.step() before optimizer.step()"
        trainer._train_epoch(0)
    assert probes == []
    assert trainer.schedulers["model"].last_epoch == len(trainer.train_loader)
    assert any(not torch.equal(a, p) for a, p in zip(start, trainer.models["model"].parameters()))


def test_plain_optimizer_keeps_the_wrapper_where_it_does_more_than_forward():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from training.methods.base import plain_optimizer

    inner = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)

    def wrapper(scaler=None, sync=True, kind=DistributedType.NO):
        return SimpleNamespace(optimizer=inner, scaler=scaler, accelerator_state=SimpleNamespace(distributed_type=kind),
                               gradient_state=SimpleNamespace(sync_gradients=sync))

    assert plain_optimizer(inner) is inner
    assert plain_optimizer(wrapper()) is inner
    for kept in (wrapper(scaler=object()), wrapper(sync=False), wrapper(kind=DistributedType.XLA)):
        assert plain_optimizer(kept) is kept

"""GPU speed options on CPU: channels_last and compile each train a step; a missing toolchain is a config error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from training.config import ConfigError, load_config
from training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def _trainer(dataset: Path, out: Path, *overrides: str) -> Trainer:
    config = load_config(ROOT / "training/configs/demo_cpu.yaml", [
        f"data.root={dataset.parent}", f"data.name={dataset.name}", f"out_dir={out}", "run_name=r",
        "data.batch_size=200", "epochs=1", "cpu=true", *overrides])  # 200 train images: one step an epoch
    return Trainer(config)


def _one_step(trainer: Trainer) -> tuple[torch.nn.Module, dict]:
    model = trainer.models["model"]
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    row = trainer._train_epoch(0)
    assert row["train_samples"] == 200 and torch.isfinite(torch.tensor(row["train_loss"]))
    changed = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed, "the step did not change the model"
    return model, row


def test_channels_last_trains_a_step_in_nhwc(tiny_dataset, tmp_path):
    model, _ = _one_step(_trainer(tiny_dataset, tmp_path, "channels_last=true"))
    convs = [p for p in model.parameters() if p.ndim == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)


@pytest.mark.slow
def test_compile_trains_a_step_and_keeps_parameter_names(tiny_dataset, tmp_path):
    import torch._dynamo

    torch._dynamo.reset()
    plain = _trainer(tiny_dataset, tmp_path / "plain").models["model"]
    trainer = _trainer(tiny_dataset, tmp_path / "compiled", "compile=true")
    model, _ = _one_step(trainer)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0, "nothing was compiled"
    assert list(model.state_dict()) == list(plain.state_dict()), "checkpoints would change their keys"


def test_compile_without_a_compiler_names_the_fix(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="compile=true on CPU needs a C\\+\\+ compiler"):
        _trainer(tiny_dataset, tmp_path, "compile=true")

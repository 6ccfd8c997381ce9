"""Method parameters: validated before the run folder exists, recorded with their defaults, described."""

from __future__ import annotations

import pytest
import yaml

from test_training import _args
from training.methods import METHODS, describe_method
from training.run import main


def test_config_yaml_records_every_alr_parameter_with_one_overridden(tiny_dataset, tmp_path):
    args = _args(tiny_dataset, tmp_path, "epochs=1", "method.name=alr", "method.params.lam=0.1")
    assert main(args) == 0
    params = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["method"]["params"]
    assert params == {"warmup_epochs": 30, "alpha": 0.9, "lam": 0.1}


def test_bad_method_parameter_fails_before_the_run_folder_is_made(tiny_dataset, tmp_path, capsys):
    assert main(_args(tiny_dataset, tmp_path, "method.name=alr", "method.params.lam=-1")) == 2
    assert "method.params.lam" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_describe_method_lists_every_parameter_with_its_default(name):
    text = describe_method(name)
    assert text.startswith(f"{name}: ")
    for field, info in METHODS[name].Config.model_fields.items():
        line = next(line for line in text.splitlines() if line.startswith(f"  {field} ("))
        assert ("required" in line) == info.is_required()


def test_describe_method_cli_prints_the_meaning_and_exits(capsys):
    assert main(["--describe-method", "alr"]) == 0
    out = capsys.readouterr().out
    assert "lam (float, default 0.2): entropy weight; 0 gives SELC" in out
    assert main(["--describe-method", "nope"]) == 2

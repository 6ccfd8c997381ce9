"""Config loading: recipes derive from a base, overrides are typed, unknown keys fail by name."""

from pathlib import Path

import pytest

from training.config import ConfigError, OptimConfig, load_config
from training.schedule import lr_factor

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


def test_load_config_derives_from_base():
    config = load_config(CONFIGS / "demo_cpu.yaml")
    assert config.model.name == "tiny_cnn"  # from the derived recipe
    assert config.data.label_set == "sym-0.40-s0"  # from the base recipe
    assert config.optim.momentum == 0.9


def test_load_config_overrides_are_typed():
    config = load_config(CONFIGS / "demo_cpu.yaml", ["optim.lr=0.3", "epochs=2", "data.loader=stream"])
    assert config.optim.lr == 0.3 and config.epochs == 2 and config.data.loader == "stream"


@pytest.mark.parametrize(
    "override, needle",
    [
        ("optim.lrr=0.1", "unknown key 'optim.lrr'"),
        ("epochs=many", "epochs"),
        ("data.loader=fast", "data.loader"),
        ("optim.milestones=[2,50]", "optim.milestones"),
        ("nonsense", "key.sub=value"),
    ],
)
def test_load_config_bad_override_names_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[")):
        load_config(CONFIGS / "demo_cpu.yaml", [override])


def test_load_config_missing_required_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: tiny_cnn}\noptim: {lr: 0.1}\nepochs: 1\n")
    with pytest.raises(ConfigError, match="missing required key 'data'"):
        load_config(path)


def test_load_config_circular_base(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "a.yaml")


def test_lr_factor_multistep_and_warmup():
    optim = OptimConfig(lr=0.1, schedule="multistep", milestones=[2, 4], gamma=0.1, warmup_epochs=1)
    steps = 10
    assert lr_factor(0, steps, 6, optim) == pytest.approx(0.1)
    assert lr_factor(5, steps, 6, optim) == pytest.approx(0.55)
    assert lr_factor(15, steps, 6, optim) == pytest.approx(1.0)
    assert lr_factor(25, steps, 6, optim) == pytest.approx(0.1)
    assert lr_factor(45, steps, 6, optim) == pytest.approx(0.01)


def test_lr_factor_cosine_ends_at_zero():
    optim = OptimConfig(lr=0.1, schedule="cosine")
    assert lr_factor(0, 10, 5, optim) == pytest.approx(1.0)
    assert lr_factor(25, 10, 5, optim) == pytest.approx(0.5)
    assert lr_factor(50, 10, 5, optim) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("recipe", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_recipe_validates_and_names_known_parts(recipe):
    from training.methods import METHODS
    from training.models import MODELS

    config = load_config(CONFIGS / recipe)
    assert config.model.name in MODELS
    assert config.method.name in METHODS
    METHODS[config.method.name].Config.model_validate(config.method.params)


def test_derived_recipe_merges_method_params():
    config = load_config(CONFIGS / "cifar10_selc.yaml")
    assert config.method.name == "alr"
    assert config.method.params == {"warmup_epochs": 30, "alpha": 0.9, "lam": 0.0}


@pytest.mark.parametrize("text, expected", [("no", "no"), ("bf16", "bf16")])
def test_mixed_precision_no_is_the_string_not_false(text, expected):
    config = load_config(CONFIGS / "demo_cpu.yaml", [f"mixed_precision={text}"])
    assert config.mixed_precision == expected


def test_yaml_booleans_are_true_and_false_only(tmp_path):
    (tmp_path / "r.yaml").write_text(f"base: {CONFIGS / 'demo_cpu.yaml'}\nmixed_precision: no\ncpu: true\n")
    config = load_config(tmp_path / "r.yaml", ["data.augment=false"])
    assert config.mixed_precision == "no" and config.cpu is True and config.data.augment is False
    with pytest.raises(ConfigError, match="cpu: Input should be a valid boolean"):
        load_config(tmp_path / "r.yaml", ["cpu=maybe"])


def test_config_error_names_the_key_without_dumping_the_config():
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS / "demo_cpu.yaml", ["optim.schedule=multistep", "optim.milestones=[3,1]"])
    message = str(info.value)
    assert "optim.milestones must be increasing, got [3, 1]" in message
    assert "'lr'" not in message and "'data'" not in message and "Value error" not in message

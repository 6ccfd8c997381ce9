"""Any timm / torchvision classifier by name (training/models/by_name.py): it trains, a wrong name says where
to find valid ones, and pretrained weights come from local files only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import torchvision

from pipeline.errors import ConfigError
from training.models import build_model
from training.models.pretrained import PretrainedWeightsError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Torch hub and Hugging Face caches with nothing in them."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # torch.hub.get_dir() reads TORCH_HOME again
    return tmp_path


@pytest.mark.parametrize("name", ["timm:resnet18", "torchvision:resnet18"])
def test_named_model_trains_one_step_on_cpu(name):
    torch.manual_seed(0)
    model = build_model(name, 5).train()
    before = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 4])
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    logits = model(x)
    assert logits.shape == (4, 5)
    assert model.features(x).shape == (4, model.fc.in_features)
    loss = torch.nn.functional.cross_entropy(logits, y)
    loss.backward()
    optimiser.step()
    assert torch.isfinite(loss)
    changed = [k for k, v in model.state_dict().items() if k in before and not torch.equal(v, before[k])]
    assert "fc.weight" in changed and any(k.startswith("backbone.") for k in changed)


@pytest.mark.parametrize("name, hint", [
    ("timm:resnt18", r"close: timm:resnet18.*timm\.list_models"),
    ("torchvision:resnt18", r"close: torchvision:resnet18.*torchvision\.models\.list_models"),
])
def test_unknown_named_model_says_how_to_list_valid_names(name, hint):
    with pytest.raises(ConfigError, match=rf"unknown {name.split(':')[0]} model 'resnt18' \({hint}"):
        build_model(name, 10)


def test_unknown_plain_name_mentions_the_prefixes():
    with pytest.raises(ConfigError, match=r"known models: .*resnet34.*, or timm:<name> / torchvision:<name>"):
        build_model("resnet9000", 10)


@pytest.mark.filterwarnings("ignore:The default weight initialization of GoogleNet:FutureWarning")
def test_torchvision_model_with_auxiliary_classifiers_is_refused():
    with pytest.raises(ConfigError, match=r"torchvision:googlenet trains auxiliary classifiers.*timm:googlenet"):
        build_model("torchvision:googlenet", 10)


@pytest.mark.parametrize("name, fetch, target", [
    ("timm:resnet18", r"https://huggingface.co/timm/resnet18\.a1_in1k/resolve/main/model\.safetensors",
     "hf/models--timm--resnet18.a1_in1k/snapshots/<revision>/model.safetensors"),
    ("torchvision:resnet18", r"https://download\.pytorch\.org/models/resnet18-f37072fd\.pth",
     "torch/hub/checkpoints/resnet18-f37072fd.pth"),
])
def test_auto_without_cached_weights_says_what_to_put_where(empty_caches, name, fetch, target):
    with pytest.raises(PretrainedWeightsError, match=rf"pretrained weights for {name} not found.*Nothing is downloaded "
                       rf"at run time: fetch {fetch} .*copy it to {empty_caches / target}"):
        build_model(name, 10, pretrained="auto")


def test_timm_auto_loads_the_hf_cache_and_drops_the_imagenet_head(empty_caches):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    state = timm.create_model("resnet18", num_classes=1000).state_dict()  # the layout of timm's hub file
    snapshot = empty_caches / "hf" / "models--timm--resnet18.a1_in1k" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    save_file(state, str(snapshot / "model.safetensors"))
    model = build_model("timm:resnet18", 3, pretrained="auto")
    for key, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, state[key], msg=key)
    assert model.fc.weight.shape == (3, 512)


def test_torchvision_weights_file_loads_the_backbone(tmp_path):
    torch.manual_seed(2)
    state = torchvision.models.get_model("mobilenet_v3_small", weights=None).state_dict()
    torch.save(state, tmp_path / "w.pth")
    model = build_model("torchvision:mobilenet_v3_small", 4, pretrained=str(tmp_path / "w.pth"))
    for key, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, state[key], msg=key)
    assert model.fc.out_features == 4 and "classifier.3.weight" not in model.backbone.state_dict()


def test_run_trains_a_timm_model_by_name(tiny_dataset, tmp_path):
    from training.run import main

    rc = main(["--config", str(ROOT / "training/configs/demo_cpu.yaml"), f"data.root={tiny_dataset.parent}",
               f"data.name={tiny_dataset.name}", f"out_dir={tmp_path}", "run_name=r", "epochs=1",
               "data.batch_size=64", "model.name=timm:resnet18"])
    assert rc == 0
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["history"][0]["train_samples"] == 200

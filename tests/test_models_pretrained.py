"""Pretrained backbones from local files (training/models/pretrained.py): loaded when present, an error
naming the file when not, never a silent random init and never a download."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import resnet18 as tv_resnet18
from torchvision.models import resnet50 as tv_resnet50

from training.models import build_model, pretrained
from training.models.pretrained import PretrainedWeightsError


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory):
    """A torchvision ResNet-50 state dict (random, 1000-class head) in the torch hub cache layout."""
    home = tmp_path_factory.mktemp("torch_home")
    path = home / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    path.parent.mkdir(parents=True)
    torch.manual_seed(1)
    state = tv_resnet50(weights=None).state_dict()
    torch.save(state, path)
    return home, path, state


def _assert_backbone_is(model, state):
    for key, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, state[key], msg=key)


@pytest.mark.slow  # builds full-size ImageNet models on the CPU
def test_resnet50_loads_backbone_from_a_file_and_keeps_a_fresh_head(resnet50_file):
    _, path, state = resnet50_file
    model = build_model("resnet50", 7, pretrained=str(path))
    _assert_backbone_is(model, state)
    assert model.fc.weight.shape == (7, 2048)  # the 1000-class ImageNet head is dropped


@pytest.mark.slow  # builds full-size ImageNet models on the CPU
def test_resnet50_auto_finds_the_torch_cache(resnet50_file, monkeypatch):
    home, _, state = resnet50_file
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # torch.hub.get_dir() reads TORCH_HOME again
    _assert_backbone_is(build_model("resnet50", 3, pretrained="auto"), state)


@pytest.mark.parametrize("name", ["resnet50", "inception_resnet_v2", "vgg19_bn"])
def test_auto_without_cached_weights_names_the_file_and_how_to_get_it(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    with pytest.raises(PretrainedWeightsError, match=rf"pretrained weights for {name} not found; looked at .*{tmp_path}.*"
                       r"Nothing is downloaded at run time: fetch https://\S+ .*copy it to"):
        pretrained.resolve(name, "auto")


def test_auto_finds_timm_weights_in_the_hf_cache(tmp_path, monkeypatch):
    snapshot = tmp_path / "hf" / "models--timm--vgg19_bn.tv_in1k" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    assert pretrained.resolve("vgg19_bn", "auto") == snapshot / "model.safetensors"


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(PretrainedWeightsError, match=f"model.pretrained={tmp_path / 'nope.pth'}: file not found"):
        build_model("resnet50", 5, pretrained=str(tmp_path / "nope.pth"))


@pytest.mark.slow  # builds full-size ImageNet models on the CPU
def test_weights_of_another_architecture_are_refused(tmp_path):
    torch.save(tv_resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(PretrainedWeightsError, match=r"r18.pth does not fit resnet50: \d+ backbone tensors missing"):
        build_model("resnet50", 5, pretrained=str(tmp_path / "r18.pth"))


@pytest.mark.slow  # builds full-size ImageNet models on the CPU
def test_timm_backbone_loads_from_safetensors(tmp_path):
    from safetensors.torch import save_file

    source = build_model("inception_resnet_v2", 1000)
    state = {k: v.contiguous() for k, v in source.backbone.state_dict().items()}
    state["classif.weight"] = torch.zeros(1000, 1536)  # the ImageNet head, dropped on load
    save_file(state, str(tmp_path / "model.safetensors"))
    model = build_model("inception_resnet_v2", 4, pretrained=str(tmp_path / "model.safetensors"))
    _assert_backbone_is(model, state)
    assert model.fc.out_features == 4

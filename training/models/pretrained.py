"""Pretrained backbone weights from local files only: nothing is downloaded at run time.

``pretrained`` is a path to a weights file (.pth/.pt state dict, or .safetensors) or "auto": look
(for the names in WEIGHTS, and for ``timm:<name>`` / ``torchvision:<name>`` by the files those libraries
publish) where torchvision and timm keep their downloads (the torch hub cache, $TORCH_HOME/hub/checkpoints,
and the Hugging Face hub cache, $HF_HUB_CACHE or $HF_HOME/hub). A missing file is an error that
names it and says how to get it onto the machine; a model is never silently left random.

Only the backbone is loaded: the ImageNet classifier (the model's ``head_keys`` state-dict prefixes,
``fc.`` by default) is dropped (its 1000 classes are not ours) and the model's own linear head ``fc``
keeps its fresh initialisation. Every backbone tensor must be in
the file with the right shape, so weights of another architecture fail by name.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import UserError

log = logging.getLogger(__name__)


class PretrainedWeightsError(UserError, FileNotFoundError):
    """Pretrained weights were asked for and cannot be found or do not fit; the message says what to do."""


@dataclass(frozen=True)
class WeightSpec:
    files: tuple[str, ...]  # torch hub cache file names, in order of preference
    hf_repo: str | None  # Hugging Face hub repository of timm weights ("timm/vgg19_bn.tv_in1k")
    url: str  # where to fetch it by hand


WEIGHTS = {
    "resnet50": WeightSpec(
        files=("resnet50-11ad3fa6.pth", "resnet50-0676ba61.pth"),  # torchvision IMAGENET1K_V2, V1
        hf_repo=None,
        url="https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
    ),
    "inception_resnet_v2": WeightSpec(
        files=(), hf_repo="timm/inception_resnet_v2.tf_in1k",
        url="https://huggingface.co/timm/inception_resnet_v2.tf_in1k/resolve/main/model.safetensors",
    ),
    "vgg19_bn": WeightSpec(
        files=(), hf_repo="timm/vgg19_bn.tv_in1k",
        url="https://huggingface.co/timm/vgg19_bn.tv_in1k/resolve/main/model.safetensors",
    ),
}


def torch_cache() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def weight_spec(name: str) -> WeightSpec | None:
    """The published weights of `name`: the table above, or the default weights timm / torchvision give
    for ``timm:<name>`` / ``torchvision:<name>``; None when there are none."""
    if name in WEIGHTS:
        return WEIGHTS[name]
    prefix, _, arch = name.partition(":")
    if prefix == "timm":
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(arch)  # the default tag when `arch` has none
        if cfg is not None and cfg.hf_hub_id:  # timm downloads from the Hugging Face hub when it can
            url = f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/model.safetensors"
            return WeightSpec(files=(), hf_repo=cfg.hf_hub_id, url=url)
        if cfg is not None and cfg.url:  # older weights: a URL download kept in the torch hub cache
            return WeightSpec(files=(Path(cfg.url).name,), hf_repo=None, url=cfg.url)
        return None
    if prefix == "torchvision":
        from torchvision.models import get_model_weights

        try:
            url = get_model_weights(arch).DEFAULT.url
        except (ValueError, KeyError, AttributeError):  # unknown name, or a model without published weights
            return None
        return WeightSpec(files=(Path(url).name,), hf_repo=None, url=url)
    return None


def candidates(spec: WeightSpec) -> list[Path]:
    """Every place "auto" looks for the weights of `spec`, in order."""
    paths = [torch_cache() / f for f in spec.files]
    if spec.hf_repo:
        repo_dir = hf_cache() / f"models--{spec.hf_repo.replace('/', '--')}"
        found = sorted(repo_dir.glob("snapshots/*/model.safetensors")) + sorted(repo_dir.glob("snapshots/*/pytorch_model.bin"))
        paths += found or [repo_dir / "snapshots" / "<revision>" / "model.safetensors"]
    return paths


def resolve(name: str, pretrained: str) -> Path:
    """The weights file for `name`: the given path, or the first cached file for "auto"."""
    if pretrained != "auto":
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise PretrainedWeightsError(f"model.pretrained={pretrained}: file not found (give a weights file, or 'auto')")
        return path
    spec = weight_spec(name)
    if spec is None:
        raise PretrainedWeightsError(
            f"model.pretrained=auto: no known pretrained weights for {name!r} (known: {', '.join(sorted(WEIGHTS))}, "
            f"and timm:<name> / torchvision:<name> with published weights); give a weights file path instead"
        )
    tried = candidates(spec)
    for path in tried:
        if path.is_file():
            return path
    target = torch_cache() / spec.files[0] if spec.files else tried[0]
    raise PretrainedWeightsError(
        f"pretrained weights for {name} not found; looked at {', '.join(map(str, tried))}. Nothing is downloaded "
        f"at run time: fetch {spec.url} on a machine with network access and copy it to {target} "
        f"(or anywhere, and set model.pretrained=/path/to/file)"
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise PretrainedWeightsError(f"{path}: cannot read weights ({type(err).__name__}: {err})") from err
    for wrapper in ("state_dict", "model"):  # training checkpoints wrap the state dict
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise PretrainedWeightsError(f"{path}: expected a state dict, got {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_backbone(model: nn.Module, name: str, pretrained: str) -> Path:
    """Loads pretrained weights into ``model.backbone`` (the whole model when it has none); returns the file."""
    path = resolve(name, pretrained)
    classifier = getattr(model, "head_keys", ("fc.",))
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith(classifier)}
    target = getattr(model, "backbone", model)
    expected = target.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        raise PretrainedWeightsError(
            f"{path} does not fit {name}: {len(missing)} backbone tensors missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(wrong)} of the wrong shape (e.g. {wrong[:3]}); "
            f"is it the weights file of this architecture?"
        )
    target.load_state_dict(state, strict=True)
    log.info("%s: loaded pretrained backbone from %s", name, path)
    return path

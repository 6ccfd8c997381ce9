"""Any timm or torchvision classifier by name: ``timm:<name>`` and ``torchvision:<name>``.

Each is built without weights, its own classifier removed, and wrapped with the registry's
interface (`features(x) -> (B, F)`, a linear head `fc` sized to the dataset's classes).
``head_keys`` are the state-dict prefixes of the removed classifier, which
training/models/pretrained.py drops when it loads a weights file. Pretrained weights come only
from local files (pretrained.py); nothing here downloads.
"""

from __future__ import annotations

import difflib

import torch
from torch import nn

from pipeline.errors import ConfigError
from training.models.timm_models import TimmClassifier

TIMM_HINT = "python -c \"import timm; print(timm.list_models('*resnet*'))\""
TORCHVISION_HINT = "python -c \"import torchvision; print(torchvision.models.list_models(torchvision.models))\""


def _unknown(prefix: str, arch: str, known: list[str], hint: str) -> ConfigError:
    close = difflib.get_close_matches(arch, known, n=5)
    maybe = f" (close: {', '.join(f'{prefix}:{c}' for c in close)})" if close else ""
    return ConfigError(f"model.name: unknown {prefix} model {arch!r}{maybe}; list valid names with {hint}")


def timm_model(arch: str, num_classes: int) -> TimmClassifier:
    import timm

    if not timm.is_model(arch):  # accepts "resnet18" and tagged "resnet18.a1_in1k"
        raise _unknown("timm", arch, timm.list_models(), TIMM_HINT)
    return TimmClassifier(arch, num_classes)


class TorchvisionClassifier(nn.Module):
    """A torchvision classification model whose last linear layer (its ImageNet classifier) is replaced
    by the identity, so the backbone returns pooled features, plus our own `fc`."""

    def __init__(self, arch: str, num_classes: int):
        super().__init__()
        import torchvision

        self.backbone = torchvision.models.get_model(arch, weights=None)
        if getattr(self.backbone, "aux_logits", False):  # googlenet, inception_v3: tuples in training mode
            raise ConfigError(f"model.name: torchvision:{arch} trains auxiliary classifiers, which noisyflow's "
                              f"methods do not use; choose timm:{arch} or another model")
        linears = [(name, m) for name, m in self.backbone.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ConfigError(f"model.name: torchvision:{arch} has no linear classifier to replace (e.g. SqueezeNet's "
                              f"is a convolution); choose another model")
        head_name, head = linears[-1]
        self.backbone.set_submodule(head_name, nn.Identity())
        self.head_keys = (f"{head_name}.",)
        self.num_features = head.in_features
        self.fc = nn.Linear(self.num_features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)  # (B, F)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))  # (B, num_classes)


def torchvision_model(arch: str, num_classes: int) -> TorchvisionClassifier:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)  # classification models only
    if arch not in known:
        raise _unknown("torchvision", arch, known, TORCHVISION_HINT)
    return TorchvisionClassifier(arch, num_classes)


PREFIXES = {"timm": timm_model, "torchvision": torchvision_model}

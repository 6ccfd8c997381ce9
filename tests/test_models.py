"""Every registered model maps (B, 3, H, W) to (B, K) logits and exposes features + fc."""

import pytest
import torch

from training.models import MODELS, build_model


HEAVY = {"inception_resnet_v2", "vgg19_bn"}  # 55M / 140M parameters: ~10-25 s each to build on 2 CPU cores


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in sorted(MODELS)])
def test_model_logits_and_features_shapes(name):
    side = {"resnet50": 64, "inception_resnet_v2": 75}.get(name, 32)  # Inception-ResNet-v2 needs >= 75 px
    model = build_model(name, 7).eval()
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        features = model.features(x)
        logits = model(x)
    assert logits.shape == (2, 7)
    assert features.shape == (2, model.fc.in_features)
    torch.testing.assert_close(model.fc(features), logits)


def test_build_model_unknown_name_lists_known():
    with pytest.raises(ValueError, match="known models: .*resnet34"):
        build_model("resnet9000", 10)

"""Every registered model maps (B, 3, H, W) to (B, K) logits and exposes features + fc."""

import pytest
import torch

from training.models import MODELS, build_model


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_logits_and_features_shapes(name):
    side = 64 if name == "resnet50" else 32
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

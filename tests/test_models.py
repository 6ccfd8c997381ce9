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


def test_preact_resnet18_has_the_parameter_count_of_the_dividemix_authors_network():
    # stem conv 3*64*9 + BN 2*64; per stage s (width w, input width w_in) 2 blocks of BN 2*w_in, conv
    # w_in*w*9, BN 2*w, conv w*w*9, plus a 1x1 projection w_in*w in the first block of stages 2-4; fc 512*K + K
    model = build_model("preact_resnet18", 10)
    assert sum(p.numel() for p in model.parameters()) == 11_171_274
    projections = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1)]
    assert [(m.in_channels, m.out_channels) for m in projections] == [(64, 128), (128, 256), (256, 512)]
    with torch.no_grad():
        assert model.eval()(torch.randn(4, 3, 32, 32)).shape == (4, 10)
    assert sum(p.numel() for p in build_model("preact_resnet18", 100).parameters()) == 11_166_144 + 513 * 100

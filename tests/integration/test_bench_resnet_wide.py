"""The wide benchmark ResNet builds with its own name and about 2.25x the plain one's weights (compute scales alike)."""

from __future__ import annotations

import pytest

from bench.models import MODELS


@pytest.mark.integration
def test_resnet_wide_is_the_resnet_shape_at_one_and_a_half_times_the_width() -> None:
    keras = pytest.importorskip("keras")
    plain, wide = MODELS["resnet"].build(keras), MODELS["resnet_wide"].build(keras)
    assert (plain.name, wide.name) == ("resnet", "resnet_wide")
    assert len(wide.layers) == len(plain.layers) and wide.output.shape == plain.output.shape == (None, 10)
    # conv weights grow with width squared (1.5 ** 2); BatchNorm and the Dense head grow less
    assert 2.0 < wide.count_params() / plain.count_params() < 2.3

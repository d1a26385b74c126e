"""bench/models.py: which benchmark models count as compute-bound on the machine at hand (no TensorFlow needed)."""

from __future__ import annotations

from bench.models import DEFAULT_MODELS, MODELS, compute_bound_warnings


def test_a_fast_resnet_is_flagged_and_pointed_at_the_wide_one() -> None:
    warnings = compute_bound_warnings({"seed_cnn": 0.05, "resnet": 0.41, "lstm": 0.3})
    assert len(warnings) == 1  # the light model and the LSTM carry no per-sample floor
    assert warnings[0].startswith("resnet costs 0.410 ms/sample (< 0.5)") and "resnet_wide" in warnings[0]


def test_models_over_their_floor_or_unknown_give_no_warning() -> None:
    assert compute_bound_warnings({"resnet": 0.95, "resnet_wide": 0.5, "elsewhere": 0.01}) == []
    assert compute_bound_warnings({"resnet_wide": 0.49}) == [
        "resnet_wide costs 0.490 ms/sample (< 0.5): not compute-bound here"
    ]


def test_the_wide_resnet_is_opt_in_and_has_the_same_input() -> None:
    assert "resnet_wide" not in DEFAULT_MODELS  # default runs stay comparable with earlier sessions'
    assert MODELS["resnet_wide"].inputs == MODELS["resnet"].inputs

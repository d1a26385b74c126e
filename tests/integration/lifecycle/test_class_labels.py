"""Class labels in classification answers: a version's labels.txt (or the class names kerve's training records in
kerve.json) named in Triton's "<score>:<index>:<label>" form, read by tritonclient and the SDK."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as triton

from helpers import CLASS_NAMES
from kerve.client import Client

pytestmark = pytest.mark.integration

IMAGES = np.random.default_rng(4).random((2, 8, 8, 1), dtype=np.float32)


def test_a_version_with_labels_names_its_top_classes(zoo) -> None:
    client = triton.InferenceServerClient(zoo.target)
    try:
        image = triton.InferInput("image", list(IMAGES.shape), "FP32").set_data_from_numpy(IMAGES)
        raw = client.infer("classes", [image]).as_numpy("output_0")
        top = client.infer("classes", [image], outputs=[triton.InferRequestedOutput("output_0", class_count=3)])
        unlabeled = client.infer("cnn", [image], outputs=[triton.InferRequestedOutput("output_0", class_count=3)])
    finally:
        client.close()
    order = np.argsort(-raw, axis=1, kind="stable")[:, :3]
    answers = top.as_numpy("output_0")
    for row, indices in enumerate(order):
        assert [a.decode().split(":", 2)[1:] for a in answers[row]] == [[str(i), CLASS_NAMES[i]] for i in indices]
    assert all(a.count(b":") == 1 for a in unlabeled.as_numpy("output_0").flat)  # no labels: "<score>:<index>"

    with Client(zoo.target) as sdk:
        named = sdk.classify("classes", {"image": IMAGES}, top_k=3)
        plain = sdk.classify("cnn", {"image": IMAGES}, top_k=3)
    assert named.indices.tolist() == order.tolist()
    assert named.labels is not None and named.labels.tolist() == [[CLASS_NAMES[i] for i in row] for row in order]
    assert plain.labels is None


def test_each_output_of_a_model_is_named_by_its_own_label_file(zoo) -> None:
    """<output>.labels.txt per output (Triton's label_filename): both heads of one model answer with their own
    class names, and ModelConfig reports each output's file."""
    x = np.array([[0.3, 0.9], [0.8, -0.5]], dtype=np.float32)
    client = triton.InferenceServerClient(zoo.target)
    try:
        given = triton.InferInput("x", list(x.shape), "FP32").set_data_from_numpy(x)
        asked = [triton.InferRequestedOutput(name, class_count=1) for name in ("animal", "color")]
        answer = client.infer("heads", [given], outputs=asked)
        config = client.get_model_config("heads").config
    finally:
        client.close()
    # animal scores: [x0, x1, x0 + x1] -> bird, cat; color: [x1, -x1] -> red, blue
    assert [a.decode().split(":", 1)[1] for a in answer.as_numpy("animal").flat] == ["2:bird", "0:cat"]
    assert [a.decode().split(":", 1)[1] for a in answer.as_numpy("color").flat] == ["0:red", "1:blue"]
    assert {o.name: o.label_filename for o in config.output} == {
        "animal": "animal.labels.txt",
        "color": "color.labels.txt",
    }

    with Client(zoo.target) as sdk:
        color = sdk.classify("heads", {"x": x}, output="color", top_k=2)
        outputs = sdk.config("heads").outputs
    assert color.labels is not None and color.labels.tolist() == [["red", "blue"], ["blue", "red"]]
    assert {o.name: o.label_filename for o in outputs} == {"animal": "animal.labels.txt", "color": "color.labels.txt"}

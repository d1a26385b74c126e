"""kerve.repository without TensorFlow: fake writers stand in for SavedModel exports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kerve import repository
from kerve.repository import RepositoryError


def fake_saved_model(path: Path) -> None:
    path.mkdir(parents=True)
    (path / repository.SAVED_MODEL_FILE).write_bytes(b"not really a SavedModel")
    (path / "variables").mkdir()
    (path / "variables" / "variables.index").write_bytes(b"")


def make_version(repo: Path, model: str, version: int | str, complete: bool = True) -> Path:
    path = repo / model / str(version)
    path.mkdir(parents=True)
    if complete:
        (path / repository.SAVED_MODEL_FILE).write_bytes(b"x")
    return path


def test_repository_does_not_import_tensorflow() -> None:
    # The client and the server's file watching depend on the repository module staying TensorFlow-free.
    code = "import sys, kerve.repository; sys.exit('tensorflow' in sys.modules or 'keras' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


@pytest.mark.parametrize(
    "name", ["../x", "/abs", "", ".hidden", "a/b", "..", ".", "a\\b", "x..y", "-dash", "a" * 129, "a b"]
)
def test_validate_model_name_rejects_unsafe(name: str) -> None:
    with pytest.raises(RepositoryError):
        repository.validate_model_name(name)


@pytest.mark.parametrize("name", ["digits", "a", "Model_1", "resnet-50", "v1.2", "a" * 128])
def test_validate_model_name_accepts_plain_names(name: str) -> None:
    assert repository.validate_model_name(name) == name


def test_model_dir_refuses_traversal(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError):
        repository.model_dir(tmp_path, "../outside")
    with pytest.raises(RepositoryError):
        repository.version_dir(tmp_path, "digits", 0)


def test_list_versions_ignores_dot_dirs_and_incomplete(tmp_path: Path) -> None:
    make_version(tmp_path, "digits", 1)
    make_version(tmp_path, "digits", 3)
    make_version(tmp_path, "digits", 10)
    make_version(tmp_path, "digits", 4, complete=False)  # no saved_model.pb
    make_version(tmp_path, "digits", ".tmp-123-abcd")
    make_version(tmp_path, "digits", ".5")
    make_version(tmp_path, "digits", "latest")
    make_version(tmp_path, "digits", 0)
    (tmp_path / "digits" / "7").write_text("a file, not a directory")

    assert repository.list_versions(tmp_path, "digits") == [1, 3, 10]
    assert repository.list_version_dirs(tmp_path, "digits") == [1, 3, 4, 10]
    assert repository.latest_version(tmp_path, "digits") == 10


def test_list_models_and_missing(tmp_path: Path) -> None:
    make_version(tmp_path, "digits", 1)
    (tmp_path / ".cache").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "README").write_text("")
    assert repository.list_models(tmp_path) == ["digits", "other"]
    assert repository.list_models(tmp_path / "missing") == []
    assert repository.list_versions(tmp_path, "missing") == []
    assert repository.latest_version(tmp_path, "missing") is None


def test_publish_picks_next_version_and_writes_metadata(tmp_path: Path) -> None:
    make_version(tmp_path, "digits", 1)
    make_version(tmp_path, "digits", 2)

    version = repository.publish(tmp_path, "digits", fake_saved_model, {"metrics": {"accuracy": 0.9}})

    assert version == 3
    target = tmp_path / "digits" / "3"
    assert (target / repository.SAVED_MODEL_FILE).is_file()
    meta = json.loads((target / repository.METADATA_FILE).read_text())
    assert meta == {"metrics": {"accuracy": 0.9}, "version": 3}
    assert repository.read_metadata(target) == meta
    assert repository.list_versions(tmp_path, "digits") == [1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "digits").iterdir()) == ["1", "2", "3"]


def test_publish_into_empty_repository_is_version_1(tmp_path: Path) -> None:
    repo = tmp_path / "new-repo"
    assert repository.publish(repo, "digits", fake_saved_model, {}) == 1
    assert repository.publish(repo, "digits", fake_saved_model, {}) == 2
    assert repository.list_versions(repo, "digits") == [1, 2]


def test_publish_skips_incomplete_version_numbers(tmp_path: Path) -> None:
    # An integer directory without saved_model.pb is not servable, but its number is still taken.
    make_version(tmp_path, "digits", 1)
    make_version(tmp_path, "digits", 2, complete=False)
    assert repository.publish(tmp_path, "digits", fake_saved_model, {}) == 3


def test_publish_explicit_version_refuses_existing(tmp_path: Path) -> None:
    make_version(tmp_path, "digits", 1)
    assert repository.publish(tmp_path, "digits", fake_saved_model, {}, version=5) == 5
    with pytest.raises(RepositoryError):
        repository.publish(tmp_path, "digits", fake_saved_model, {}, version=5)
    assert sorted(p.name for p in (tmp_path / "digits").iterdir()) == ["1", "5"]


def test_failing_writer_leaves_nothing_behind(tmp_path: Path) -> None:
    def writer(path: Path) -> None:
        fake_saved_model(path)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        repository.publish(tmp_path, "digits", writer, {})

    assert list(tmp_path.iterdir()) == []  # not even an empty model dir, which would list as a model
    assert repository.list_models(tmp_path) == []


def test_failing_writer_keeps_an_existing_model_dir(tmp_path: Path) -> None:
    make_version(tmp_path, "digits", 1)

    def writer(path: Path) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        repository.publish(tmp_path, "digits", writer, {})
    assert sorted(p.name for p in (tmp_path / "digits").iterdir()) == ["1"]


def test_unserializable_metadata_fails_before_writing(tmp_path: Path) -> None:
    calls = []
    with pytest.raises(repository.RepositoryError, match="not JSON-serializable"):
        repository.publish(tmp_path, "digits", calls.append, {"x": object()})
    assert calls == [] and list(tmp_path.iterdir()) == []


def test_writer_without_saved_model_raises_and_leaves_nothing(tmp_path: Path) -> None:
    make_version(tmp_path, "digits", 1)

    def writer(path: Path) -> None:
        path.mkdir()
        (path / "model.keras").write_bytes(b"wrong format")

    with pytest.raises(RepositoryError, match=repository.SAVED_MODEL_FILE):
        repository.publish(tmp_path, "digits", writer, {})

    assert sorted(p.name for p in (tmp_path / "digits").iterdir()) == ["1"]
    assert repository.list_versions(tmp_path, "digits") == [1]


def test_publish_rejects_bad_model_name_before_writing(tmp_path: Path) -> None:
    called = []
    with pytest.raises(RepositoryError):
        repository.publish(tmp_path, "../escape", lambda p: called.append(p), {})
    assert called == []
    assert list(tmp_path.iterdir()) == []


def test_read_metadata(tmp_path: Path) -> None:
    assert repository.read_metadata(tmp_path) == {}
    (tmp_path / repository.METADATA_FILE).write_text("[1, 2]")
    with pytest.raises(RepositoryError, match="JSON object"):
        repository.read_metadata(tmp_path)
    (tmp_path / repository.METADATA_FILE).write_text("{not json")
    with pytest.raises(RepositoryError, match="unreadable"):
        repository.read_metadata(tmp_path)


def test_class_labels_from_a_labels_file_or_the_training_metadata(tmp_path: Path) -> None:
    version = tmp_path / "1"
    version.mkdir()
    assert repository.class_labels(version) is None
    (version / repository.METADATA_FILE).write_text(
        json.dumps({"task": "classification", "dataset": {"class_names": ["cat", "dog"]}})
    )
    assert repository.class_labels(version) == repository.ClassLabels(single=("cat", "dog"))
    (version / repository.METADATA_FILE).write_text(
        json.dumps({"task": "regression", "dataset": {"class_names": ["x"]}})
    )
    assert repository.class_labels(version) is None
    (version / repository.LABELS_FILE).write_text("zero\none\n")  # a Triton-style label file wins
    assert repository.class_labels(version) == repository.ClassLabels(single=("zero", "one"), single_file="labels.txt")
    (version / repository.LABELS_FILE).write_bytes(b"\xff\xfe")
    with pytest.raises(RepositoryError, match="unreadable labels"):
        repository.class_labels(version)


def test_per_output_label_files_name_the_classes_of_each_output(tmp_path: Path) -> None:
    """Triton names a label file per output: `<output>.labels.txt` does that for a model with several outputs;
    labels.txt (or kerve.json's class names) names the classes of a signature with a single output."""
    version = tmp_path / "1"
    version.mkdir()
    (version / "animal.labels.txt").write_text("cat\ndog\nbird\n")
    (version / "color.labels.txt").write_text("red\nblue\n")
    (version / "empty.labels.txt").write_text("")  # names nothing: as if absent
    (version / "dir.labels.txt").mkdir()  # not a file: ignored
    labels = repository.class_labels(version)
    assert labels == repository.ClassLabels({"animal": ("cat", "dog", "bird"), "color": ("red", "blue")})
    both = ("animal", "color", "raw")
    assert labels.for_outputs(both) == {"animal": ("cat", "dog", "bird"), "color": ("red", "blue")}
    assert labels.for_outputs(["raw"]) == {}  # no labels.txt
    assert [labels.file_of(n, both) for n in both] == ["animal.labels.txt", "color.labels.txt", ""]
    (version / repository.LABELS_FILE).write_text("zero\none\n")
    labels = repository.class_labels(version)
    assert labels.for_outputs(["raw"]) == {"raw": ("zero", "one")}  # the single output of its signature
    assert labels.for_outputs(["color"]) == {"color": ("red", "blue")}  # its own file wins
    assert labels.for_outputs(["raw", "other"]) == {}  # labels.txt cannot say which of two outputs it names
    assert labels.file_of("raw", ["raw"]) == "labels.txt" and labels.file_of("raw", ["raw", "other"]) == ""
    assert labels.for_outputs(["raw"]) is labels.for_outputs(["raw"])  # resolved once per signature
    (version / "color.labels.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(RepositoryError, match="color.labels.txt: unreadable labels"):
        repository.class_labels(version)

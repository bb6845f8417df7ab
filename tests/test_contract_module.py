"""dyntta.contract: importable without the ML stack, and the one source of the names every layer shares."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

from dyntta import contract


def test_import_pulls_no_ml_stack() -> None:
    code = (
        "import sys, time; t = time.perf_counter(); import dyntta.contract; "
        "import json; print(json.dumps({'s': time.perf_counter() - t, "
        "'heavy': sorted(m for m in ('torch', 'numpy', 'PIL', 'matplotlib') if m in sys.modules)}))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    result = json.loads(out)
    assert result["heavy"] == []
    assert result["s"] < 0.1


def test_taxonomy_is_consistent() -> None:
    assert len(contract.BENCHMARK_CORRUPTIONS) == 15 and len(contract.EXTRA_CORRUPTIONS) == 4
    assert contract.CORRUPTIONS[:15] == contract.BENCHMARK_CORRUPTIONS
    assert len(set(contract.CORRUPTIONS)) == 19
    assert set(contract.GROUP_OF) == set(contract.CORRUPTIONS)
    assert contract.GROUP_OF["spatter"] == "extra" and contract.GROUP_OF["fog"] == "weather"


def test_resolve_conditions() -> None:
    assert contract.resolve_conditions() == (contract.CORRUPTIONS, (1, 2, 3, 4, 5))
    assert contract.resolve_conditions(["Contrast", "noise"], ["5", 1]) == (
        ("gaussian_noise", "shot_noise", "impulse_noise", "contrast"),
        (1, 5),
    )
    assert contract.resolve_conditions(["extras"])[0] == contract.EXTRA_CORRUPTIONS
    assert contract.resolve_conditions(["core"])[0] == contract.BENCHMARK_CORRUPTIONS
    with pytest.raises(ValueError, match="did you mean 'gaussian_noise'"):
        contract.resolve_conditions(["gausian_noise"])
    for bad in ([0], [6], [1.5], ["x"], [True], []):
        with pytest.raises(ValueError):
            contract.resolve_conditions(None, bad)
    with pytest.raises(ValueError, match="no corruptions"):
        contract.resolve_conditions([])


def test_image_discovery(tmp_path: Path) -> None:
    for name in ["b/1.PNG", "b/deep/2.jpg", "a/3.webp", "a/notes.txt", "a/._4.png", ".hidden/5.png", "c.bmp"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in contract.find_images(tmp_path)]
    assert found == ["a/3.webp", "b/1.PNG", "b/deep/2.jpg", "c.bmp"]
    classes, files = contract.find_class_images(tmp_path)
    assert classes == ["a", "b"]
    assert [(p.name, label) for p, label in files] == [("3.webp", 0), ("1.PNG", 1), ("2.jpg", 1)]
    assert contract.find_images(tmp_path / "c.bmp") == [tmp_path / "c.bmp"]
    assert not contract.is_image_path(PurePosixPath("__MACOSX/set/a/x.png"))


def test_parse_classification() -> None:
    entries = [b"0.9:2:Coat", "0.1:0:T-shirt/top", b"0.0:7:out of range", b"garbage"]
    assert contract.parse_classification(entries, 3) == ("T-shirt/top", "1", "Coat")
    assert contract.parse_classification([b"1.0:0:a:b"], 1) == ("a:b",)


def test_numbers(tmp_path: Path) -> None:
    probs = contract.softmax(np.array([[1000.0, 1000.0], [0.0, np.log(3.0)]], dtype=np.float32))
    np.testing.assert_allclose(probs, [[0.5, 0.5], [0.25, 0.75]], rtol=1e-6)
    (tmp_path / "f").write_bytes(b"abc")
    assert contract.sha256_file(tmp_path / "f").startswith("ba7816bf8f01cfea")
    assert contract.percent(0.91349) == "91.3" and contract.percent(0.5, 0) == "50"
    assert contract.percent(None) == "–" and contract.percent(float("nan")) == "–"
    assert contract.percent(-0.012, signed=True) == "-1.2" and contract.percent(0.012, signed=True) == "+1.2"


def test_fashion_mnist_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"")
    monkeypatch.setenv(contract.FASHION_MNIST_ENV, str(tmp_path))
    images, labels = contract.fashion_mnist_files("test")
    assert (images.name, labels.name) == ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte")
    with pytest.raises(contract.DatasetNotFoundError, match="train-images-idx3-ubyte.*apt-get install"):
        contract.fashion_mnist_files("train")
    assert contract.fashion_mnist_files("test", contract.FASHION_MNIST_DIR)[0].parent == contract.FASHION_MNIST_DIR


def test_training_round_trips_and_refuses_malformed_values() -> None:
    recipe = {"method": "dpl", "command": "python -m dyntta.train recognizer --method dpl", "epochs": 3}
    training = contract.Training.from_recipe(recipe)
    assert training == contract.Training(method="dpl", command=recipe["command"])  # only the described keys
    assert training is not None and contract.Training.from_json(training.to_json()) == training
    assert contract.Training.from_recipe({}) is None and contract.Training.from_json(None) is None
    for bad in ("{", "[1]", '{"method": 3}', '{"optimizer": "sgd"}'):
        with pytest.raises(ValueError):
            contract.Training.from_json(bad)

"""The README's "Your own images" section, run as written on a generated ImageFolder (issue 16 item 4).

The commands are read from the README itself, so the section cannot drift from what is tested; each gets
flags appended that make it fast (argparse keeps the last value of a repeated flag): a tiny timm model,
one epoch, a few corruptions. Each ``python -m MODULE ARGS`` runs as ``MODULE``'s ``main(ARGS)`` in this
process (what ``-m`` runs, without importing torch and timm four more times: ~30 s on 2 cores). The served
ensemble, a real gateway and Triton, must then answer for one of the folder's images.
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
from pathlib import Path

import httpx
import pytest

from serve.triton import free_port
from tests.serve.helpers import REPO_ROOT, start_serve, wait_ready
from tests.train.train_folders import make_image_folder

pytestmark = [pytest.mark.slow, pytest.mark.triton]

# What makes each README command fast here; the README's own flags stay in front and are overridden.
FAST_FLAGS = {
    "dyntta.train recognizer": ["--arch", "test_resnet", "--image-size", "32", "--epochs", "3", "--batch-size", "32"],
    "dyntta.train enhancer": ["--epochs", "1", "--batch-size", "32"],
    "dyntta.evaluate": ["--corruptions", "gaussian_noise", "fog", "--severities", "3", "--no-figures"],
    "export": ["--parity-images", "32"],
}


def readme_commands() -> tuple[list[list[str]], list[str]]:
    """The section's ``uv run python -m`` commands (argv after ``-m``), and its serve command."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Your own images", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```bash\n(.*?)```", section, re.S)[0]
    commands = [shlex.split(line)[4:] for line in block.splitlines() if line.startswith("uv run python -m ")]
    serve = [c for c in commands if c[0] == "serve"]
    assert len(serve) == 1, "the section serves the exported repository once"
    return [c for c in commands if c[0] != "serve"], serve[0]


def localise(argv: list[str], data: Path, work: Path) -> list[str]:
    """$DATA -> the generated folder, runs/... -> the test's directory."""
    return [str(data) if a == "$DATA" else str(work / a) if a.startswith("runs/") else a for a in argv]


def fast(argv: list[str]) -> list[str]:
    for prefix, flags in FAST_FLAGS.items():
        if " ".join(argv).startswith(prefix):
            return [*argv, *flags]
    raise AssertionError(f"no fast flags for {argv}: a new command in the README section needs an entry here")


def run_module(argv: list[str]) -> int:
    """``python -m argv[0] argv[1:]``, in this process: the module's ``__main__.main``."""
    main = importlib.import_module(f"{argv[0]}.__main__").main
    return int(main(argv[1:]))


@pytest.mark.timeout(600)
def test_readme_own_images_section_from_folder_to_served_ensemble(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "my-images", per_class=100, size=48)  # 3 classes, 300 + 75 photos
    commands, serve_argv = readme_commands()
    assert [c[0] for c in commands] == ["dyntta.train", "dyntta.train", "dyntta.evaluate", "export"]
    for argv in commands:
        argv = fast(localise(argv, data, tmp_path))
        assert run_module(argv) == 0, f"{' '.join(argv)} failed"

    report = json.loads((tmp_path / "runs/my-report/report.json").read_text())
    assert report["header"]["data"]["n"] == 75 and len(report["header"]["data"]["classes"]) == 3
    repository = Path(localise(serve_argv, data, tmp_path)[serve_argv.index("--model-repository") + 1])
    assert (repository / "dyntta" / "config.pbtxt").is_file()

    port = free_port()
    process = start_serve(repository, tmp_path / "state", port)
    try:
        url = wait_ready(process, port)
        photo = data / "test" / "class_2" / "0000.png"
        with photo.open("rb") as file:
            response = httpx.post(url + "/v1/classify", params={"top_k": 3}, files={"file": file}, timeout=60)
        assert response.status_code == 200, response.text
        top = response.json()["results"][0]["top_k"]
        assert {p["label"] for p in top} <= {"class_0", "class_1", "class_2"}
        assert top[0]["label"] == "class_2", top  # a learnable folder: the served ensemble gets it right
    finally:
        process.terminate()
        process.wait(timeout=60)

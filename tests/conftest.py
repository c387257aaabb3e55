"""Shared fixtures. Real assets live in ../shared; tests that need them skip with a message."""

import os
import pathlib

from records.machine import tensorflow_defaults  # stdlib only: TensorFlow is not loaded

# The command-line programs' TensorFlow settings (oneDNN on x86-64 among them), before any
# test imports TensorFlow: in-process runs and the programs the tests start as subprocesses
# then use the same kernels, so their numbers can be compared exactly (the kill-and-resume
# tests compare a subprocess's final weights with an in-process reference run).
tensorflow_defaults()
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def shared_path(*parts) -> pathlib.Path:
    """A path under ../shared, or skip the test saying what is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: this test needs the shared real assets beside the repo")
    return path


@pytest.fixture
def shared():
    return shared_path


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """`DUALENCODER_CACHE` points into the test's own tmp_path (nothing cached between tests)."""
    monkeypatch.setenv("DUALENCODER_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def synthetic_records(tmp_path_factory):
    """Small synthetic records built once per session: {"train", "val", "zeroshot"} -> dir.

    train: 128 captioned scenes, val: 64, zeroshot: 72 class-folder images (2 per class),
    all 64 px, seed 0.
    """
    from records.build import build_records

    root = tmp_path_factory.mktemp("synthetic_records")
    sizes = {"train": 128, "val": 64, "zeroshot": 72}
    dirs = {}
    for split, count in sizes.items():
        out = str(root / split)
        build_records("synthetic", out, num_images=count, image_size=64, seed=0, split=split,
                      shard_size=64)
        dirs[split] = out
    return dirs


@pytest.fixture
def make_image():
    """`make_image(path, size=(24, 16), color=(200, 30, 30), fmt="JPEG") -> bytes`: write a
    small solid-colour image file (creating parent folders) and return its bytes."""
    import io

    from PIL import Image

    def make(path, size=(24, 16), color=(200, 30, 30), fmt="JPEG"):
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        out = io.BytesIO()
        Image.new("RGB", size, color).save(out, format=fmt)
        path.write_bytes(out.getvalue())
        return out.getvalue()

    return make

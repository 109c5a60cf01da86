"""Shared fixtures: small generated image folders, the shared real data when present."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Keep tests on the CPU and single-threaded enough to be repeatable on 2 cores.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# `weights: auto` (the default) looks for pretrained weights in these caches: empty ones keep every
# test on random init whatever this machine has downloaded (tests/test_weights_auto.py fills its own).
_EMPTY = tempfile.mkdtemp(prefix="stagewise-tests-")
atexit.register(shutil.rmtree, _EMPTY, True)
os.environ["HF_HUB_CACHE"] = os.path.join(_EMPTY, "hf")
os.environ["STAGEWISE_WEIGHTS"] = os.path.join(_EMPTY, "weights")
os.environ["TORCH_HOME"] = os.path.join(_EMPTY, "torch")
# Saved dataset indexes (data/saved_index.py) go to a folder of this session, not ~/.cache.
if "STAGEWISE_INDEX_CACHE" not in os.environ:
    os.environ["STAGEWISE_INDEX_CACHE"] = tempfile.mkdtemp(prefix="stagewise-test-index-")
    atexit.register(shutil.rmtree, os.environ["STAGEWISE_INDEX_CACHE"], True)

@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread for the tests: 2-thread CPU kernels spin-wait, and on a 2-core machine
    shared with any other process they measured up to 100x slower than one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SHARED = Path(__file__).resolve().parents[1].parent / "shared"
HYMENOPTERA = SHARED / "data" / "hymenoptera"
EFFNET_WEIGHTS = SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors"


def make_image_folder(
    root: Path,
    classes: tuple[str, ...] = ("alpha", "beta", "gamma"),
    per_class: int = 8,
    size: int = 32,
    splits: tuple[str, ...] = ("train", "val"),
    seed: int = 0,
    fmt: str = "png",
) -> Path:
    """Class-separable images: each class has its own colour, plus noise."""
    rng = np.random.default_rng(seed)
    for split in splits or ("",):
        for ci, cls in enumerate(classes):
            d = root / split / cls if split else root / cls
            d.mkdir(parents=True, exist_ok=True)
            base = np.zeros(3)
            base[ci % 3] = 200
            base += 40 * (ci // 3)
            for i in range(per_class):
                arr = np.clip(base + rng.normal(0, 30, size=(size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f"{cls}_{i}.{fmt}")
    return root


def make_identity_folder(root: Path, identities: int = 12, views: int = 6, size: int = 32,
                         seed: int = 0) -> Path:
    """Re-identification data: every identity is the same object (a square patch) with its own
    2x2 colour pattern; its views differ in position, patch size, background colour and noise.

    The nuisances (a background covering most of the image) dominate untrained features, so an
    embedding has to learn to look at the pattern: what metric learning is for.
    """
    rng = np.random.default_rng(seed)
    for k in range(identities):
        pattern = rng.integers(0, 256, size=(2, 2, 3))
        d = root / f"id{k:02d}"
        d.mkdir(parents=True, exist_ok=True)
        for v in range(views):
            img = np.empty((size, size, 3))
            img[:] = rng.integers(0, 256, size=3)
            side = int(rng.integers(size // 2, 3 * size // 4 + 1)) // 2 * 2
            y, x = rng.integers(0, size - side + 1, size=2)
            img[y:y + side, x:x + side] = np.kron(pattern, np.ones((side // 2, side // 2, 1)))
            img += rng.normal(0, 8, size=img.shape)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"v{v}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "data")


@pytest.fixture(scope="session")
def curriculum(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from stagewise.data.synth import generate

    root = tmp_path_factory.mktemp("curriculum")
    generate(root, seed=0, scale=0.5)
    return root


@pytest.fixture
def hymenoptera() -> Path:
    if not HYMENOPTERA.is_dir():
        pytest.skip(f"shared data not present at {HYMENOPTERA}")
    return HYMENOPTERA


@pytest.fixture
def effnet_weights() -> Path:
    if not EFFNET_WEIGHTS.is_file():
        pytest.skip(f"shared weights not present at {EFFNET_WEIGHTS}")
    return EFFNET_WEIGHTS


def tiny_config(data: Path, out: Path, **kw) -> dict:
    """A fast CPU config: test_resnet at 32 px, no workers."""
    cfg = {"data": str(data), "model": "test_resnet", "image_size": 32, "batch_size": 8,
           "epochs": 2, "num_workers": 0, "out": str(out), "seed": 0, "lr": 1e-2, "report": False}
    cfg.update(kw)
    return cfg


class Crash(Exception):
    """A crash injected right after a checkpoint was written."""


def crash_then_resume(config: dict, monkeypatch: pytest.MonkeyPatch, *, mid_epoch: bool = True):
    """Train `config`, crash right after the first checkpoint of its second epoch (one saved inside
    it by checkpoint_every with `mid_epoch`, else the one at its start), then resume to the end."""
    import stagewise
    import stagewise.training.stage as stage

    real = stage._checkpoint

    def crash_after(setup, where) -> None:
        real(setup, where)
        if where.epoch == 1 and (where.batches_done > 0) == mid_epoch:
            raise Crash

    with monkeypatch.context() as patched:
        patched.setattr(stage, "_checkpoint", crash_after)
        with pytest.raises(Crash):
            stagewise.train(config, reporter="quiet")
    return stagewise.train(resume=True, reporter="quiet", out=config["out"])


def trained_run(root: Path, classes: tuple[str, ...]) -> tuple[Path, Path]:
    """(run folder, data folder) of test_resnet trained one epoch at 32 px on colour-coded
    `classes` (6 images each), no augmentation: the run that inference-side tests read."""
    import stagewise

    data = make_image_folder(root / "data", classes=classes, per_class=6)
    result = stagewise.train(tiny_config(data, root / "run", epochs=1, augmentation="none"),
                             reporter="quiet")
    return result.run_dir, data

"""`decoder:`: what each decoder returns for a large JPEG, and the key's validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stagewise.config import build_config
from stagewise.data.decode import draft_side, make_decoder
from stagewise.data.transforms import Preprocess
from stagewise.errors import ConfigError

PRE = Preprocess(64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # resize side 74: drafts keep >= 148 px


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smooth 640x480 JPEG (gradients), as photos are; one rotated by its EXIF tag."""
    y, x = np.mgrid[0:480, 0:640]
    arr = np.stack([x * 255 // 640, y * 255 // 480, (x + y) * 255 // 1120], -1).astype(np.uint8)
    path = tmp_path_factory.mktemp("jpeg") / "photo.jpg"
    Image.fromarray(arr).save(path, quality=92)
    return path


def test_draft_decodes_at_reduced_scale_never_below_twice_the_side(photo: Path) -> None:
    assert draft_side(PRE) == 148
    full = make_decoder("pil", PRE, training=True)(photo)
    drafted = make_decoder("pil-draft", PRE, training=True)(photo)
    assert full.size == (640, 480) and drafted.size == (320, 240)  # 1/4 would be 120 < 148
    # Small pixel changes only: the same picture at half the resolution.
    halved = np.asarray(full.resize(drafted.size, Image.BILINEAR), dtype=float)
    assert np.abs(np.asarray(drafted, dtype=float) - halved).mean() < 3


def test_auto_drafts_training_images_and_decodes_val_in_full(photo: Path) -> None:
    assert make_decoder("auto", PRE, training=True)(photo).size == (320, 240)
    assert make_decoder("auto", PRE, training=False)(photo).size == (640, 480)
    # A stage at 224 px keeps the full decode: half of 480 is under 2 x 256.
    big = Preprocess(224, (0.5,) * 3, (0.5,) * 3)
    assert make_decoder("auto", big, training=True)(photo).size == (640, 480)


@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")  # torchvision 0.29+
def test_torchvision_decodes_the_same_pixels_as_pillow(photo: Path, tmp_path: Path) -> None:
    tv, pil = make_decoder("torchvision", PRE, True), make_decoder("pil", PRE, True)
    assert np.array_equal(np.asarray(tv(photo)), np.asarray(pil(photo)))
    png = tmp_path / "x.png"  # not a JPEG: Pillow's path (transparency on white)
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(png)
    assert tv(png).getpixel((0, 0)) == (255, 255, 255)


def test_decoder_key_is_validated() -> None:
    assert build_config({"data": "d", "decoder": "pil-draft"}).decoder == "pil-draft"
    assert build_config({"data": "d"}).decoder == "auto"
    with pytest.raises(ConfigError, match="decoder"):
        build_config({"data": "d", "decoder": "nvjpeg"})


def test_a_run_saved_before_the_decoder_key_resumes_with_full_decoding(tmp_path: Path) -> None:
    from stagewise.training.setup import resume_config

    (tmp_path / "config.yaml").write_text("data: d\nmodel: test_resnet\n")
    assert resume_config(tmp_path, {}).decoder == "pil"
    (tmp_path / "config.yaml").write_text("data: d\nmodel: test_resnet\ndecoder: auto\n")
    assert resume_config(tmp_path, {}).decoder == "auto"

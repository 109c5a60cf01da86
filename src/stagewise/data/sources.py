"""Where `stagewise data fetch` downloads each dataset from, and how to check what arrives.

Checksums are the archive's full-file digest as published or as pinned by a well-kept loader
(noted per entry). `register_source` adds entries (tests serve their own archives this way).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import urlparse

from ..errors import DataError


@dataclass(frozen=True)
class Source:
    """One downloadable dataset archive."""

    name: str
    url: str
    checksum: str  # "md5:<hex>" or "sha256:<hex>"
    folder: str  # the top-level folder the archive unpacks to
    layout: str  # the reader that understands it (a `format:` value)
    size: int | None = None  # bytes, where known
    provenance: str = ""

    @property
    def filename(self) -> str:
        return PurePosixPath(urlparse(self.url).path).name

    @property
    def algorithm(self) -> str:
        return self.checksum.split(":", 1)[0]

    @property
    def digest(self) -> str:
        return self.checksum.split(":", 1)[1].lower()


_FASTAI = "https://s3.amazonaws.com/fast-ai-imageclas"
_TORONTO = "https://www.cs.toronto.edu/~kriz"

SOURCES: dict[str, Source] = {
    s.name: s for s in (
        Source("imagenette", f"{_FASTAI}/imagenette2.tgz", "md5:fe2fc210e6bb7c5664d602c3cd71e612",
               "imagenette2", "imagenette", provenance="md5 as pinned by torchvision's Imagenette"),
        Source("imagenette-160", f"{_FASTAI}/imagenette2-160.tgz",
               "md5:e793b78cc4c9e9a4ccc0c1155377a412", "imagenette2-160", "imagenette",
               provenance="md5 as pinned by torchvision's Imagenette"),
        Source("imagewoof-160", f"{_FASTAI}/imagewoof2-160.tgz",
               "md5:3d200a7be99704a0d7509be2a9fbfe15", "imagewoof2-160", "imagewoof",
               provenance="md5 used by community loaders (fastai publishes none for the whole file)"),
        Source("tiny-imagenet", "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
               "md5:90528d7ca1a48142e341f4ef8d21d0de", "tiny-imagenet-200", "tiny-imagenet",
               size=248_100_043, provenance="md5 used by common Tiny ImageNet loaders"),
        Source("cifar10", f"{_TORONTO}/cifar-10-python.tar.gz",
               "md5:c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py", "cifar",
               provenance="md5 published on the CIFAR page"),
        Source("cifar100", f"{_TORONTO}/cifar-100-python.tar.gz",
               "md5:eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python", "cifar",
               provenance="md5 published on the CIFAR page"),
    )
}

IMAGENET_INSTRUCTIONS = """\
ImageNet-1k cannot be downloaded automatically: its licence allows downloads only by registered
users who accept the terms of access. To use it:
  1. Sign up at https://image-net.org, accept the terms, and download ILSVRC2012_img_train.tar,
     ILSVRC2012_img_val.tar and ILSVRC2012_devkit_t12.tar.gz; or join the Kaggle competition
     'imagenet-object-localization-challenge' and download its files.
  2. Lay them out as DIR/train/<wnid>/*.JPEG (each class tar of the train archive unpacked into
     its wnid folder) and DIR/val/*.JPEG with ILSVRC2012_devkit_t12/ unpacked in DIR (its
     ground-truth file and meta.mat label the flat val images; reading meta.mat needs scipy);
     the Kaggle release works as unpacked (ILSVRC/Data/CLS-LOC/, LOC_val_solution.csv,
     LOC_synset_mapping.txt).
  3. Check it with: stagewise data inspect DIR   (then train with data: DIR, format: imagenet)"""

GATED = {"imagenet": IMAGENET_INSTRUCTIONS, "imagenet-1k": IMAGENET_INSTRUCTIONS}


def check_checksum(checksum: str, what: str) -> str:
    """`checksum` if it reads 'md5:<32 hex>' or 'sha256:<64 hex>'; DataError otherwise."""
    algo, _, digest = checksum.partition(":")
    length = {"md5": 32, "sha256": 64}.get(algo.lower())
    if length is None or len(digest) != length or not all(c in "0123456789abcdefABCDEF" for c in digest):
        raise DataError(f"{what}: checksum must be 'md5:<32 hex digits>' or 'sha256:<64 hex "
                        f"digits>', got {checksum!r}")
    return f"{algo.lower()}:{digest.lower()}"


def register_source(source: Source) -> None:
    """Add or replace a downloadable dataset (e.g. an internal mirror's archive)."""
    check_checksum(source.checksum, f"source {source.name}")
    SOURCES[source.name] = source


def get_source(name: str) -> Source:
    """The registered source called `name`; gated datasets raise with their instructions."""
    if name in GATED:
        raise DataError(GATED[name])
    if name not in SOURCES:
        raise DataError(f"unknown dataset '{name}'; fetch one of {', '.join(SOURCES)} "
                        f"(ImageNet-1k: see 'stagewise data fetch imagenet')")
    return SOURCES[name]

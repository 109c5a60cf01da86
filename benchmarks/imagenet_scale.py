"""The file index at ImageNet scale: stagewise's saved array index against torchvision's ImageFolder.

Generates (once; reused when present) an ImageNet-layout tree of N tiny JPEGs: train/<wnid>/ and
val/<wnid>/ over 1000 real wnids, val ~1/26 of the files as in ILSVRC2012. Then, in one process:
  - index time: torchvision ImageFolder(train) + ImageFolder(val) construction, against
    `stagewise data index` (first call: --refresh, a build; second call: read back);
  - bytes per indexed file: tracemalloc's retained size after building each index (ImageFolder's
    list of (str, int) tuples; stagewise's saved arrays as training holds them; the same samples
    as the list of Path + list of int that stagewise held before);
  - worker memory after fork: a DataLoader worker's private memory (USS from smaps_rollup)
    growth after it decodes a few samples and runs one full gc.collect() (what a worker's first
    GC generation-2 pass does to pages shared with the parent), minus the same for a dataset
    with no index (the control: what the GC copies of torch and the rest of the process);
  - loader img/s over the same 32 px transform, workers as given.
Figures are ratios against torchvision in the same process: absolute seconds depend on the disk
and on other load on the machine.

    nice -n 10 python benchmarks/imagenet_scale.py --files 100000 --root /tmp/imagenet_scale
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from stagewise.data.index import Samples
from stagewise.data.loader import ImageDataset, make_loader
from stagewise.data.synth_imagenet import family_wnids


def generate(root: Path, files: int) -> None:
    """N files in train/ and val/ wnid folders; one small JPEG per class, written many times
    (indexing and loading cost the same as for distinct bytes of the same size)."""
    n_val = max(1000, files // 26)
    per_train, per_val = (files - n_val) // 1000, n_val // 1000
    made = 1000 * (per_train + per_val)
    if (root / "done").is_file() and json.loads((root / "done").read_text())["files"] == made:
        return
    wnids = family_wnids(1000)
    rng = np.random.default_rng(0)
    for k, wnid in enumerate(wnids):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, "JPEG", quality=80)
        data = buf.getvalue()
        for split, n in (("train", per_train), ("val", per_val)):
            d = root / split / wnid
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (d / f"{wnid}_{k * 10000 + i}.JPEG").write_bytes(data)
    (root / "done").write_text(json.dumps({"files": made}))


def cli_index(root: Path, refresh: bool) -> dict:
    """`stagewise data index ROOT --json` in a fresh process, as a user runs it."""
    args = [sys.executable, "-m", "stagewise", "data", "index", str(root), "--json"]
    out = subprocess.run(args + (["--refresh"] if refresh else []), check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def imagefolders(root: Path) -> list:
    from torchvision.datasets import ImageFolder

    return [ImageFolder(str(root / "train")), ImageFolder(str(root / "val"))]


def as_lists(splits: dict[str, Samples]) -> dict[str, Samples]:
    """The representation before the saved index: a list of Path and a list of int per split."""
    return {name: Samples(labels=list(s.labels), paths=[Path(p) for p in s.paths or []])
            for name, s in splits.items()}


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        gc.collect()
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def retained_bytes(fn) -> tuple[int, object]:
    gc.collect()
    tracemalloc.start()
    out = fn()
    gc.collect()
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return size, out


def uss() -> int:
    """This process's private memory (Private_Clean + Private_Dirty), bytes."""
    total = 0
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1]) * 1024
    return total


class Probe(Dataset):
    """Returns the worker's USS growth since its first item; the last item runs a full GC first."""

    def __init__(self, ds, n: int):
        self.ds, self.n, self.base = ds, n, None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        if self.base is None:
            self.base = uss()
        self.ds[i * 37 % len(self.ds)]
        if i == self.n - 1:
            gc.collect()
        return uss() - self.base


class Control(Dataset):
    """No index at all: what a worker's GC copies of the rest of the process (torch, modules)."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> int:
        return 0


def worker_uss(kind: str, root: Path, out) -> None:
    """In a forked child holding only the `kind` index: a loader worker's private memory after
    it loads a few samples and runs a full GC (pages it copied from its parent included)."""
    import torchvision.transforms as T

    from stagewise.data.layouts import load_dataset

    tf = T.Compose([T.Resize((32, 32)), T.ToTensor()])
    if kind == "imagefolder":
        ds = imagefolders(root)[0]
        ds.transform = tf
    elif kind == "control (no index)":
        ds = Control()
    else:
        splits = load_dataset(root).splits
        if kind == "stagewise_lists":
            splits = as_lists(splits)
        ds = ImageDataset(splits["train"], tf, seed=0)
    gc.collect()

    class Final(Probe):
        def __getitem__(self, i: int) -> int:
            self.ds[i * 37 % len(self.ds)]
            if i == self.n - 1:
                gc.collect()
            return uss()

    out.put((kind, max(int(x) for x in DataLoader(Final(ds, 32), batch_size=None, num_workers=1))))


def worker_memory(root: Path) -> dict[str, int]:
    """USS of a worker after GC per index kind, each kind in its own forked parent (a GC walks
    every object of the process, so two indexes in one parent would be copied together)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    out: dict[str, int] = {}
    for kind in ("control (no index)", "imagefolder", "stagewise_lists", "stagewise_arrays"):
        q = ctx.Queue()
        p = ctx.Process(target=worker_uss, args=(kind, root, q))
        p.start()
        name, value = q.get()
        p.join()
        out[name] = value
    control = out["control (no index)"]
    return {k: (v - control if k != "control (no index)" else v) for k, v in out.items()}


def img_per_s(loader, limit: int) -> float:
    seen, t = 0, time.perf_counter()
    for batch in loader:
        images = batch.images if hasattr(batch, "images") else batch[0]
        seen += len(images)
        if seen >= limit:
            break
    return seen / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--root", type=Path, default=Path("/tmp/imagenet_scale"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--images", type=int, default=4096, help="images per loader pass")
    ap.add_argument("--index-only", action="store_true", help="index times only")
    args = ap.parse_args()
    import torchvision.transforms as T

    t = time.perf_counter()
    generate(args.root, args.files)
    print(f"tree: {args.root} ready in {time.perf_counter() - t:.0f}s", flush=True)
    os.environ.setdefault("STAGEWISE_INDEX_CACHE", str(args.root.parent / (args.root.name + "-index")))
    memory = {} if args.index_only else worker_memory(args.root)
    time.sleep(2.5)  # the saved index distrusts folders changed in the 2 s before it is built
    r = {}
    r["imagefolder_s"], folders = timed(lambda: imagefolders(args.root))
    first, second = cli_index(args.root, refresh=True), cli_index(args.root, refresh=False)
    r["index_first_s"], r["index_cached_s"] = first["seconds"], second["seconds"]
    r["files"] = first["files"]
    assert second["cached"] and not first["cached"], (first, second)
    r["first_ratio"] = r["index_first_s"] / r["imagefolder_s"]
    r["cached_ratio"] = r["index_cached_s"] / r["imagefolder_s"]
    if args.index_only:
        print(json.dumps(r, indent=2))
        return
    from stagewise.data.layouts import load_dataset

    b_tv, _ = retained_bytes(lambda: imagefolders(args.root))
    b_arrays, index = retained_bytes(lambda: load_dataset(args.root))
    b_lists, listed = retained_bytes(lambda: as_lists(index.splits))
    r["worker_uss_after_gc_bytes"] = memory
    n = r["files"]
    r["bytes_per_file"] = {"imagefolder": b_tv / n, "stagewise_lists": b_lists / n,
                           "stagewise_arrays": b_arrays / n}
    tf = T.Compose([T.Resize((32, 32)), T.ToTensor()])
    tv_train = folders[0]
    tv_train.transform = tf
    ours = ImageDataset(index.splits["train"], tf, seed=0)
    tv_loader = DataLoader(tv_train, batch_size=64, shuffle=True, num_workers=args.workers,
                           generator=torch.Generator().manual_seed(0))
    loaders = {"imagefolder": tv_loader, "stagewise_arrays": make_loader(ours, 64, True, 0, args.workers),
               "stagewise_lists": make_loader(ImageDataset(listed["train"], tf, seed=0), 64, True, 0,
                                              args.workers)}
    r["img_s"] = {k: 0.0 for k in loaders}
    for _ in range(2):  # interleaved passes, the best of each: the least disturbed by other load
        for k, loader in loaders.items():
            r["img_s"][k] = max(r["img_s"][k], img_per_s(loader, args.images))
    print(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()

"""WebDataset tars against LitData optimized chunks, on the same images, in one process (issue 21).

Both store each image file's bytes as they are plus its label. Reports write time, the files
made, and reading speed three ways: raw bytes streamed in order, the same with a full PIL decode,
and random access by sample index (what stagewise's exact mid-epoch resume needs). Timings on a
shared machine are noise in absolute terms: compare the two formats' ratios within one run.

    python benchmarks/shards.py --data /work/bench_data/imagenette --out /tmp/bench-shards
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from stagewise.data.layouts import load_dataset
from stagewise.data.shard_writer import parse_size, write_shards
from stagewise.data.shards import read_member, read_shards


def _litdata_item(item: tuple[str, int]) -> dict:
    path, label = item
    return {"image": Path(path).read_bytes(), "label": label}


def write_litdata(items: list[tuple[str, int]], out: Path, size: str) -> float:
    import litdata

    start = time.perf_counter()
    litdata.optimize(fn=_litdata_item, inputs=items, output_dir=str(out), chunk_bytes=size,
                     num_workers=1, reorder_files=False, verbose=False, mode="overwrite",
                     start_method="fork")
    return time.perf_counter() - start


def rate(n: int, fn) -> float:
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def read_wds_stream(folder: Path, decode: bool) -> int:
    import webdataset as wds

    urls = [str(p) for p in sorted(folder.glob("train-*.tar"))]
    n = 0
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        data = next(v for k, v in sample.items() if k in ("jpg", "jpeg", "png"))
        if decode:
            Image.open(io.BytesIO(data)).convert("RGB")
        n += 1
    return n


def read_litdata_stream(folder: Path, decode: bool) -> int:
    import litdata

    ds = litdata.StreamingDataset(str(folder))
    n = 0
    for item in ds:
        if decode:
            Image.open(io.BytesIO(item["image"])).convert("RGB")
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size", default="64MB")
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    import webdataset  # noqa: F401 - imported before the clock starts, as litdata is

    load_dataset(args.data)  # warms the page cache for what follows
    start = time.perf_counter()
    index = load_dataset(args.data)
    indexing = time.perf_counter() - start
    # Both formats write every split (webdataset: one file set per split; litdata: all items in
    # one dataset, the same bytes); only train is read back.
    every = [(str(p), lab) for s in index.splits.values()
             for p, lab in zip(s.paths or [], s.labels, strict=True)]
    train = index.splits["train"]
    items = [(str(p), lab) for p, lab in zip(train.paths or [], train.labels, strict=True)]
    n = len(items)

    start = time.perf_counter()
    write_shards(args.data, args.out / "wds", parse_size(args.size))
    wds_write = time.perf_counter() - start - indexing  # write_shards indexes the folder again
    lit_write = write_litdata(every, args.out / "litdata", args.size)
    write_litdata(items, args.out / "litdata-train", args.size)
    ws = read_shards(args.out / "wds").splits["train"]
    order = np.random.default_rng(0).permutation(n).tolist()
    import litdata

    lit = litdata.StreamingDataset(str(args.out / "litdata-train"))
    res = {
        "images": n,
        "indexing_s": round(indexing, 2), "written": len(every),
        "write_s": {"webdataset": round(wds_write, 2), "litdata": round(lit_write, 2)},
        "bytes": {k: sum(f.stat().st_size for f in (args.out / k).rglob("*") if f.is_file())
                  for k in ("wds", "litdata")},
        "stream_bytes_img_s": {"webdataset": rate(n, lambda: read_wds_stream(args.out / "wds", False)),
                               "litdata": rate(n, lambda: read_litdata_stream(args.out / "litdata-train", False))},
        "stream_decode_img_s": {"webdataset": rate(n, lambda: read_wds_stream(args.out / "wds", True)),
                                "litdata": rate(n, lambda: read_litdata_stream(args.out / "litdata-train", True))},
        "random_access_img_s": {"webdataset+offsets": rate(n, lambda: [read_member(ws.paths[i]) for i in order]),  # type: ignore[index]
                                "litdata": rate(n, lambda: [lit[i] for i in order])},
        "folder_random_img_s": rate(n, lambda: [Path(items[i][0]).read_bytes() for i in order]),
    }
    print(json.dumps(res, indent=1, default=lambda v: round(v)))


if __name__ == "__main__":
    main()

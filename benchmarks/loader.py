"""stagewise's training loader against a plain torchvision ImageFolder + DataLoader, same run.

Both use the same timm training transform (the `standard` preset at --size), batch size and
workers over the same folder's training split; stagewise's is timed with each `decoder:` (pil,
pil-draft, torchvision) and, with --shards, reading a shard folder of the same images. Reports
images per second as the best of --rounds passes, the loaders taking turns (a first untimed pass
starts the workers), and the ratio to ImageFolder. Absolute figures on a shared machine are
noise: read the ratios.

Decoding alone (no loader) is measured too, with the pixel difference of each decoder from a full
Pillow decode after the eval transform (resize + center crop): what `pil-draft` changes.

    python benchmarks/loader.py --data /work/shared/data/hymenoptera --size 64 --workers 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from stagewise.data import ImageDataset, build_transform, load_dataset, make_loader
from stagewise.data.decode import make_decoder
from stagewise.data.images import load_rgb
from stagewise.data.shard_writer import write_shards
from stagewise.data.transforms import Preprocess

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def one_pass(loader, epoch: int) -> float:
    """Images per second over one pass of `loader` (the sampler set to `epoch` when it has one)."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    n, start = 0, time.perf_counter()
    for batch in loader:
        n += len(batch.labels) if hasattr(batch, "labels") else len(batch[1])
    return n / (time.perf_counter() - start)


def best_rates(loaders: dict, rounds: int) -> dict[str, float]:
    """Each loader's best pass over `rounds` rounds, the loaders taking turns within a round
    (so that a burst of load on the shared machine hits them all alike); round 0 starts the
    persistent workers and is not counted."""
    rates: dict[str, list[float]] = {k: [] for k in loaders}
    for r in range(rounds + 1):
        for name, loader in loaders.items():
            rate = one_pass(loader, r)
            if r:
                rates[name].append(rate)
    return {k: max(v) for k, v in rates.items()}


def stagewise_loader(root: Path, pre: Preprocess, decoder: str, args: argparse.Namespace):
    samples = load_dataset(root).splits["train"]
    ds = ImageDataset(samples, build_transform(pre, "standard", True), seed=0)
    ds.decode = make_decoder(decoder, pre, training=True)
    return make_loader(ds, args.batch_size, True, 0, args.workers)


def plain_loader(root: Path, pre: Preprocess, args: argparse.Namespace) -> DataLoader:
    from torchvision.datasets import ImageFolder

    ds = ImageFolder(str(root / "train"), transform=build_transform(pre, "standard", True))
    return DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                      persistent_workers=args.workers > 0)


def decode_only(root: Path, pre: Preprocess, limit: int, rounds: int) -> dict:
    """Decode + eval transform per image, one process, the decoders taking turns (best round);
    the pixel error of each against a full Pillow decode."""
    paths = (load_dataset(root).splits["train"].paths or [])[:limit]
    evaluate = build_transform(pre, "none", False)
    names = ("pil", "torchvision", "pil-draft")
    decoders = {name: make_decoder(name, pre, training=True) for name in names}
    seconds: dict[str, float] = {name: float("inf") for name in (*names, "decode only: pil")}
    for _ in range(rounds):
        for name, decode in decoders.items():
            seconds[name] = min(seconds[name], _time(lambda d=decode: [evaluate(d(p)) for p in paths]))
        seconds["decode only: pil"] = min(seconds["decode only: pil"],
                                          _time(lambda: [load_rgb(p) for p in paths]))
    reference = torch.stack([evaluate(load_rgb(p)) for p in paths])
    out: dict = {}
    for name, decode in decoders.items():
        xs = torch.stack([evaluate(decode(p)) for p in paths])
        # back to 0-255 levels: x = (v/255 - mean) / std
        levels = (xs - reference).abs() * torch.tensor(STD).view(1, 3, 1, 1) * 255
        out[name] = {"img_s": round(len(paths) / seconds[name], 1),
                     "vs_pil": round(seconds["pil"] / seconds[name], 3),
                     "mean_abs_levels": round(levels.mean().item(), 3),
                     "p99_levels": round(levels.flatten()[::7].quantile(0.99).item(), 1)}
    out["decode only: pil"] = {"img_s": round(len(paths) / seconds["decode only: pil"], 1)}
    return out


def agreement(root: Path, weights: Path, sizes: list[int]) -> dict:
    """tf_efficientnet_lite0's ImageNet predictions on the val split decoded with pil and with
    pil-draft (eval transform): top-1 agreement over the 1000 classes, and the accuracy of the
    ant (310) vs bee (309) logits on hymenoptera (class 0 ants, 1 bees)."""
    import timm
    from safetensors.torch import load_file

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(load_file(str(weights)))
    model.eval()
    val = load_dataset(root).splits["val"]
    labels = torch.tensor(val.labels)
    out: dict = {}
    for size in sizes:
        pre = Preprocess(size, MEAN, STD)
        evaluate = build_transform(pre, "none", False)
        logits = {}
        for name in ("pil", "pil-draft"):
            decode = make_decoder(name, pre, training=True)
            with torch.inference_mode():
                logits[name] = model(torch.stack([evaluate(decode(p)) for p in val.paths or []]))
        top = {k: v.argmax(1) for k, v in logits.items()}
        two = {k: round((v[:, [310, 309]].argmax(1) == labels).float().mean().item(), 4)
               for k, v in logits.items()}
        out[size] = {"top1_agreement": round((top["pil"] == top["pil-draft"]).float().mean().item(), 4),
                     "ant_bee_acc": two}
    return out


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/hymenoptera"))
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="timed passes per loader (best kept)")
    ap.add_argument("--shards", action="store_true", help="also read a shard folder of the data")
    ap.add_argument("--decode-limit", type=int, default=150)
    ap.add_argument("--agreement", type=Path, metavar="WEIGHTS",
                    help="tf_efficientnet_lite0 ImageNet weights: also compare its predictions")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pre = Preprocess(args.size, MEAN, STD)
    res: dict = {"size": args.size, "workers": args.workers, "batch_size": args.batch_size,
                 "decoding": decode_only(args.data, pre, args.decode_limit, args.rounds)}
    if args.agreement:
        res["agreement"] = agreement(args.data, args.agreement, [args.size, args.size * 3 // 2])
    loaders = {"torchvision ImageFolder": plain_loader(args.data, pre, args)}
    for decoder in ("pil", "pil-draft", "torchvision"):
        loaders[f"stagewise {decoder}"] = stagewise_loader(args.data, pre, decoder, args)
    tmp = Path(tempfile.mkdtemp())
    try:
        if args.shards:
            write_shards(args.data, tmp / "shards", 64 * 10**6)
            for decoder in ("pil", "pil-draft"):
                loaders[f"stagewise shards {decoder}"] = stagewise_loader(tmp / "shards", pre,
                                                                          decoder, args)
        rates = best_rates(loaders, args.rounds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = rates["torchvision ImageFolder"]
    res["loader"] = {k: {"img_s": round(v, 1), "vs_imagefolder": round(v / base, 3)} for k, v in rates.items()}
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

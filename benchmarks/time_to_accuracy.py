"""Time to accuracy of progressive training, the project's headline claim, measured.

(a) direct: the final dataset trained alone for E epochs from the starting weights;
(b) progressive: the easier datasets first, then the final one, E epochs in total (split as
    --epochs-per-stage says), each stage starting from the one before (head matched by class id).
Reported: best val top-1 of each on the final dataset, and for (b) the wall time and epochs
(counting the easier stages) until it first reached (a)'s best. Also (c), progressive resizing
within the direct run, when --resize is given.

Default data: the synthetic curriculum (`stagewise data synth`), resnet10t from scratch, as in the
demo. Real folders (Imagenette / Tiny ImageNet layouts or class folders):

    python benchmarks/time_to_accuracy.py                     # synthetic curriculum
    python benchmarks/time_to_accuracy.py --stages data/imagewoof2-160 --final data/imagenette2-160 \\
        --model resnet18 --weights r18.safetensors --epochs-per-stage 2,4 --image-sizes 128,160
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import stagewise


def _curve(history: list[dict]) -> list[tuple[int, float, float]]:
    """(epoch, elapsed seconds, val top-1) per trained epoch."""
    out, elapsed = [], 0.0
    for r in history:
        if r.get("epoch", 0) >= 1:
            elapsed += r["epoch_seconds"]
            out.append((r["epoch"], elapsed, r["val_top1"]))
    return out


def _reach(curve: list[tuple[int, float, float]], target: float, offset_epochs: int,
           offset_seconds: float) -> tuple[int | None, float | None]:
    for epoch, seconds, top1 in curve:
        if top1 >= target:
            return offset_epochs + epoch, offset_seconds + seconds
    return None, None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", nargs="*", type=Path, help="easier datasets, in order")
    ap.add_argument("--final", type=Path, help="the final dataset")
    ap.add_argument("--epochs-per-stage", default="4,4,4", help="epochs of each stage, final last")
    ap.add_argument("--image-sizes", default="32,48,64", help="image size of each stage, final last")
    ap.add_argument("--model", default="resnet10t")
    ap.add_argument("--weights", help="starting weights for both arms (default: random init)")
    ap.add_argument("--lr", type=float, default=0.004)
    ap.add_argument("--resize", action="store_true", help="also (c): progressive_resize 0.5 -> full")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="tta-"))
    shutil.rmtree(work / "runs", ignore_errors=True)
    stages, final = args.stages, args.final
    if final is None:
        folders = _synth(work / "data")
        stages, final = folders[:-1], folders[-1]
    epochs = [int(e) for e in args.epochs_per_stage.split(",")]
    sizes = [int(s) for s in args.image_sizes.split(",")]
    assert len(epochs) == len(sizes) == len(stages) + 1, "one epoch count and size per stage"
    base = {"model": args.model, "optimizer": "adamw", "scheduler": "one_cycle", "lr": args.lr,
            "weight_decay": 0.01, "batch_size": 32, "augmentation": "light", "num_workers": 0,
            "seed": 0, "report": False}
    strategy = "finetune" if args.weights else "scratch"
    start = {"weights": str(args.weights)} if args.weights else {}
    direct = stagewise.train({**base, **start, "data": str(final), "strategy": strategy,
                              "epochs": sum(epochs), "image_size": sizes[-1],
                              "out": str(work / "runs" / "direct")}, reporter="quiet")
    target = direct.best_top1
    spec = {"name": "tta", "defaults": base, "stages": [
        {"name": f"s{i}", "data": str(d), "epochs": e, "image_size": s,
         "strategy": (strategy if i == 0 else "finetune"), **(start if i == 0 else {})}
        for i, (d, e, s) in enumerate(zip([*stages, final], epochs, sizes, strict=True))]}
    result = stagewise.run(spec, work / "runs" / "progressive", reporter="quiet")
    hist = result.history["epochs"]
    before = [r for r in hist if r["stage"] != f"s{len(stages)}"]
    last = [r for r in hist if r["stage"] == f"s{len(stages)}"]
    pre_seconds = sum(r["epoch_seconds"] for r in before)
    reached_epoch, reached_seconds = _reach(_curve(last), target, len(before), pre_seconds)
    direct_curve = _curve(direct.history)
    rows = [("direct", sum(epochs), direct_curve[-1][1] if direct_curve else 0.0, target,
             _reach(direct_curve, target, 0, 0.0)[0]),
            ("progressive", sum(epochs), pre_seconds + (_curve(last)[-1][1] if last else 0.0),
             max((r["val_top1"] for r in last), default=0.0), reached_epoch)]
    if args.resize:
        resized = stagewise.train({**base, **start, "data": str(final), "strategy": strategy,
                                   "epochs": sum(epochs), "image_size": sizes[-1],
                                   "progressive_resize": {"start": 0.5, "finish": 0.75},
                                   "out": str(work / "runs" / "resize")}, reporter="quiet")
        curve = _curve(resized.history)
        rows.append(("progressive_resize", sum(epochs), curve[-1][1], resized.best_top1,
                     _reach(curve, target, 0, 0.0)[0]))
    print(f"final dataset {final.name}, {args.model}, {'weights ' + str(args.weights) if args.weights else 'random init'}")
    print("| run | epochs | train seconds | best val top-1 (final data) | epochs to direct's best |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, e, secs, best, reach in rows:
        print(f"| {name} | {e} | {secs:.1f} | {100 * best:.1f}% | {reach if reach is not None else 'not reached'} |")
    if reached_seconds is not None:
        print(f"progressive reached the direct run's best ({100 * target:.1f}%) after {reached_seconds:.1f}s "
              f"of training, epoch {reached_epoch}")
    print(json.dumps({"rows": rows}))


def _synth(root: Path) -> list[Path]:
    if not (root / "level3").is_dir():
        from stagewise.data.synth import generate

        generate(root, "curriculum", 0)
    return [root / "level1", root / "level2", root / "level3"]


if __name__ == "__main__":
    main()

"""Time to accuracy of progressive training, the project's headline claim, measured at equal
wall-clock budget.

Arms, all scored on the final dataset's val split:
(a) direct: the final dataset trained alone from the starting weights (--direct-epochs, default:
    the sum of --epochs-per-stage);
(b) curriculum: the easier datasets first, then the final one (split as --epochs-per-stage says),
    each stage starting from the one before (head matched by class id: where the classes differ,
    only the backbone carries over); the easier stages' time counts against the budget;
(c) progressive_resize (--resize): direct with progressive_resize {start: 0.5, finish: 0.75};
(d) progressive (--progressive): direct with progressive learning {stages: 4, image_size:
    [half, full], randaugment_magnitude: [2, 8], mixup: [0.0, 0.2], drop_rate: [0.1, 0.3]}.

Reported per arm: epochs, wall seconds (each epoch's `wall_seconds` from history.jsonl, summed:
training, validation and checkpoint writes; set-up not counted; --time train uses
`epoch_seconds`, the training steps only), best val top-1, best val top-1 within the budget B
(B = the direct arm's total time, --budget-from direct, or --budget SECONDS) and the time each arm
first reached the direct arm's best.

Default data: the synthetic curriculum (`stagewise data synth`), resnet10t from scratch, as in the
demo. Real folders (Imagenette / Tiny ImageNet layouts or class folders):

    python benchmarks/time_to_accuracy.py                     # synthetic curriculum
    python benchmarks/time_to_accuracy.py --easier data/tiny-imagenet --final data/imagenette \\
        --model tf_efficientnet_lite0 --weights lite0.safetensors --recipe stagewise \\
        --epochs-per-stage 3,6 --direct-epochs 6 --image-sizes 64,128 --resize --progressive

--recipe script (the default) pins one recipe for every arm (adamw, one_cycle, --lr, light
augmentation), as the synthetic demo always did; --recipe stagewise leaves strategy, lr,
optimizer, scheduler and augmentation to stagewise's stage defaults (kinds.recipe: by where the
weights come from), and prints what each run resolved (its config.yaml).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import stagewise

RESOLVED = ("strategy", "weights_source", "optimizer", "lr", "weight_decay", "scheduler",
            "warmup_epochs", "layer_decay", "freeze_epochs", "augmentation", "image_size",
            "mean", "std", "head", "drop_rate", "mixup")


def _curve(history: list[dict], key: str = "wall_seconds") -> list[tuple[int, float, float]]:
    """(epoch, elapsed seconds, val top-1) per trained epoch; `key` is the per-epoch time summed."""
    out, elapsed = [], 0.0
    for r in history:
        if r.get("epoch", 0) >= 1:
            elapsed += r.get(key, r["epoch_seconds"])
            out.append((r["epoch"], elapsed, r["val_top1"]))
    return out


def _reach(curve: list[tuple[int, float, float]], target: float, offset_epochs: int,
           offset_seconds: float) -> tuple[int | None, float | None]:
    for epoch, seconds, top1 in curve:
        if top1 >= target:
            return offset_epochs + epoch, offset_seconds + seconds
    return None, None


def _row(name: str, curve: list[tuple[int, float, float]], offset_epochs: int = 0,
         offset_seconds: float = 0.0) -> dict[str, Any]:
    """An arm: its final-dataset curve, after `offset_*` spent on easier stages."""
    return {"arm": name, "epochs": offset_epochs + len(curve), "pre_epochs": offset_epochs,
            "pre_seconds": offset_seconds,
            "seconds": offset_seconds + (curve[-1][1] if curve else 0.0),
            "best": max((t for _, _, t in curve), default=0.0),
            "curve": [(offset_epochs + e, offset_seconds + s, t) for e, s, t in curve]}


def _within(row: dict[str, Any], budget: float) -> float | None:
    inside = [t for _, s, t in row["curve"] if s <= budget * 1.0001]
    return max(inside) if inside else None


def _resolved(run_dir: Path) -> dict[str, Any]:
    """The keys of RESOLVED that a run's config.yaml recorded."""
    import yaml

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    return {k: cfg.get(k) for k in RESOLVED if k in cfg}


def _preprocess(run_dir: Path) -> Any:
    """The mean/std the run normalised with (model.json's preprocess), where recorded."""
    for f in sorted(run_dir.rglob("model.json")):
        data = json.loads(f.read_text())
        pre = data.get("preprocess") or {}
        if pre:
            return {k: pre.get(k) for k in ("image_size", "mean", "std", "interpolation") if k in pre}
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", "--easier", nargs="*", type=Path, dest="stages",
                    help="easier datasets, in order")
    ap.add_argument("--final", type=Path, help="the final dataset")
    ap.add_argument("--epochs-per-stage", default="4,4,4", help="epochs of each stage, final last")
    ap.add_argument("--direct-epochs", type=int, help="epochs of the direct arms (a, c, d); "
                    "default: the sum of --epochs-per-stage")
    ap.add_argument("--image-sizes", default="32,48,64", help="image size of each stage, final last")
    ap.add_argument("--model", default="resnet10t")
    ap.add_argument("--weights", help="starting weights for every arm (default: random init)")
    ap.add_argument("--recipe", choices=("script", "stagewise"), default="script",
                    help="script: adamw/one_cycle/--lr/light for every arm; stagewise: the stage defaults")
    ap.add_argument("--lr", type=float, default=0.004, help="--recipe script only")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--num-workers", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resize", action="store_true", help="also (c): progressive_resize 0.5 -> full")
    ap.add_argument("--progressive", action="store_true", help="also (d): progressive learning")
    ap.add_argument("--progressive-stages", type=int, default=4)
    ap.add_argument("--budget-from", choices=("direct",), default="direct",
                    help="the budget B is this arm's total time")
    ap.add_argument("--budget", type=float, help="the budget B in seconds (overrides --budget-from)")
    ap.add_argument("--time", choices=("wall", "train"), default="wall",
                    help="wall: epochs' wall_seconds (training + validation + writes); train: epoch_seconds")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="tta-"))
    shutil.rmtree(work / "runs", ignore_errors=True)
    stages, final = args.stages or [], args.final
    if final is None:
        folders = _synth(work / "data")
        stages, final = folders[:-1], folders[-1]
    epochs = [int(e) for e in args.epochs_per_stage.split(",")]
    sizes = [int(s) for s in args.image_sizes.split(",")]
    assert len(epochs) == len(sizes) == len(stages) + 1, "one epoch count and size per stage"
    direct_epochs = args.direct_epochs or sum(epochs)
    key = "wall_seconds" if args.time == "wall" else "epoch_seconds"
    common = {"model": args.model, "batch_size": args.batch_size, "num_workers": args.num_workers,
              "seed": args.seed, "report": False}
    if args.recipe == "script":
        base = {**common, "optimizer": "adamw", "scheduler": "one_cycle", "lr": args.lr,
                "weight_decay": 0.01, "augmentation": "light"}
        strategy: str | None = "finetune" if args.weights else "scratch"
    else:
        base, strategy = common, None  # stagewise picks by weights_source
    start = {"weights": str(args.weights)} if args.weights else {}
    first = {"strategy": strategy} if strategy else {}
    later = {"strategy": "finetune"} if strategy else {}
    runs = work / "runs"
    size = sizes[-1]

    def direct_arm(name: str, **extra: Any) -> tuple[dict[str, Any], Path]:
        out = runs / name
        result = stagewise.train({**base, **start, **first, "data": str(final), "epochs": direct_epochs,
                                  "image_size": size, **extra, "out": str(out)}, reporter="quiet")
        return _row(name, _curve(result.history, key)), out

    rows, dirs = [], {}
    row, dirs["direct"] = direct_arm("direct")
    rows.append(row)
    spec = {"name": "tta", "defaults": base, "stages": [
        {"name": f"s{i}", "data": str(d), "epochs": e, "image_size": s,
         **(first if i == 0 else later), **(start if i == 0 else {})}
        for i, (d, e, s) in enumerate(zip([*stages, final], epochs, sizes, strict=True))]}
    result = stagewise.run(spec, runs / "curriculum", reporter="quiet")
    dirs["curriculum"] = runs / "curriculum"
    hist = result.history["epochs"]
    before = [r for r in hist if r["stage"] != f"s{len(stages)}" and r.get("epoch", 0) >= 1]
    last = [r for r in hist if r["stage"] == f"s{len(stages)}"]
    rows.append(_row("curriculum", _curve(last, key), len(before),
                     sum(r.get(key, r["epoch_seconds"]) for r in before)))
    if args.resize:
        row, dirs["progressive_resize"] = direct_arm(
            "progressive_resize", progressive_resize={"start": 0.5, "finish": 0.75})
        rows.append(row)
    if args.progressive:
        row, dirs["progressive"] = direct_arm("progressive", progressive={
            "stages": args.progressive_stages, "image_size": [max(16, size // 2), size],
            "randaugment_magnitude": [2, 8], "mixup": [0.0, 0.2], "drop_rate": [0.1, 0.3]})
        rows.append(row)

    budget = args.budget if args.budget is not None else rows[0]["seconds"]
    target = rows[0]["best"]
    start_name = f"weights {args.weights}" if args.weights else "random init"
    print(f"\nfinal dataset {final}, easier {', '.join(str(s) for s in stages) or '-'}; {args.model}, "
          f"{start_name}; recipe {args.recipe}; time = {key}; budget B = {budget:.1f}s; "
          f"direct's best = {100 * target:.1f}%")
    print("| arm | epochs | wall seconds | best val top-1 | best val top-1 within B | time to direct's best |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        reached_epoch, reached_seconds = _reach(r["curve"], target, 0, 0.0)
        inside = _within(r, budget)
        r["within_budget"], r["reach_epoch"], r["reach_seconds"] = inside, reached_epoch, reached_seconds
        epochs_text = (f"{r['pre_epochs']}+{r['epochs'] - r['pre_epochs']}" if r["pre_epochs"]
                       else str(r["epochs"]))
        secs_text = (f"{r['seconds']:.1f} ({r['pre_seconds']:.1f} easier)" if r["pre_epochs"]
                     else f"{r['seconds']:.1f}")
        reach_text = (f"{reached_seconds:.1f}s (epoch {reached_epoch})" if reached_seconds is not None
                      else "not reached")
        print(f"| {r['arm']} | {epochs_text} | {secs_text} | {100 * r['best']:.1f}% | "
              f"{'-' if inside is None else f'{100 * inside:.1f}%'} | {reach_text} |")
    print("\nper-epoch curves (epoch, cumulative seconds, val top-1):")
    for r in rows:
        print(f"  {r['arm']}: " + ", ".join(f"{e}:{s:.0f}s:{100 * t:.1f}%" for e, s, t in r["curve"]))
    print("\nresolved by stagewise (config.yaml):")
    resolved = {}
    for name, d in dirs.items():
        found = sorted(d.rglob("config.yaml"))
        for f in found:
            label = name if len(found) == 1 else f"{name}/{f.parent.name}"
            resolved[label] = {**_resolved(f.parent), "preprocess": _preprocess(f.parent)}
            print(f"  {label}: {json.dumps(resolved[label], default=str)}")
    out = {"budget": budget, "target": target, "time": key, "rows": rows, "resolved": resolved}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
    print(json.dumps({"rows": [{k: v for k, v in r.items() if k != "curve"} for r in rows]}, default=str))


def _synth(root: Path) -> list[Path]:
    if not (root / "level3").is_dir():
        from stagewise.data.synth import generate

        generate(root, "curriculum", 0)
    return [root / "level1", root / "level2", root / "level3"]


if __name__ == "__main__":
    main()

"""Re-identification on real photos: ImageNet features against metric-learned embeddings.

Every recipe is an embed stage (`task: embed`) on identity folders whose validation identities
were never trained on (train/<identity>/ and val/<identity>/, disjoint). Epoch 0 of each run is
the plain ImageNet features (the embedding head is bypassed), so the first row of every run is the
baseline and the gain is measured by the same code, on the same images, in the same process.
The figures reported are those of the LAST epoch: the best epoch is picked on these very
validation identities, so it would flatter the method.

Data (never committed; see docs/benchmarks.md for the sets used): any folder of identity folders
split as above. The sets measured were built from public GitHub copies of the AT&T/ORL faces
(tferrerITBA/MNA-Faces + surabhiiyer/CreepyTeddy- for s40) and the cropped Extended Yale B faces
(Uranium2/recognition @3129bff, yaleB12-B39, |azimuth| <= 60, |elevation| <= 45, 12 per person),
65% of the identities for training, RGB JPEG, longest side <= 256 px.

    python benchmarks/reid.py --data /work/data/reid2 /work/data/reid --epochs 30 --recipes 'probe arcface,probe supcon'
    python benchmarks/reid.py --data /work/data/reid2 --epochs 5 --image-size 160 --recipes 'finetune supcon'
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

import stagewise

WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "tf_efficientnet_lite0.in1k.safetensors"
RECIPES: dict[str, dict] = {
    # A head on frozen features: cached features make each epoch a few milliseconds.
    "probe arcface": {"strategy": "probe", "metric_loss": "arcface", "loss_args": {"scale": 16.0},
                      "lr": 1e-3},
    "probe supcon": {"strategy": "probe", "metric_loss": "supcon", "m_per_class": 4, "lr": 1e-3},
    # The whole network at a finetuning LR, with timm's layer-wise LR decay (each block 0.8x the
    # LR of the next), the first epoch on the fresh head alone.
    "finetune arcface": {"strategy": "finetune", "metric_loss": "arcface", "loss_args": {"scale": 16.0},
                         "lr": 1e-4, "layer_decay": 0.8, "freeze_epochs": 1},
    "finetune supcon": {"strategy": "finetune", "metric_loss": "supcon", "m_per_class": 4,
                        "lr": 1e-4, "layer_decay": 0.8, "freeze_epochs": 1},
}


def run(data: Path, name: str, recipe: dict, epochs: int, weights: Path, out: Path,
        image_size: int | None) -> dict:
    cfg = {"data": str(data), "model": "tf_efficientnet_lite0", "weights": str(weights),
           "task": "embed", "epochs": epochs, "batch_size": 32, "num_workers": 2, "seed": 0,
           "image_size": image_size,
           "augmentation": "light", "report": False, "out": str(out / name.replace(" ", "_")),
           **recipe}
    if recipe["strategy"] == "probe":
        cfg["augmentation"] = "none"  # exact cached features
    start = time.perf_counter()
    result = stagewise.train(cfg, reporter="quiet")
    seconds = time.perf_counter() - start
    first, last = result.history[0], result.history[-1]
    return {"data": data.name, "recipe": name, "r1_0": first["val_recall1"], "map_0": first["val_map"],
            "r1": last["val_recall1"], "map": last["val_map"], "map_r": last["val_map_at_r"],
            "map_r_0": first["val_map_at_r"], "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, nargs="+", required=True)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=None, help="default: the model's (224)")
    parser.add_argument("--weights", type=Path, default=WEIGHTS)
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated subset")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = Path(tempfile.mkdtemp(prefix="reid-bench-"))
    rows = []
    try:
        for data in args.data:
            for name in args.recipes.split(","):
                row = run(data, name, RECIPES[name], args.epochs, args.weights, out / data.name,
                          args.image_size)
                rows.append(row)
                print(f"{row['data']:>10} {row['recipe']:<17} ImageNet R@1 {row['r1_0']:.3f} mAP "
                      f"{row['map_0']:.3f} mAP@R {row['map_r_0']:.3f} -> epoch {args.epochs} R@1 "
                      f"{row['r1']:.3f} mAP {row['map']:.3f} mAP@R {row['map_r']:.3f} "
                      f"({row['seconds']:.0f}s)", flush=True)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print("\n| set | recipe | R@1 ImageNet | R@1 learned | mAP ImageNet | mAP learned | mAP@R ImageNet | "
          "mAP@R learned | time |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['data']} | {r['recipe']} | {r['r1_0']:.3f} | {r['r1']:.3f} | {r['map_0']:.3f} | "
              f"{r['map']:.3f} | {r['map_r_0']:.3f} | {r['map_r']:.3f} | {r['seconds']:.0f}s |")


if __name__ == "__main__":
    main()

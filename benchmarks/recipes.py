"""stagewise's default probe and finetune against a plain timm script, on small real photo sets.

Issue 15 (case 17): the defaults must never be below what a plain script gets. For each dataset
(a folder with train/<class>/ and val/<class>/), in one process, same split, same seed:

- plain probe: fresh timm head (timm's own init), backbone frozen in eval mode, resize + centre
  crop (timm's eval transform), features computed once, AdamW lr 1e-3 (torch's default weight
  decay), constant LR, batch 32;
- plain finetune: every parameter trains, BatchNorm in train mode, torchvision's tutorial
  augmentation (RandomResizedCrop + horizontal flip), AdamW at `--plain-finetune-lr` (1e-4: the
  usual "ten times lower than for a new head"), constant LR, batch 32;
- stagewise probe / finetune: `stagewise.train` with nothing but data, model, weights, strategy,
  epochs and seed (every other key at its default).

Each cell reports its best val top-1 over the epochs. Wall times are loose (shared machine).

    python benchmarks/recipes.py --data /work/data/flowers5 /work/data/clothing5 \
        ../shared/data/hymenoptera --epochs 5 --out runs/recipes

Data (never committed; fetched from public GitHub repositories, subsampled deterministically:
per class, the files sorted by the md5 of their repository path, the first N taken):

- flowers5: TensorFlow's 5-class flower_photos (daisy, dandelion, roses, sunflowers, tulips; only
  daisy is an ImageNet-1k class), as committed in github.com/Oldpel/flower_photos
  (dataset/train, dataset/val): 50 train and 25 val images per class (250 / 125).
- clothing5: github.com/alexeygrigorev/clothing-dataset-small (train, validation), classes dress,
  longsleeve, pants, shoes, t-shirt: 50 train and 20 val images per class (250 / 100).
- hymenoptera: ../shared/data/hymenoptera as it is (245 / 153).

    git clone --bare https://github.com/Oldpel/flower_photos /tmp/flowers.git
    git clone --bare https://github.com/alexeygrigorev/clothing-dataset-small /tmp/clothing.git
    python benchmarks/recipes.py --extract /tmp/flowers.git /work/data/flowers5 \
        dataset/train:train:daisy,dandelion,roses,sunflowers,tulips:50 \
        dataset/val:val:daisy,dandelion,roses,sunflowers,tulips:25
    python benchmarks/recipes.py --extract /tmp/clothing.git /work/data/clothing5 \
        train:train:dress,longsleeve,pants,shoes,t-shirt:50 \
        validation:val:dress,longsleeve,pants,shoes,t-shirt:20
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path

import torch
import yaml
from PIL import Image

import stagewise

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MODEL = "tf_efficientnet_lite0"
BATCH = 32


def extract(git_dir: str, out: Path, specs: list[str]) -> None:
    """Copy `src:dst:class,class:N` subsets out of a bare clone: the first N per class by md5."""
    names = subprocess.run(["git", f"--git-dir={git_dir}", "ls-tree", "-r", "HEAD", "--name-only"],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for spec in specs:
        src, dst, classes, n = spec.split(":")
        for cls in classes.split(","):
            files = sorted((f for f in names if f.startswith(f"{src}/{cls}/")
                            and f.lower().endswith((".jpg", ".jpeg"))),
                           key=lambda f: hashlib.md5(f.encode()).hexdigest())[: int(n)]
            (out / dst / cls).mkdir(parents=True, exist_ok=True)
            for f in files:
                blob = subprocess.run(["git", f"--git-dir={git_dir}", "show", f"HEAD:{f}"],
                                      capture_output=True, check=True).stdout
                (out / dst / cls / Path(f).name).write_bytes(blob)
            print(f"{out / dst / cls}: {len(files)} images")


# ---- the plain script ----------------------------------------------------------------------

def load_split(root: Path, classes: list[str]) -> tuple[list[Image.Image], torch.Tensor]:
    images, labels = [], []
    for i, cls in enumerate(classes):
        for path in sorted((root / cls).iterdir()):
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
            labels.append(i)
    return images, torch.tensor(labels)


def plain_model(weights: Path, num_classes: int, seed: int) -> torch.nn.Module:
    import timm
    from safetensors.torch import load_file

    torch.manual_seed(seed)
    model = timm.create_model(MODEL, num_classes=num_classes)  # timm's own init of the new head
    state = {k: v for k, v in load_file(str(weights)).items() if not k.startswith("classifier.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert set(missing) == {"classifier.weight", "classifier.bias"} and not unexpected
    return model


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean())


def plain_probe(model: torch.nn.Module, data: dict, epochs: int, seed: int) -> list[float]:
    """Features once (eval mode, centre crop), then AdamW on the fresh classifier alone."""
    model.eval()
    with torch.inference_mode():
        feats = {s: torch.cat([model.forward_head(model.forward_features(x), pre_logits=True)
                               for x in batches(data[s][0], data["eval_tf"])]) for s in ("train", "val")}
    head = model.get_classifier()
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    curve = []
    for _ in range(epochs):
        order = torch.randperm(len(feats["train"]), generator=gen)
        for idx in order.split(BATCH):
            loss = torch.nn.functional.cross_entropy(head(feats["train"][idx]), data["train"][1][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.inference_mode():
            curve.append(accuracy(head(feats["val"]), data["val"][1]))
    return curve


def plain_finetune(model: torch.nn.Module, data: dict, epochs: int, seed: int, lr: float) -> list[float]:
    """Every parameter, BatchNorm training, RandomResizedCrop + flip, AdamW at a constant `lr`."""
    from torchvision import transforms as T

    pre = data["eval_tf"].transforms[-1]  # Normalize with the model's mean/std
    train_tf = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), pre])
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    images, labels = data["train"]
    curve = []
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(images), generator=gen)
        for idx in order.split(BATCH):
            x = torch.stack([train_tf(images[i]) for i in idx])
            loss = torch.nn.functional.cross_entropy(model(x), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.inference_mode():
            logits = torch.cat([model(x) for x in batches(data["val"][0], data["eval_tf"])])
        curve.append(accuracy(logits, data["val"][1]))
    return curve


def batches(images: list[Image.Image], tf) -> list[torch.Tensor]:
    return [torch.stack([tf(im) for im in images[i:i + BATCH]]) for i in range(0, len(images), BATCH)]


def run_plain(root: Path, recipe: str, args: argparse.Namespace) -> dict:
    import timm

    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    model = plain_model(args.weights, len(classes), args.seed)
    data_cfg = timm.data.resolve_data_config({}, model=model)
    data = {"train": load_split(root / "train", classes), "val": load_split(root / "val", classes),
            "eval_tf": timm.data.create_transform(**data_cfg)}
    torch.manual_seed(args.seed)
    if recipe == "probe":
        curve = plain_probe(model, data, args.epochs, args.seed)
    else:
        curve = plain_finetune(model, data, args.epochs, args.seed, args.plain_finetune_lr)
    return {"curve": curve, "best": max(curve), "settings": "AdamW lr "
            f"{1e-3 if recipe == 'probe' else args.plain_finetune_lr:g}, constant"}


# ---- stagewise's defaults -------------------------------------------------------------------

def run_stagewise(root: Path, recipe: str, args: argparse.Namespace) -> dict:
    out = args.out / root.name / recipe
    shutil.rmtree(out, ignore_errors=True)
    result = stagewise.train({"data": str(root), "model": MODEL, "weights": str(args.weights),
                              "strategy": recipe, "epochs": args.epochs, "seed": args.seed,
                              "report": False}, out=out, reporter="quiet")
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    curve = [r["val_top1"] for r in result.history if r.get("epoch", 0) > 0]
    keys = ("lr", "augmentation", "freeze_epochs", "cache")
    return {"curve": curve, "best": result.best_top1,
            "settings": ", ".join(f"{k} {cfg.get(k)}" for k in keys if k in cfg)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, nargs="+", default=[SHARED / "data" / "hymenoptera"])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", type=Path, default=SHARED / "weights" / f"{MODEL}.in1k.safetensors")
    ap.add_argument("--plain-finetune-lr", type=float, default=1e-4)
    ap.add_argument("--recipes", default="probe,finetune")
    ap.add_argument("--sides", default="plain,stagewise", help="plain, stagewise or both")
    ap.add_argument("--out", type=Path, default=Path("runs/recipes"))
    ap.add_argument("--extract", nargs="+", metavar=("GIT_DIR OUT", "SPEC"),
                    help="only extract a subset: GIT_DIR OUT src:dst:class,class:N ...")
    args = ap.parse_args()
    if args.extract:
        extract(args.extract[0], Path(args.extract[1]), args.extract[2:])
        return
    rows = []
    for root in args.data:
        for recipe in args.recipes.split(","):
            for side in args.sides.split(","):
                start = time.perf_counter()
                cell = (run_plain if side == "plain" else run_stagewise)(root, recipe, args)
                cell.update(dataset=root.name, recipe=recipe, side=side,
                            seconds=round(time.perf_counter() - start, 1))
                rows.append(cell)
                print(json.dumps(cell), flush=True)
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    print("\n| dataset | recipe | plain | stagewise | delta (points) | stagewise settings |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    cells = {(r["dataset"], r["recipe"], r["side"]): r for r in rows}
    for (dataset, recipe, side), r in cells.items():
        if side != "stagewise":
            continue
        plain = cells.get((dataset, recipe, "plain"))
        p = f"{100 * plain['best']:.1f}" if plain else "-"
        delta = f"{100 * (r['best'] - plain['best']):+.1f}" if plain else "-"
        print(f"| {dataset} | {recipe} | {p} | {100 * r['best']:.1f} | {delta} | {r['settings']} |")


if __name__ == "__main__":
    main()

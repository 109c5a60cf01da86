"""Batched prediction throughput: `Classifier.predict` against a bare PyTorch loop, same model.

A model artifact (random-init weights + model.json) is written to a temporary folder and loaded
with `stagewise.load`, the path users take. Both sides classify the same preloaded, preprocessed
tensors in the same batches under `torch.inference_mode()` with the same thread count; the bare
loop does what a hand-written script would (forward, softmax, top-k), stagewise also builds its
Prediction objects. The two sides alternate batch by batch and each batch's best time is kept,
so load from other processes on a shared machine hurts both alike. Decoding is not timed (see predict CLI).

    python benchmarks/predict.py [--model resnet18] [--image-size 160] [--batch-size 32]
                                 [--images 256] [--threads 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

import stagewise
from stagewise.data.transforms import resolve_preprocess
from stagewise.training.checkpoint import model_state


def write_artifact(folder: Path, model_name: str, image_size: int, classes: int) -> Path:
    model = timm.create_model(model_name, pretrained=False, num_classes=classes)
    pre = resolve_preprocess(timm.data.resolve_data_config({}, model=model), image_size)
    save_file(model_state(model), str(folder / "best.safetensors"))
    ids = [f"class{i:03d}" for i in range(classes)]
    (folder / "model.json").write_text(json.dumps({
        "format": "stagewise.model/1", "architecture": model_name, "num_classes": classes,
        "class_ids": ids, "class_names": ids, "preprocess": pre.as_dict(),
        "weights": "best.safetensors"}))
    return folder


def bare_batch(model: torch.nn.Module, x: torch.Tensor, k: int) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        model(x).softmax(dim=1).topk(k, dim=1)
    return time.perf_counter() - start


def stagewise_batch(clf: stagewise.Classifier, x: torch.Tensor, k: int) -> float:
    start = time.perf_counter()
    preds = clf.predict(x, top_k=k, batch_size=x.shape[0])
    elapsed = time.perf_counter() - start
    assert len(preds) == x.shape[0]
    return elapsed


def best_times(clf: stagewise.Classifier, x: torch.Tensor, batch: int, k: int,
               repeats: int) -> tuple[float, float]:
    """Seconds for one pass over `x`, each side's per-batch best over `repeats`.

    The two sides alternate batch by batch (and swap who goes first each repeat), so a burst of
    load from another process lands on both rather than on whichever ran at the time.
    """
    chunks = [x[i:i + batch] for i in range(0, x.shape[0], batch)]
    bare = [float("inf")] * len(chunks)
    ours = [float("inf")] * len(chunks)
    for r in range(repeats):
        for j, chunk in enumerate(chunks):
            if r % 2:
                ours[j] = min(ours[j], stagewise_batch(clf, chunk, k))
                bare[j] = min(bare[j], bare_batch(clf.model, chunk, k))
            else:
                bare[j] = min(bare[j], bare_batch(clf.model, chunk, k))
                ours[j] = min(ours[j], stagewise_batch(clf, chunk, k))
    return sum(bare), sum(ours)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        clf = stagewise.load(write_artifact(Path(tmp), args.model, args.image_size, args.classes),
                             device="cpu")
    x = torch.randn(args.images, 3, args.image_size, args.image_size,
                    generator=torch.Generator().manual_seed(0))
    best_times(clf, x[: args.batch_size], args.batch_size, args.top_k, 1)  # warm-up both paths
    bare, ours = best_times(clf, x, args.batch_size, args.top_k, args.repeats)
    bare_ips, ours_ips = args.images / bare, args.images / ours
    print(f"{args.model} {args.image_size}px, batch {args.batch_size}, {args.images} images, "
          f"{args.threads} threads, per-batch best of {args.repeats}, device cpu")
    print(f"bare PyTorch loop      {bare_ips:8.1f} images/s")
    print(f"Classifier.predict     {ours_ips:8.1f} images/s")
    print(f"ratio (stagewise/bare) {ours_ips / bare_ips:8.3f}  (goal >= 0.9)")


if __name__ == "__main__":
    main()

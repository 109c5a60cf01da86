"""Grad-CAM: where in an image the model looked for the class it predicted (`stagewise explain`,
and the report's top losses), with the `grad-cam` package (pytorch-grad-cam).

The target layer is the last spatial feature map before global pooling:
- a timm model names it in `feature_info` (its last entry: `layer4` of a ResNet, `stages.3` of a
  ConvNeXt, `blocks.11` of a ViT);
- otherwise (a torchvision network, a plain module) one forward pass records every module's
  output and the last 4-D one with more than one pixel that is not a pooling layer is taken;
  where every map is 1x1 (a tiny input), the last 4-D one.
`layer=` (`--layer`) names it outright. Token outputs (B, N, C) of a ViT are reshaped to a grid
after its prefix (class/register) tokens. The map is computed for the predicted class.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data.images import BAD_IMAGE_ERRORS, load_rgb
from ..data.transforms import Preprocess
from ..errors import DataError, StagewiseError
from .classifier import Classifier
from .files import expand_paths

EXTRA_HINT = 'pip install "stagewise[explain]" (or pip install grad-cam)'
MIN_SIDE = 224  # px: overlays of small inputs are enlarged to this, so the map can be seen
_POOLING = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.MaxPool2d, nn.Flatten)


class ExplainError(StagewiseError):
    """Grad-CAM cannot run: the package is missing or the model has no spatial layer."""


@dataclass(frozen=True)
class Explanation:
    """One image's overlay and the prediction it explains."""

    source: str
    label: int
    class_id: str
    name: str
    probability: float
    overlay: Path


def require_gradcam() -> Any:
    """The pytorch_grad_cam module, or an error naming the extra to install."""
    try:
        import pytorch_grad_cam
    except ImportError:
        raise ExplainError(f"Grad-CAM needs the grad-cam package, which is not installed: {EXTRA_HINT}") from None
    return pytorch_grad_cam


def target_layer(model: nn.Module, image_size: int, name: str | None = None) -> tuple[str, nn.Module]:
    """The layer whose activations Grad-CAM weighs (see the module docstring)."""
    if name is None:
        info = getattr(model, "feature_info", None)
        if info:
            last = info[-1] if isinstance(info, list) else info.get_dicts()[-1]
            name = str(last.get("module", "")) or None
    if name is None:
        name = _last_spatial(model, image_size)
    try:
        return name, model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_children()]
        raise ExplainError(f"layer {name!r} is not a module of {type(model).__name__}; its top-level "
                           f"modules are {', '.join(names[:20])} (name a sub-module as a.b.c)") from None


def _last_spatial(model: nn.Module, image_size: int) -> str:
    """The last module (in completion order) with a 4-D output, preferring maps larger than 1x1."""
    seen: list[tuple[str, tuple[int, ...]]] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out, n=n: seen.append((n, tuple(out.shape))))
             for n, m in model.named_modules() if n and not isinstance(m, _POOLING)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    maps = [(n, s) for n, s in seen if len(s) == 4]
    if not maps:
        raise ExplainError(f"{type(model).__name__} has no layer with a spatial (N, C, H, W) output "
                           "to explain; name one with --layer")
    larger = [n for n, s in maps if s[2] * s[3] > 1]
    return larger[-1] if larger else maps[-1][0]


def _tokens_to_grid(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """(B, N, C) tokens -> (B, C, h, w) after the prefix tokens; 4-D outputs pass unchanged."""
    prefix = int(getattr(model, "num_prefix_tokens", 1 if hasattr(model, "cls_token") else 0))

    def reshape(t: torch.Tensor) -> torch.Tensor:
        if t.dim() != 3:
            return t
        grid = t[:, prefix:, :]
        side = math.isqrt(grid.shape[1])
        if side * side != grid.shape[1]:
            raise ExplainError(f"the layer's {grid.shape[1]} tokens (after {prefix} prefix tokens) "
                               "do not form a square grid; name another layer with --layer")
        return grid.reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)

    return reshape


def cam_maps(model: nn.Module, x: torch.Tensor, targets: Sequence[int], image_size: int,
             layer: str | None = None) -> np.ndarray:
    """Grad-CAM heat maps (N, H, W) in [0, 1] of `x` (preprocessed) for the class rows `targets`."""
    gradcam = require_gradcam()
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    _, module = target_layer(model, image_size, layer)
    with torch.enable_grad(), gradcam.GradCAM(model=model, target_layers=[module],
                                              reshape_transform=_tokens_to_grid(model)) as cam:
        cam.compute_input_gradient = True  # activations need a graph even when every weight is frozen
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    return np.asarray(maps, dtype=np.float32)


def overlay(view: torch.Tensor, heat: np.ndarray, pre: Preprocess, caption: str = "") -> Image.Image:
    """The preprocessed view (denormalised) with the heat map over it, and a caption bar below."""
    from PIL import ImageDraw
    from pytorch_grad_cam.utils.image import show_cam_on_image

    mean = torch.tensor(pre.mean).view(3, 1, 1)
    std = torch.tensor(pre.std).view(3, 1, 1)
    rgb = (view.detach().cpu().float() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    image = Image.fromarray(show_cam_on_image(rgb, heat, use_rgb=True))
    if image.width < MIN_SIDE:
        image = image.resize((MIN_SIDE, round(MIN_SIDE * image.height / image.width)), Image.Resampling.BILINEAR)
    if not caption:
        return image
    framed = Image.new("RGB", (image.width, image.height + 22), "white")
    framed.paste(image, (0, 0))
    ImageDraw.Draw(framed).text((4, image.height + 5), caption, fill="black")
    return framed


def explain(clf: Classifier, inputs: Sequence[str | Path], out: str | Path, layer: str | None = None,
            batch_size: int = 8) -> tuple[list[Explanation], list[tuple[str, str]]]:
    """One overlay PNG per image in `out` (file: `<stem>.gradcam.png`; its caption and PNG text
    fields say the predicted class and probability), and `explanations.csv` listing them.
    Returns (explanations, skipped files with why). A missing path is an error before anything
    is written; an undecodable file is skipped."""
    clf.require_classes("explain")
    found = expand_paths(list(inputs))
    missing = [(p, why) for p, why in found if why]
    if missing:
        raise DataError(f"{missing[0][0]}: {missing[0][1]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done: list[Explanation] = []
    skipped: list[tuple[str, str]] = []
    files = [p for p, _ in found]
    for start in range(0, len(files), batch_size):
        views, kept = [], []
        for path in files[start:start + batch_size]:
            try:
                views.append(clf.transform(load_rgb(Path(path))))
                kept.append(path)
            except BAD_IMAGE_ERRORS as exc:
                skipped.append((path, f"{type(exc).__name__}: {str(exc)[:120]}"))
        if views:
            done += _explain_batch(clf, torch.stack(views), kept, out, layer, {e.overlay.name for e in done})
    _write_listing(out / "explanations.csv", done)
    return done, skipped


def _explain_batch(clf: Classifier, x: torch.Tensor, paths: list[str], out: Path, layer: str | None,
                   taken: set[str]) -> list[Explanation]:
    x = x.to(clf.device)
    with torch.no_grad():
        conf, pred = clf.model(x).float().softmax(dim=1).max(dim=1)
    maps = cam_maps(clf.model, x, pred.tolist(), clf.preprocess.image_size, layer)
    result = []
    for i, path in enumerate(paths):
        label, p = int(pred[i]), float(conf[i])
        name = clf.class_names[label]
        target = out / _unique(f"{Path(path).stem}.gradcam.png", taken)
        taken.add(target.name)
        image = overlay(x[i], maps[i], clf.preprocess, f"{name} {100 * p:.1f}%")
        _save_png(image, target, {"source": path, "class_id": clf.class_ids[label], "class": name,
                                  "probability": f"{p:.6f}"})
        result.append(Explanation(path, label, clf.class_ids[label], name, p, target))
    return result


def _unique(name: str, taken: set[str]) -> str:
    """`name`, or `stem-2.gradcam.png`... when two inputs share a file name."""
    stem = name.removesuffix(".gradcam.png")
    k = 1
    while name in taken:
        k += 1
        name = f"{stem}-{k}.gradcam.png"
    return name


def _save_png(image: Image.Image, path: Path, text: dict[str, str]) -> None:
    from PIL.PngImagePlugin import PngInfo

    from ..io import write_with

    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    write_with(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))


def _write_listing(path: Path, rows: list[Explanation]) -> None:
    import csv
    import io

    from ..io import write_text

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "class_id", "class", "probability", "overlay"])
    for e in rows:
        writer.writerow([e.source, e.class_id, e.name, f"{e.probability:.6f}", e.overlay.name])
    write_text(path, buffer.getvalue())

"""Training augmentation as a list of torchvision v2 transforms, by name with arguments.

`augment: [{RandomResizedCrop: {scale: [0.5, 1.0]}}, RandomHorizontalFlip, TrivialAugmentWide,
{RandomErasing: {p: 0.25}}]` is checked at config load against each class's own signature, and
built here around the conversions stagewise owns: PIL in, ToImage + ToDtype + Normalize in the
middle, a normalised float tensor out. Steps that only make sense on that tensor (RandomErasing,
GaussianNoise) run after Normalize wherever the user listed them, as timm's RandomErasing does.

A list pasted from a torchvision tutorial works as it is (data.pasted reads the call syntax): its
ToTensor/ToImage/ToDtype are skipped (stagewise converts), its Normalize sets the run's mean/std
(config.schema, so model.json and inference use them too), and a list that ends in a fixed size
(RandomResizedCrop(224)) sets image_size when it is not given. docs/augment.md says more.

Every v2 transform draws from torch's default generator, which the dataset seeds per
(seed, epoch, index): an augmented sample is a pure function of those, so resume stays exact.
"""

from __future__ import annotations

import difflib
import inspect
from functools import lru_cache
from typing import Any

import torch

# Steps after Normalize: they expect a float tensor (erasing fills with normalised values).
TENSOR_STEPS = ("RandomErasing", "GaussianNoise")
# Steps that set the output size; without one, every image is resized to the model's size first
# so that a batch can be stacked.
SIZE_STEPS = ("RandomResizedCrop", "Resize", "CenterCrop", "RandomCrop")
# stagewise's own conversions: PIL -> float tensor, then Normalize with the run's mean/std. A
# pasted torchvision list names them (ToTensor, Normalize); they are accepted and skipped as steps,
# and Normalize's mean/std become the run's (config.schema fills mean:/std: from it).
CONVERSIONS = ("ToTensor", "ToImage", "PILToTensor", "ToDtype", "ConvertImageDtype",
               "ToPureTensor", "ToPILImage")
NORMALIZE = "Normalize"
OWN_STEPS = (*CONVERSIONS, NORMALIZE)
# Not accepted, with the reason said in the error: they act on whole batches.
_EXCLUDED = {"MixUp": "use the mixup: key (batch-level)", "CutMix": "use the cutmix: key (batch-level)"}
# Arguments in pixels, bounded like image_size: `Resize size: 30000` or `Pad padding: 20000` would
# allocate gigabytes per image in a loader worker (a MemoryError mid-epoch), and bypass the bound.
MAX_SIDE = 2048
_PIXEL_ARGS = ("size", "max_size", "padding", "kernel_size")
_NOT_PER_IMAGE = ("Compose", "RandomApply", "RandomChoice", "RandomOrder", "Lambda", "Transform",
                  "LinearTransformation", "FiveCrop", "TenCrop", "UniformTemporalSubsample",
                  "SetClampingMode", "RandomIoUCrop")


@lru_cache(maxsize=1)
def transform_names() -> tuple[str, ...]:
    """The v2 transform classes an `augment:` list may name."""
    from torchvision.transforms import v2

    out = []
    for name in dir(v2):
        cls = getattr(v2, name)
        if (isinstance(cls, type) and issubclass(cls, v2.Transform) and name[0].isupper()
                and name not in _EXCLUDED and name not in _NOT_PER_IMAGE
                and "Bounding" not in name and "KeyPoint" not in name):
            out.append(name)
    return tuple(sorted(out))


def split_step(item: Any) -> tuple[str, dict[str, Any]]:
    """`Name` or `{Name: {arg: value}}` (or `{Name: null}`) -> (name, kwargs)."""
    if isinstance(item, str):
        return item, {}
    if isinstance(item, dict) and len(item) == 1:
        name, args = next(iter(item.items()))
        if args is None or isinstance(args, dict):
            return str(name), dict(args or {})
    raise ValueError(f"each augment step is a transform name or {{Name: {{arg: value}}}}; got {item!r}"[:300])


def check_steps(items: list[Any], size: int = 224) -> None:
    """Raise ValueError naming the first bad step: unknown name (listing the valid ones), unknown
    argument (listing the class's own), or a value the class itself refuses."""
    valid = transform_names()
    for i, item in enumerate(items):
        name, kwargs = split_step(item)
        where = f"step {i + 1}"
        if name in _EXCLUDED:
            raise ValueError(f"{where}: {name} is not accepted: {_EXCLUDED[name]}")
        if name in CONVERSIONS:  # stagewise's own conversion: its arguments change nothing
            continue
        if name not in valid:
            close = difflib.get_close_matches(name[:100], valid, n=2)
            near = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise ValueError(f"{where}: unknown transform {name[:80]!r}{near}; valid: {', '.join(valid)}")
        params = _params(name)
        unknown = [str(k)[:80] for k in kwargs if k not in params]
        if unknown:
            raise ValueError(f"{where}: {name} has no argument {', '.join(map(repr, unknown[:3]))}; "
                             f"valid: {', '.join(params) or '(none)'}")
        _check_pixels(where, name, kwargs)
        try:
            make_step(name, kwargs, size)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {name}({_args(kwargs)[:200]}): {str(exc)[:300]}") from None
    normalization(items)
    output_size(items)


def _check_pixels(where: str, name: str, kwargs: dict[str, Any]) -> None:
    for key in _PIXEL_ARGS:
        values = kwargs.get(key)
        values = values if isinstance(values, list | tuple) else [values]
        big = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool) and abs(v) > MAX_SIDE]
        if big:
            raise ValueError(f"{where}: {name}({key}={kwargs[key]!r}): {big[0]} px is over {MAX_SIDE} px, "
                             f"the largest image_size; use at most {MAX_SIDE}")


def try_steps(items: list[Any], size: int) -> None:
    """Run the built steps once on a synthetic `size` px RGB image, every random step made to act
    (p=1), so that a value only the transform's call refuses (an interpolation name, posterize
    bits, a crop larger than the image) is found at config load, not in a loader worker.
    Raise ValueError naming the step, its arguments, the image size and the fix."""
    import numpy as np
    from PIL import Image
    from torchvision.transforms import v2

    steps = [(n, a) for n, a in map(split_step, items) if n not in OWN_STEPS]
    image: Any = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))
    # The image steps in their order, then the conversions, then the tensor steps (build_augment).
    order = [i for i, (n, _) in enumerate(steps) if n not in TENSOR_STEPS] + [-1] + \
            [i for i, (n, _) in enumerate(steps) if n in TENSOR_STEPS]
    convert = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    with torch.random.fork_rng(devices=[]):  # the caller's random streams stay as they were
        torch.manual_seed(0)
        for i in order:
            if i < 0:
                image = convert(image)
                continue
            name, kwargs = steps[i]
            forced = {**kwargs, "p": 1.0} if "p" in _params(name) else kwargs
            try:
                image = make_step(name, forced, size)(image)
            except Exception as exc:  # noqa: BLE001 - whatever the transform raises, it is this step's
                raise ValueError(
                    f"step {i + 1}: {name}({_args(kwargs)[:200]}) fails on a {size} px image (the "
                    f"stage's image_size): {type(exc).__name__}: {str(exc)[:200]}; {_fix(name)}"
                ) from None
            side = max(_sides(image))
            if side > MAX_SIDE:
                raise ValueError(f"step {i + 1}: {name}({_args(kwargs)[:200]}) makes a {side} px "
                                 f"image from a {size} px one, over {MAX_SIDE} px; use smaller values")


def _fix(name: str) -> str:
    crop = "a size no larger than image_size, or pad_if_needed: true, " if "Crop" in name else ""
    return f"change its arguments ({crop}values its documentation allows) or remove the step"


def _sides(image: Any) -> tuple[int, ...]:
    return tuple(image.size) if hasattr(image, "getbands") else tuple(image.shape[-2:])


def _params(name: str) -> list[str]:
    from torchvision.transforms import v2

    sig = inspect.signature(getattr(v2, name))
    return [p for p, v in sig.parameters.items() if v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)]


def _args(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def make_step(name: str, kwargs: dict[str, Any], size: int) -> Any:
    """One transform; a required `size` left out means the model's image size."""
    from torchvision.transforms import v2

    cls = getattr(v2, name)
    size_param = inspect.signature(cls).parameters.get("size")
    if size_param is not None and size_param.default is inspect.Parameter.empty and "size" not in kwargs:
        kwargs = {**kwargs, "size": size}
    return cls(**kwargs)


def build_augment(items: list[Any], size: int, mean: tuple[float, ...], std: tuple[float, ...],
                  resize: int, interpolation: str = "bilinear") -> Any:
    """PIL -> [image steps] -> ToImage, ToDtype, Normalize -> [tensor steps] -> float tensor."""
    from torchvision.transforms import v2

    steps = [(n, a) for n, a in map(split_step, items) if n not in OWN_STEPS]
    image = [make_step(n, a, size) for n, a in steps if n not in TENSOR_STEPS]
    tensor = [make_step(n, a, size) for n, a in steps if n in TENSOR_STEPS]
    if not any(n in SIZE_STEPS for n, _ in steps):
        mode = v2.InterpolationMode(interpolation if interpolation != "random" else "bilinear")
        image = [v2.Resize(resize, interpolation=mode), v2.CenterCrop(size), *image]
    elif output_size(items) is None:
        # Ends in Resize(int): the shorter side is fixed, the other varies with the aspect
        # ratio and a batch could not be stacked; crop the centre as evaluation does.
        image.append(v2.CenterCrop(size))
    convert = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose([*image, *convert, *tensor])


def normalization(items: list[Any]) -> tuple[list[float], list[float]] | None:
    """The (mean, std) of the list's Normalize step, None without one. Raise ValueError when
    there are two, or when they are not 3 values on the 0..1 pixel scale."""
    found = [kwargs for name, kwargs in map(split_step, items) if name == NORMALIZE]
    if not found:
        return None
    if len(found) > 1:
        raise ValueError(f"{NORMALIZE} is listed {len(found)} times; a run normalises once")
    pair = []
    for key in ("mean", "std"):
        values = found[0].get(key)
        ok = isinstance(values, list | tuple) and len(values) == 3 and all(
            isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 1 for v in values)
        if not ok or (key == "std" and 0 in values):  # type: ignore[operator]
            raise ValueError(f"{NORMALIZE}({key}={values!r}): give 3 values on the 0..1 pixel "
                             "scale, one per RGB channel (e.g. mean=[0.485, 0.456, 0.406], "
                             "std=[0.229, 0.224, 0.225]), std above 0; values on the 0..255 scale "
                             "divided by 255")
        pair.append([float(v) for v in values])  # type: ignore[union-attr]
    return pair[0], pair[1]


def output_size(items: list[Any]) -> int | None:
    """The square size the list's last size step makes (RandomResizedCrop(224), CenterCrop(224),
    Resize([224, 224])), or None when no step fixes both sides (none, or Resize(256) last).
    Raise ValueError for a non-square crop: image_size, and so evaluation, is square."""
    last = [(n, a) for n, a in map(split_step, items) if n in SIZE_STEPS]
    if not last:
        return None
    name, kwargs = last[-1]
    size = kwargs.get("size")
    sides = size if isinstance(size, list | tuple) else [size]
    if size is None or (name == "Resize" and len(sides) == 1):
        return None  # the size is image_size's (make_step), or only the shorter side is fixed
    if len(sides) == 2 and sides[0] != sides[1]:
        raise ValueError(f"{name}(size={list(sides)}): stagewise trains and evaluates square "
                         f"images (image_size); use one size, e.g. size={max(sides)}")
    if not isinstance(sides[0], int | float) or isinstance(sides[0], bool):
        raise ValueError(f"{name}(size={size!r}): expected a number of pixels")
    return int(sides[0])


def own_step_notes(items: list[Any], model: str, model_mean: Any, model_std: Any) -> list[str]:
    """What the run does with the conversions a pasted list names: a line for the log."""
    names = [n for n, _ in map(split_step, items) if n in OWN_STEPS]
    if not names:
        return []
    notes = [f"augment: {', '.join(names)} skipped as steps: stagewise converts images to "
             "normalised tensors itself"]
    norm = normalization(items)
    if norm is None:
        return notes
    pretrained = ([round(float(v), 4) for v in model_mean], [round(float(v), 4) for v in model_std])
    given = ([round(v, 4) for v in norm[0]], [round(v, 4) for v in norm[1]])
    if given == pretrained:
        notes.append(f"augment: {NORMALIZE}'s mean/std are {model}'s pretrained ones")
    else:
        notes.append(f"warning: augment: {NORMALIZE}(mean={given[0]}, std={given[1]}) differs from "
                     f"{model}'s pretrained mean={pretrained[0]}, std={pretrained[1]}; this run "
                     "normalises with yours in training, evaluation and inference (model.json)")
    return notes

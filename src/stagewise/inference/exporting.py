"""Export a trained model to ONNX or TorchScript, with its preprocessing written beside it and a
parity check: the exported file must give PyTorch's logits (within 1e-4) on sample inputs."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._version import __version__
from ..io import write_json, write_with
from ..runfolder import check_outputs
from . import choices
from .classifier import Classifier
from .export_result import TOLERANCE, ExportError, ExportResult

__all__ = ["TOLERANCE", "ExportError", "ExportResult", "export", "export_paths"]

FORMATS = choices.EXPORT_FORMATS
SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
DEFAULT_OPSET = choices.DEFAULT_OPSET


def export(
    clf: Classifier,
    fmt: str,
    out: str | Path | None = None,
    dynamic_batch: bool = False,
    opset: int = DEFAULT_OPSET,
    tolerance: float = TOLERANCE,
) -> ExportResult:
    """Write `clf` as `fmt` to `out` (default: beside its weights; hf: the folder RUN/hf) and check
    parity.

    Example:
        >>> r = export(stagewise.load("runs/pets"), "onnx", dynamic_batch=True)  # doctest: +SKIP
        >>> r.path, r.max_abs_diff  # doctest: +SKIP
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    if fmt == "hf":  # a folder in timm's layout, checked through timm's own loader
        from .hf_export import export_hf

        return export_hf(clf, out, tolerance=tolerance)
    path = _default_out(clf, fmt) if out is None else Path(out)
    check_outputs(export_paths(path), f"model{SUFFIX[fmt]}")
    # Export from a CPU copy: the file must not depend on the device the model was loaded on.
    model = clf.model if clf.device.type == "cpu" else copy.deepcopy(clf.model).cpu()
    model.eval()
    size = clf.preprocess.image_size
    gen = torch.Generator().manual_seed(0)
    # A fixed-batch ONNX file takes one image; otherwise trace at 2 so no shape is specialised to
    # 1, and check a second batch size to prove the batch really is free (TorchScript always is).
    free_batch = dynamic_batch or fmt == "torchscript"
    samples = [torch.randn(2 if free_batch else 1, 3, size, size, generator=gen)]
    if free_batch:
        samples.append(torch.randn(3, 3, size, size, generator=gen))
    if fmt == "onnx":
        _export_onnx(model, samples[0], path, opset, dynamic_batch)
        diff, note = _onnx_parity(model, path, samples)
    else:
        how = _export_torchscript(model, samples[0], path)
        diff, note = _torchscript_parity(model, path, samples)
        note = f"{note}; exported with torch.jit.{how}"
    if diff is not None and diff > tolerance:
        raise ExportError(f"{path}: written, but its logits differ from PyTorch's by up to {diff:.2e} "
                          f"(> {tolerance:g}); do not deploy it. Try another --opset or format")
    pre_path = export_paths(path)[1]
    write_json(pre_path, _preprocess_doc(clf, path, fmt, dynamic_batch, diff, note))
    return ExportResult(path=path, preprocess_path=pre_path, format=fmt, checked=diff is not None,
                        max_abs_diff=diff, note=note)


def export_paths(path: Path) -> list[Path]:
    """The model file and the preprocessing JSON beside it that `export` writes."""
    # model.onnx -> model.preprocess.json, model.torchscript.pt -> model.torchscript.preprocess.json
    return [path, path.with_suffix(".preprocess.json")]


def _default_out(clf: Classifier, fmt: str) -> Path:
    if clf.source is None:
        raise ExportError("this classifier was not loaded from a file; pass out=PATH")
    return Path(clf.source).parent / f"model{SUFFIX[fmt]}"


def _export_onnx(model: nn.Module, sample: torch.Tensor, path: Path, opset: int, dynamic: bool) -> None:
    try:
        import onnx  # noqa: F401  (torch's exporter needs it; fail with the fix, not deep inside)
    except ImportError:
        raise ExportError("ONNX export needs the onnx package: pip install 'stagewise[onnx]'") from None
    low, high = _opset_range()
    if not low <= opset <= high:
        # Checked here: past its range torch prints the whole IR graph before failing.
        raise ExportError(f"--opset {opset}: this torch exports opsets {low} to {high}; "
                          f"the default is {DEFAULT_OPSET}")
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None
    # dynamo=False: the TorchScript-based exporter needs no onnxscript and handles timm models;
    # torch warns that it is deprecated, which says nothing to our users.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        try:
            write_with(path, lambda tmp: _no_result(torch.onnx.export(
                model, (sample,), str(tmp), dynamo=False, opset_version=opset,
                input_names=["input"], output_names=["logits"], dynamic_axes=axes)))
        except (RuntimeError, ValueError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"ONNX export at opset {opset} failed: {first}; try another --opset "
                              "(e.g. 17 or 18) or --format torchscript") from None


def _opset_range() -> tuple[int, int]:
    """Opsets the TorchScript-based exporter writes (from 9: older ones need legacy graph forms)."""
    try:
        from torch.onnx import _constants  # private; its bounds follow the installed torch

        return 9, int(_constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
    except (ImportError, AttributeError):
        return 9, 20  # what torch 2.6 to 2.14 support


def _onnx_parity(model: nn.Module, path: Path, samples: list[torch.Tensor]) -> tuple[float | None, str]:
    import onnx

    onnx.checker.check_model(str(path))
    try:
        import onnxruntime as ort
    except ImportError:
        return None, ("parity NOT checked: onnxruntime is not installed "
                      "(pip install 'stagewise[onnx]'); the file passed onnx.checker")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diffs = []
    for x in samples:
        got = session.run(["logits"], {"input": x.numpy()})[0]
        diffs.append(float(np.abs(got - _reference(model, x)).max()))
    return max(diffs), f"parity checked with onnxruntime on batches of {_sizes(samples)}"


def _export_torchscript(model: nn.Module, sample: torch.Tensor, path: Path) -> str:
    # torch marks torch.jit deprecated, but TorchScript is the format asked for and still loads
    # without Python; scripting keeps control flow, tracing is the fallback for unscriptable code.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        try:
            compiled, how = torch.jit.script(model), "script"
        except Exception:  # scripting fails in many ways (types, Python features) and tracing may not
            with torch.no_grad():
                compiled, how = torch.jit.trace(model, sample), "trace"
        write_with(path, lambda tmp: torch.jit.save(compiled, str(tmp)))
    return how


def _torchscript_parity(model: nn.Module, path: Path, samples: list[torch.Tensor]) -> tuple[float, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path), map_location="cpu").eval()
        with torch.no_grad():
            diffs = [float((loaded(x).float() - torch.from_numpy(_reference(model, x))).abs().max())
                     for x in samples]
    return max(diffs), f"parity checked with torch.jit.load on batches of {_sizes(samples)}"


def _reference(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).float().numpy()


def _sizes(samples: list[torch.Tensor]) -> str:
    return " and ".join(str(x.shape[0]) for x in samples)


def _preprocess_doc(clf: Classifier, path: Path, fmt: str, dynamic: bool, diff: float | None,
                    note: str) -> dict[str, Any]:
    """What a runtime without stagewise needs to feed the exported model correctly."""
    pre = clf.preprocess
    batch: int | str = "batch" if dynamic or fmt == "torchscript" else 1
    return {
        "format": "stagewise.export/1",
        "model_file": path.name,
        "export_format": fmt,
        "architecture": clf.meta.get("architecture"),
        "class_ids": clf.class_ids,
        "class_names": clf.class_names,
        "preprocess": pre.as_dict(),
        "input": {"name": "input", "shape": [batch, 3, pre.image_size, pre.image_size],
                  "dtype": "float32", "layout": "NCHW", "color": "RGB",
                  "values": "resize shorter side to `resize`, center crop `image_size`, "
                            "scale to [0, 1], subtract mean, divide by std"},
        "output": {"name": "logits", "shape": [batch, clf.num_classes],
                   "meaning": "unnormalised scores; softmax gives probabilities"},
        "parity": {"checked": diff is not None, "max_abs_diff": diff, "tolerance": TOLERANCE,
                   "note": note},
        "stagewise_version": __version__,
    }


def _no_result(_value: object) -> None:
    """write_with's writers return nothing; torch.onnx.export returns a program object."""

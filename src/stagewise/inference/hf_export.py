"""Export a trained model as a Hugging Face Hub folder in timm's own layout.

The folder holds `config.json` (timm's pretrained config: architecture, classes, preprocessing),
`model.safetensors` (the network's state dict under timm's own keys), `README.md` (the model card)
and stagewise's `model.json`, so that both `timm.create_model("local-dir:DIR", pretrained=True)`
(or `hf-hub:user/repo` once pushed) and `stagewise.load(DIR)` rebuild the same network. The
export is checked the way the other formats are: timm's rebuild must give the logits of the model
that was loaded (within 1e-4), or nothing is left in place of an earlier export.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..io import replace_dir, write_json, write_text, write_with
from ..runfolder import MODEL_CARD, check_outputs
from .classifier import Classifier
from .export_result import TOLERANCE, ExportError, ExportResult
from .hf_card import card_text
from .hub import CONFIG_JSON, DEFAULT_DIR, FILES, README, WEIGHTS


def export_hf(clf: Classifier, out: str | Path | None = None, repo_id: str | None = None,
              license: str | None = None, tolerance: float = TOLERANCE) -> ExportResult:
    """Write `clf` as a timm/Hugging Face folder `out` (default: RUN/hf) and check that timm's
    `local-dir:` loader rebuilds it with the same logits.

    `repo_id` only names the model in the card (its title and load snippets); `license` goes into
    the card's metadata (an SPDX id such as apache-2.0, or "other").

    Example:
        >>> r = export_hf(stagewise.load("runs/pets"), "exports/pets")  # doctest: +SKIP
        >>> timm.create_model("local-dir:exports/pets", pretrained=True)  # doctest: +SKIP
    """
    refuse_unsupported(clf.meta)
    run_dir = Path(clf.source).parent if clf.source is not None else None
    if out is None:
        if run_dir is None:
            raise ExportError("this classifier was not loaded from a file; pass out=DIR")
        out = run_dir / DEFAULT_DIR
    out = Path(out).expanduser()
    _check_target(out)
    model = clf.model.cpu() if clf.device.type == "cpu" else _cpu_copy(clf.model)
    model.eval()
    config = timm_config(model, clf)
    name = repo_id or (run_dir.name if run_dir is not None else out.name)

    parity: list[float] = []  # what build() measured (replace_dir takes no result back)

    def build(tmp: Path) -> None:
        write_json(tmp / CONFIG_JSON, config)
        state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        write_with(tmp / WEIGHTS, lambda p: _save_safetensors(state, p))
        write_json(tmp / MODEL_CARD, public_meta(clf.meta))
        diff = _timm_parity(model, tmp, clf.preprocess.image_size)
        if diff > tolerance:
            raise ExportError(f"timm's local-dir: loader rebuilds {config['architecture']} with logits "
                              f"{diff:.2e} away from stagewise's (> {tolerance:g}); not exported")
        write_text(tmp / README, card_text(clf.meta, config, run_dir, name, license=license,
                                           parity=diff))
        parity.append(diff)

    replace_dir(build, out)
    return ExportResult(path=out, preprocess_path=out / CONFIG_JSON, format="hf", checked=True,
                        max_abs_diff=parity[0],
                        note="parity checked with timm.create_model('local-dir:...', pretrained=True)")


def public_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """model.json as published: the weights renamed, and the trainer's own paths (the data
    folder, a teacher's weights) cut to their last part, which is all a reader can use."""
    out = {**meta, "weights": WEIGHTS}
    if out.get("data"):
        out["data"] = Path(str(out["data"]).rstrip("/")).name
    if isinstance(out.get("teacher"), dict) and out["teacher"].get("source"):
        out["teacher"] = {**out["teacher"], "source": Path(str(out["teacher"]["source"])).name}
    return out


def refuse_unsupported(meta: dict[str, Any]) -> None:
    """timm must be able to build the network from config.json alone: refuse the models whose
    structure it does not know, with the formats that do carry them."""
    arch = str(meta.get("architecture", ""))
    if arch.startswith("tv:"):
        raise ExportError(f"--format hf writes timm's layout, and {arch} is torchvision's network "
                          "(timm cannot build it from config.json); use --format onnx or "
                          "torchscript, or train a timm model (e.g. the same name without tv:)")
    if meta.get("task") == "embed":
        raise ExportError("--format hf is for classifiers: this model is an embedding model "
                          "(task: embed) whose head timm does not have; use --format onnx or "
                          "torchscript")
    if meta.get("head_layers"):
        raise ExportError(f"--format hf writes timm's layout, and this model has an MLP head "
                          f"(head_layers: {meta['head_layers']}) that timm's network does not "
                          "have; use --format onnx or torchscript, or train with a linear head")


def timm_config(model: torch.nn.Module, clf: Classifier) -> dict[str, Any]:
    """config.json as timm's `local-dir:`/`hf-hub:` loaders read it: the architecture, the class
    count and names at the top, and the preprocessing stagewise trained with as pretrained_cfg
    (timm.data.resolve_data_config reads it back, so timm's own transform equals stagewise's)."""
    pre = clf.preprocess
    source = dict(getattr(model, "pretrained_cfg", None) or {})
    # The registry name without a pretrained tag: the tag names weights, and these are new ones.
    architecture = str(source.get("architecture") or clf.meta["architecture"]).split(".")[0]
    fixed = bool(source.get("fixed_input_size", False))
    pretrained_cfg: dict[str, Any] = {
        "input_size": [3, pre.image_size, pre.image_size],
        "interpolation": pre.interpolation,
        "mean": list(pre.mean),
        "std": list(pre.std),
        "crop_pct": pre.crop_pct,
        "crop_mode": "center",  # stagewise resizes the shorter side, then crops the centre
        "num_classes": clf.num_classes,
        "fixed_input_size": fixed,
    }
    for key in ("first_conv", "classifier"):  # where the stem and head are, for later fine-tuning
        if source.get(key):
            pretrained_cfg[key] = source[key]
    config: dict[str, Any] = {"architecture": architecture, "num_classes": clf.num_classes,
                              "num_features": int(getattr(model, "num_features", 0)) or None,
                              "label_names": list(clf.class_names)}
    if clf.class_ids != clf.class_names:
        # timm keeps label_descriptions as label name -> text; the class id is what data names.
        config["label_descriptions"] = {n: f"class id {i}" for n, i in zip(clf.class_names, clf.class_ids, strict=True)}
    if fixed:
        # A ViT's position embeddings are sized at construction: timm must build it at the size
        # it was trained at (model_args reach timm.create_model as keyword arguments).
        config["model_args"] = {"img_size": pre.image_size}
    config["pretrained_cfg"] = pretrained_cfg
    config["stagewise_version"] = __version__  # informational; timm ignores unknown keys
    return {k: v for k, v in config.items() if v is not None}


def _check_target(out: Path) -> None:
    """`out` is replaced as a whole: only an absent or empty folder, or an earlier export."""
    earlier = out.is_dir() and all((out / f).is_file() for f in (CONFIG_JSON, WEIGHTS))
    if not earlier:  # an earlier export holds model.json, so it reads as a run folder of its own
        check_outputs([out / name for name in FILES], f"{DEFAULT_DIR}/")
    if out.is_file():
        raise ExportError(f"--out {out}: is a file; name a folder for the export")
    if out.is_dir() and any(out.iterdir()) and not all((out / f).is_file() for f in (CONFIG_JSON, WEIGHTS)):
        raise ExportError(f"--out {out}: holds files that are not an earlier export (no {CONFIG_JSON} "
                          f"and {WEIGHTS}); it would be replaced as a whole, so name a new or empty folder")


def _cpu_copy(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model).cpu()


def _save_safetensors(state: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    # "format: pt" is what the Hub's loaders expect to find in the header of PyTorch weights.
    save_file(state, str(path), metadata={"format": "pt"})


def _timm_parity(model: torch.nn.Module, folder: Path, size: int) -> float:
    """The largest |logit difference| between `model` and timm's own rebuild of `folder`."""
    import timm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            rebuilt = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise ExportError(f"timm cannot rebuild the exported folder ({first}); not exported") from None
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return float((rebuilt(x).float() - model(x).float()).abs().max())

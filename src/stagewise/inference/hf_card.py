"""The model card (README.md) of a Hugging Face export: the Hub's YAML metadata, written by
huggingface_hub's `ModelCardData`, then what a reader needs to judge and use the model: how it
was trained (per stage for a pipeline), its metrics, its limits and how to load it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..metrics import METRICS, metric
from ..runfolder import read_config, read_manifest, stage_dir

# The keys of a stage's config that make up its recipe, in reading order.
RECIPE_KEYS = ("model", "weights", "strategy", "epochs", "freeze_epochs", "optimizer", "lr",
               "weight_decay", "scheduler", "warmup_epochs", "batch_size", "image_size",
               "augmentation", "auto_augment", "mixup", "cutmix", "label_smoothing", "ema",
               "layer_decay", "precision", "teacher", "seed")
MAX_CLASSES_LISTED = 50


def card_text(meta: Mapping[str, Any], config: Mapping[str, Any], run_dir: Path | None, name: str,
              license: str | None = None, parity: float | None = None) -> str:
    """README.md for the export of the model described by `meta` (model.json) and `config`
    (config.json), trained in `run_dir` (a stage or pipeline run folder; None: unknown)."""
    manifest = _manifest(run_dir)
    stages = _stage_configs(run_dir, manifest)
    base = _base_model(stages)
    sections = [
        f"# {name}\n\n{_summary(meta, config, manifest, base)}",
        _recipe(stages),
        _stage_history(manifest) if manifest else "",
        _metrics(meta),
        _classes(meta),
        _preprocessing(config),
        _intended_use(meta, parity),
        _how_to_load(name),
    ]
    body = "\n\n".join(s for s in sections if s)
    return f"---\n{_metadata(meta, name, license, base)}---\n\n{body}\n"


def _metadata(meta: Mapping[str, Any], name: str, license: str | None, base: str | None) -> str:
    """The card's YAML header: library, tags, dataset, metrics and the model-index results."""
    from huggingface_hub import EvalResult, ModelCardData

    dataset = _dataset_name(meta)
    results = [EvalResult(task_type="image-classification", task_name="Image Classification",
                          dataset_type=dataset, dataset_name=dataset, dataset_split="validation",
                          metric_type="accuracy", metric_name=metric(key).label,
                          metric_value=round(float(meta["metrics"][key]), 6))
               for key in ("val_top1", "val_top5") if _is_number((meta.get("metrics") or {}).get(key))]
    data = ModelCardData(library_name="timm", pipeline_tag="image-classification", license=license,
                         tags=["image-classification", "timm", "stagewise", "transfer-learning"],
                         datasets=[dataset], metrics=["accuracy"] if results else None,
                         base_model=base, model_name=name, eval_results=results or None)
    return data.to_yaml() + "\n"


def _summary(meta: Mapping[str, Any], config: Mapping[str, Any], manifest: Mapping[str, Any] | None,
             base: str | None) -> str:
    how = (f"a {len(manifest['order'])}-stage pipeline ({' → '.join(manifest['order'])})"
           if manifest else f"one stage ({meta.get('strategy') or 'training'})")
    start = f", starting from [{base}](https://huggingface.co/{base})" if base else ""
    return (f"An image classifier: timm's `{config['architecture']}` with a {config['num_classes']}-class "
            f"head, trained with stagewise in {how} on `{_dataset_name(meta)}`{start}.")


def _recipe(stages: list[tuple[str, dict[str, Any]]]) -> str:
    if not stages:
        return "## Training recipe\n\nThe training configuration was not exported with this model."
    names = [n for n, _ in stages]
    keys = [k for k in RECIPE_KEYS if any(c.get(k) not in (None, [], {}) for _, c in stages)]
    head = "| key | " + " | ".join(names) + " |" if len(stages) > 1 else "| key | value |"
    rows = [head, "|" + " --- |" * (len(stages) + 1)]
    rows += [f"| {k} | " + " | ".join(_cell(_public(k, c.get(k))) for _, c in stages) + " |" for k in keys]
    note = ("Each stage starts from the previous stage's weights unless its `init` says otherwise; "
            "the full resolved configuration is the run folder's `config.yaml`.") if len(stages) > 1 else \
        "The full resolved configuration is the run folder's `config.yaml`."
    return "## Training recipe\n\n" + "\n".join(rows) + "\n\n" + note


def _stage_history(manifest: Mapping[str, Any]) -> str:
    rows = ["| stage | status | epochs | best epoch | score | best | start | baseline gain |",
            "| --- | --- | ---: | ---: | --- | ---: | --- | ---: |"]
    for name in manifest["order"]:
        e = manifest["stages"].get(name, {})
        gain = (e.get("gain") or {}).get("best")
        rows.append(f"| {name} | {e.get('status', '-')} | {e.get('epochs_run', '-')} | "
                    f"{e.get('best_epoch', '-')} | {e.get('score', '-')} | {_num(e.get('best_score'))} | "
                    f"{_cell(e.get('how'))} | {_num(gain, signed=True)} |")
    return "## Stage history\n\n" + "\n".join(rows)


def _metrics(meta: Mapping[str, Any]) -> str:
    values = meta.get("metrics") or {}
    rows = [f"| {metric(k).label} | {metric(k).format(v)} |" for k, v in values.items() if k in METRICS]
    if not rows:
        return ""
    stage = f" (stage `{meta['stage']}`)" if meta.get("stage") else ""
    return (f"## Metrics\n\nAt the best epoch{stage}, on the validation split held out from the "
            "training data:\n\n| metric | value |\n| --- | ---: |\n" + "\n".join(rows))


def _classes(meta: Mapping[str, Any]) -> str:
    names = list(meta.get("class_names") or meta.get("class_ids") or [])
    shown = ", ".join(f"`{n}`" for n in names[:MAX_CLASSES_LISTED])
    more = f" and {len(names) - MAX_CLASSES_LISTED} more (config.json `label_names`)" \
        if len(names) > MAX_CLASSES_LISTED else ""
    return f"## Classes\n\n{len(names)} classes, in output order: {shown}{more}."


def _preprocessing(config: Mapping[str, Any]) -> str:
    p = config["pretrained_cfg"]
    size = p["input_size"][-1]
    return (f"## Preprocessing\n\nRGB, shorter side resized to {math.floor(size / p['crop_pct'])} px "
            f"({p['interpolation']}), center crop {size}×{size}, scaled to [0, 1], normalised with "
            f"mean {p['mean']} and std {p['std']}. timm's `resolve_data_config` + `create_transform` "
            "read this from config.json.")


def _intended_use(meta: Mapping[str, Any], parity: float | None) -> str:
    checked = (f" The exported weights were checked to reproduce stagewise's logits through timm's "
               f"loader (max difference {parity:.1e}).") if parity is not None else ""
    return ("## Intended use and limitations\n\n"
            f"Classifies an image into one of the {len(meta.get('class_ids') or [])} classes above; it "
            "has no 'none of these' output, so an image of anything else still gets one of them. "
            "The metrics come from a validation split of the same source as the training images: "
            "expect lower accuracy on images from other cameras, places or populations, and measure "
            "on your own data before relying on it. Not evaluated for fairness or safety-critical "
            f"use.{checked}")


def _how_to_load(name: str) -> str:
    ref = f"hf-hub:{name}" if "/" in name else "local-dir:PATH/TO/THIS/FOLDER"
    return ("## How to load\n\nWith timm:\n\n```python\nimport timm, torch\nfrom PIL import Image\n\n"
            f"model = timm.create_model(\"{ref}\", pretrained=True).eval()\n"
            "cfg = timm.data.resolve_data_config({}, model=model)\n"
            "transform = timm.data.create_transform(**cfg)\n"
            "x = transform(Image.open(\"image.jpg\").convert(\"RGB\")).unsqueeze(0)\n"
            "probs = model(x).softmax(-1)[0]\n"
            "print(model.pretrained_cfg[\"label_names\"][int(probs.argmax())])\n```\n\n"
            "With stagewise (class ids, top-k, test-time augmentation):\n\n```python\nimport stagewise\n\n"
            f"clf = stagewise.load(\"{ref.replace('local-dir:', '')}\")\n"
            "print(clf.predict(\"image.jpg\", top_k=3))\n```")


def _manifest(run_dir: Path | None) -> dict[str, Any] | None:
    if run_dir is None:
        return None
    try:
        found = read_manifest(run_dir)
    except (ValueError, OSError):
        return None
    return dict(found) if found else None


def _stage_configs(run_dir: Path | None, manifest: Mapping[str, Any] | None) -> list[tuple[str, dict[str, Any]]]:
    """(stage name, its saved config) for each stage that has one, in order."""
    if run_dir is None:
        return []
    if manifest is None:
        config = read_config(run_dir)
        return [("stage", config)] if config else []
    found = [(name, read_config(stage_dir(run_dir, name))) for name in manifest["order"]]
    return [(name, config) for name, config in found if config]


def _public(key: str, value: Any) -> Any:
    """A local file of the trainer's (weights, teacher) by its name only: its folders say nothing
    to a reader and may say too much about the trainer's machine."""
    if key in ("weights", "teacher") and isinstance(value, str) and "/" in value and ":" not in value:
        return Path(value).name
    return value


def _dataset_name(meta: Mapping[str, Any]) -> str:
    """The dataset as the card names it: the data folder's name (the path is the trainer's)."""
    data = str(meta.get("data") or "unknown")
    return Path(data.rstrip("/")).name or data


def _base_model(stages: list[tuple[str, dict[str, Any]]]) -> str | None:
    """The Hub model the first stage started from: `weights: hf-hub:ID`, or the timm model's own
    pretrained weights (`weights: hub`), by their Hub id; None for files and random init."""
    if not stages:
        return None
    config = stages[0][1]
    weights, model = str(config.get("weights") or ""), str(config.get("model") or "")
    if weights.startswith("hf-hub:"):
        return weights.removeprefix("hf-hub:").split("@")[0]
    if weights not in ("hub", "pretrained") or model.startswith("tv:"):
        return None
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model.removeprefix("hf-hub:"))
    return getattr(cfg, "hf_hub_id", None) or None


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    text = value if isinstance(value, str) else format(value, "g") if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _num(value: Any, signed: bool = False) -> str:
    return format(value, "+.4f" if signed else ".4f") if _is_number(value) else "-"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)

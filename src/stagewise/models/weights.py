"""Read weights without ever running code from the file.

safetensors is preferred. Pickle-based files (.pth/.pt/.bin) go through `torch.load(weights_only=True)`
only: a file that needs arbitrary unpickling is refused, with no unsafe fallback.
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import WeightsError

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "net")
_PREFIXES = ("module.", "_orig_mod.", "model.")
PICKLE_SUFFIXES = {".pth", ".pt", ".bin", ".ckpt"}


@dataclass
class LoadedWeights:
    """A state dict plus what is known about the classes its classifier predicts."""

    state_dict: dict[str, torch.Tensor]
    source: str
    class_ids: list[str] | None = None
    class_names: list[str] | None = None
    class_list_name: str | None = None  # e.g. "ImageNet-1k" or the classes file's name
    # The class list is a pretraining dataset's (ImageNet-1k), not a stage's of this project: a
    # head trained long on it has rows far larger than fresh ones (see head.adapt_head).
    pretraining_classes: bool = False


def load_state_dict_file(path: str | Path) -> LoadedWeights:
    """Load a weights file safely and unwrap common checkpoint layouts.

    Example:
        >>> w = load_state_dict_file("resnet18.safetensors")  # doctest: +SKIP
        >>> sorted(w.state_dict)[:2]  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}; pass an existing .safetensors or .pth file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            raw: object = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from None
    elif path.suffix in PICKLE_SUFFIXES:
        raw = _load_pickle_safely(path)
    else:
        raise WeightsError(
            f"{path}: unknown weights format '{path.suffix}'; use .safetensors (preferred) or "
            f"{', '.join(sorted(PICKLE_SUFFIXES))}"
        )
    state = _unwrap(raw, path)
    weights = LoadedWeights(state_dict=state, source=str(path))
    _attach_class_list(weights, path)
    return weights


def _load_pickle_safely(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # Quote only the offending global: torch's full message suggests weights_only=False,
        # the unsafe fallback this loader exists to refuse.
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        detail = f"it references {found.group(1)}" if found else "content beyond plain tensors"
        raise WeightsError(
            f"{path}: refused to load. The file holds Python objects beyond tensors, and unpickling "
            f"them could run code ({detail}). Convert it where you trust it with "
            "`safetensors.torch.save_file(state_dict, 'weights.safetensors')` and pass that file."
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise WeightsError(f"{path}: not a readable PyTorch weights file ({exc})") from None


def _unwrap(raw: object, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):
        if isinstance(raw, dict) and not _is_tensor_dict(raw):
            key = next((k for k in _WRAPPER_KEYS if isinstance(raw.get(k), dict)), None)
            if key is None:
                break
            raw = raw[key]
    if not isinstance(raw, dict) or not raw:
        raise WeightsError(f"{path}: no state dict found (expected a mapping of names to tensors)")
    tensors = {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(f"{path}: the file holds no tensors")
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def _is_tensor_dict(d: dict) -> bool:
    return any(isinstance(v, torch.Tensor) for v in d.values())


def _attach_class_list(weights: LoadedWeights, path: Path) -> None:
    """A `classes` file (or a stagewise model.json) beside the weights names the rows of its
    classifier (see head.py)."""
    for candidate in (path.with_suffix(".classes.json"), path.parent / "classes.json"):
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text())
            except json.JSONDecodeError as exc:
                raise WeightsError(f"{candidate}: not valid JSON ({exc})") from None
            ids, names = _parse_class_file(data, candidate)
            weights.class_ids, weights.class_names = ids, names
            weights.class_list_name = candidate.name
            return
    for candidate in (path.with_suffix(".classes.txt"), path.parent / "classes.txt"):
        if candidate.is_file():
            ids = [ln.strip() for ln in candidate.read_text().splitlines() if ln.strip()]
            weights.class_ids, weights.class_names = ids, list(ids)
            weights.class_list_name = candidate.name
            return
    _attach_model_card(weights, path)


def _attach_model_card(weights: LoadedWeights, path: Path) -> None:
    """A run folder's model.json describes the weights it names: chaining stages by hand
    (`--weights runs/s1/best.safetensors`) then matches head rows by class id, as a pipeline does.
    Read here with plain json (models/ sits below runfolder); a card naming other weights, or not
    a stagewise card, is ignored rather than trusted."""
    card = path.parent / "model.json"
    if not card.is_file():
        return
    try:
        data = json.loads(card.read_text())
    except (OSError, json.JSONDecodeError):
        return
    if not isinstance(data, dict) or not str(data.get("format", "")).startswith("stagewise.model/"):
        return
    if data.get("weights", path.name) != path.name or not isinstance(data.get("class_ids"), list):
        return
    ids = [str(i) for i in data["class_ids"]]
    names = data.get("class_names")
    weights.class_ids = ids
    weights.class_names = [str(n) for n in names] if isinstance(names, list) and len(names) == len(ids) else ids
    weights.class_list_name = str(card)


def _parse_class_file(data: object, where: Path) -> tuple[list[str], list[str]]:
    if isinstance(data, dict) and "ids" in data:
        ids = [str(i) for i in data["ids"]]
        names = [str(n) for n in data.get("names", ids)]
    elif isinstance(data, list):
        ids = [str(i) for i in data]
        names = list(ids)
    else:
        raise WeightsError(f"{where}: expected a list of class ids or {{'ids': [...], 'names': [...]}}")
    if len(names) != len(ids):
        raise WeightsError(f"{where}: {len(ids)} ids but {len(names)} names")
    return ids, names

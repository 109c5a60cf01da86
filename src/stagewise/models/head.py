"""The classifier head: where it is, an optional MLP before it, and its hand-off by class identity.

Rows of the final layer are matched by class id, never silently by index. An MLP head's hidden
layers carry over only when the incoming weights have exactly the same hidden shapes.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from ..errors import WeightsError
from .weights import LoadedWeights

log = logging.getLogger("stagewise")

# The classifier's module path on a network passed as a Python object (models/user.py sets it):
# such a module has no timm `pretrained_cfg` to name its classifier.
HEAD_ATTR = "stagewise_head"

# Parameter-free activations only: the hidden layers' state dict then depends on the widths alone.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "mish": nn.Mish, "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU, "elu": nn.ELU, "hardswish": nn.Hardswish,
}


@dataclass(frozen=True)
class HeadSpec:
    """Hidden layers between the pooled features and the final classifier (none: a linear head)."""

    layers: tuple[int, ...] = ()
    activation: str = "relu"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise WeightsError(f"head_activation '{self.activation}' is unknown; choose one of "
                               f"{', '.join(ACTIVATIONS)}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> HeadSpec:
        """From a TrainConfig dump or a model.json: keys head_layers, head_activation, head_dropout.

        Absent keys give a linear head, so a model.json written before these keys existed loads.
        """
        return cls(layers=tuple(int(w) for w in data.get("head_layers") or ()),
                   activation=str(data.get("head_activation") or "relu"),
                   dropout=float(data.get("head_dropout") or 0.0))

    def as_dict(self) -> dict[str, Any]:
        return {"head_layers": list(self.layers), "head_activation": self.activation,
                "head_dropout": self.dropout}


class MLPHead(nn.Module):
    """`hidden` blocks (linear, activation, dropout), then `last`, the classifier matched by class.

    Conv classifiers (SqueezeNet's 1x1 conv) get 1x1 conv hidden layers: the same MLP, per pixel.
    """

    installed_head = True  # found by head_paths (embedding.py's EmbeddingHead says the same)

    def __init__(self, in_features: int, num_classes: int, spec: HeadSpec, conv: bool = False,
                 bias: bool = True) -> None:
        super().__init__()
        layer = partial(nn.Conv2d, kernel_size=1) if conv else nn.Linear
        blocks = []
        for width in spec.layers:
            blocks.append(nn.Sequential(OrderedDict(
                linear=layer(in_features, width), act=ACTIVATIONS[spec.activation](),
                drop=nn.Dropout(spec.dropout))))
            in_features = width
        self.hidden = nn.Sequential(*blocks)
        self.last = layer(in_features, num_classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.hidden(x))


@dataclass
class HeadReport:
    """How the classifier rows were obtained: `kept` of `total` copied from the incoming head."""

    mode: str  # "match", "keep", "reset" or "new"
    kept: int
    total: int
    by_name: int = 0
    source: str | None = None
    embedding: str | None = None  # embedding heads: what was carried over, in words
    hidden: str | None = None  # MLP heads: "kept" or "new (<why>)"; None for a linear head
    reason: str | None = None  # why the head was reset although rows could have been copied
    path: str | None = None  # a module passed in: its classifier's path (model.json, for loading)

    def describe(self) -> str:
        if self.embedding is not None:
            return f"embedding head: {self.embedding}"
        if self.mode in ("reset", "new"):
            text = f"head: new ({self.total} rows, freshly initialised)"
            text += f"; {self.reason}" if self.reason else ""
        else:
            src = f" from {self.source}" if self.source else ""
            extra = f" ({self.by_name} matched by name)" if self.by_name else ""
            text = f"head: kept {self.kept}/{self.total} rows{src}{extra}"
        return text + (f"; hidden layers {self.hidden}" if self.hidden else "")

    def as_dict(self) -> dict:
        out = {"mode": self.mode, "kept": self.kept, "total": self.total, "by_name": self.by_name,
               "source": self.source}
        if self.hidden is not None:
            out["hidden"] = self.hidden
        if self.reason:
            out["reason"] = self.reason
        if self.embedding is not None:
            out["embedding"] = self.embedding
        if self.path is not None:
            out["path"] = self.path
        return out


def check_activation(name: str) -> str:
    """`name` when it is a head activation; a ValueError listing them otherwise (the config's and
    model.json's check)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return name


def head_paths(model: nn.Module) -> list[str]:
    """Module paths of the classifier: an installed MLPHead, else timm's `pretrained_cfg`
    classifier, else (torchvision) the last Linear or Conv2d, which is the classifier in every
    torchvision classification model."""
    modules = dict(model.named_modules())
    mlp = [n for n, m in modules.items() if getattr(m, "installed_head", False)]
    if mlp:
        return mlp
    named = getattr(model, HEAD_ATTR, None)
    if isinstance(named, str) and named in modules:
        return [named]
    cfg = getattr(model, "pretrained_cfg", None)
    if cfg is not None:
        names = cfg.get("classifier")
        names = [] if names is None else [names] if isinstance(names, str) else list(names)
        return [n for n in names if n in modules]
    return [n for n, m in modules.items() if isinstance(m, (nn.Linear, nn.Conv2d))][-1:]


def classifier_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the final classifier (weight and bias): the rows matched by class."""
    own = dict(model.named_parameters())
    keys = []
    for path in head_paths(model):
        layer = f"{path}.last" if isinstance(model.get_submodule(path), MLPHead) else path
        keys += [f"{layer}.{p}" for p in ("weight", "bias") if f"{layer}.{p}" in own]
    return keys


def head_param_names(model: nn.Module) -> list[str]:
    """Every parameter of the head, an MLP's hidden layers included: what a probe trains."""
    prefixes = tuple(f"{p}." for p in head_paths(model))
    return [n for n, _ in model.named_parameters() if n.startswith(prefixes)]


def install_mlp_head(model: nn.Module, spec: HeadSpec) -> None:
    """Replace the classifier by an MLPHead with the same input and output sizes."""
    paths = head_paths(model)
    if len(paths) != 1:
        raise WeightsError(f"head_layers: the model has {len(paths)} classifiers "
                           f"({', '.join(paths) or '-'}); an MLP head needs exactly one")
    old = model.get_submodule(paths[0])
    if isinstance(old, nn.Linear):
        conv, width = False, old.in_features
    elif isinstance(old, nn.Conv2d) and old.kernel_size == (1, 1):
        conv, width = True, old.in_channels
    else:
        raise WeightsError(f"head_layers: the classifier {paths[0]} is a {type(old).__name__}; an "
                           "MLP head replaces a Linear or 1x1 Conv2d classifier only")
    out = old.out_features if isinstance(old, nn.Linear) else old.out_channels
    model.set_submodule(paths[0], MLPHead(width, out, spec, conv=conv, bias=old.bias is not None))


def init_head(model: nn.Module, std: float = 0.01) -> None:
    """Fresh classifier rows: small normal weights, zero bias.

    Some timm families scale their classifier init by the class count (EfficientNet draws from
    U(+-1/sqrt(num_classes))), which for a 2-class head gives logits in the tens and a probe that
    spends its first epochs undoing the init. A small init starts every new head near uniform.
    """
    own = dict(model.named_parameters())
    with torch.no_grad():
        for key in classifier_keys(model):
            p = own.get(key)
            if p is None:
                continue
            if key.endswith(".bias"):
                p.zero_()
            else:
                nn.init.normal_(p, std=std)


def adapt_head(
    model: nn.Module,
    incoming: LoadedWeights,
    class_ids: list[str],
    mode: str | None,
    class_names: list[str] | None = None,
) -> HeadReport:
    """Fill `model`'s head from `incoming` according to `mode` (match/keep/reset/None)."""
    keys = classifier_keys(model)
    have = [k for k in keys if k in incoming.state_dict]
    src_ids = incoming.class_ids
    if src_ids is not None and have:
        rows = incoming.state_dict[have[0]].shape[0]
        if rows != len(src_ids):
            raise WeightsError(
                f"{incoming.source}: its class list has {len(src_ids)} entries but its classifier has "
                f"{rows} rows; fix the classes file or remove it"
            )
    # Hidden layers do not depend on the classes: they carry over even when the rows cannot.
    hidden = _carry_hidden(model, incoming, mode)
    auto = mode is None
    if mode is None:
        mode = "match" if src_ids is not None and have else "reset"
    if hidden is not None and hidden != "kept":
        if mode == "keep":
            raise WeightsError(f"head: 'keep' needs the incoming hidden layers, but they are {hidden}; "
                               "use head: match or reset")
        have = []  # the final layer reads freshly initialised hidden features: its rows mean nothing
    total = len(class_ids)
    if mode == "reset" or not have:
        report = HeadReport(mode="reset", kept=0, total=total, hidden=hidden)
        log.info(report.describe())
        return report
    pairs, by_name = _row_pairs(mode, class_ids, class_names, incoming)
    if auto and incoming.pretraining_classes and 0 < len(pairs) < total:
        # Rows trained long on ImageNet dwarf fresh ones: the copied classes win every image at
        # first (hymenoptera with one class renamed: 47% before training, 92.2% vs 96.1% for a
        # fresh head after 5 probe epochs at lr 1e-3). All classes found is a clear win, some not.
        report = HeadReport(mode="reset", kept=0, total=total, hidden=hidden, reason=(
            f"only {len(pairs)}/{total} classes are in {incoming.class_list_name}, and partly copied "
            "rows would outweigh the fresh ones; head: match copies them anyway"))
        log.info(report.describe())
        return report
    _copy_rows(model, incoming, have, pairs)
    report = HeadReport(mode=mode, kept=len(pairs), total=total, by_name=by_name,
                        source=incoming.class_list_name, hidden=hidden)
    log.info(report.describe())
    return report


def _row_pairs(
    mode: str, class_ids: list[str], class_names: list[str] | None, incoming: LoadedWeights
) -> tuple[list[tuple[int, int]], int]:
    src_ids = incoming.class_ids
    if src_ids is None:
        raise WeightsError(
            f"head: '{mode}' needs the class list of {incoming.source}; put a classes.json beside the "
            "weights or use head: reset"
        )
    if mode == "keep":
        if list(src_ids) != list(class_ids):
            raise WeightsError(
                "head: 'keep' needs identical class lists; use head: match to copy the shared classes"
            )
        return list(enumerate(range(len(class_ids)))), 0
    if mode == "match":
        return _match_rows(class_ids, class_names, src_ids, incoming.class_names)
    raise WeightsError(f"head: unknown mode '{mode}'; choose one of match, reset, keep")


def _copy_rows(
    model: nn.Module, incoming: LoadedWeights, keys: list[str], pairs: list[tuple[int, int]]
) -> None:
    own = model.state_dict()
    with torch.no_grad():
        for k in keys:
            target = own[k]
            src = incoming.state_dict[k]
            if src.shape[1:] != target.shape[1:]:
                raise WeightsError(
                    f"head: {k} has shape {tuple(src.shape)}, model wants {tuple(target.shape)}")
            for dst_row, src_row in pairs:
                target[dst_row].copy_(src[src_row])


def _carry_hidden(model: nn.Module, incoming: LoadedWeights, mode: str | None) -> str | None:
    """Copy an MLP head's hidden layers when the incoming ones have exactly the same shapes.

    Returns None for a linear head, "kept", or "new (<why>)" when they start fresh.
    """
    final = set(classifier_keys(model))
    prefixes = tuple(f"{p}." for p in head_paths(model))
    own = {k: v for k, v in model.state_dict().items() if k.startswith(prefixes) and k not in final}
    src = {k: v for k, v in incoming.state_dict.items() if k.startswith(prefixes) and ".hidden." in k}
    if not own:
        if src:
            log.info("head: the incoming hidden head layers are not used (this model has a linear head)")
        return None
    why = None
    if mode == "reset":
        why = "head: reset"
    elif not src:
        why = f"{incoming.source} has none"
    elif set(src) != set(own) or any(src[k].shape != v.shape for k, v in own.items()):
        shapes = sorted(f"{k} {tuple(v.shape)}" for k, v in src.items() if k.endswith(".weight"))
        why = f"incoming shapes differ: {', '.join(shapes)}"
    if why is not None:
        return f"new ({why})"
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(src[k])
    return "kept"


def _match_rows(
    ids: list[str], names: list[str] | None, src_ids: list[str], src_names: list[str] | None
) -> tuple[list[tuple[int, int]], int]:
    """(new row, old row) pairs: by id first, then by display name where it is unambiguous."""
    index = {cid: i for i, cid in enumerate(src_ids)}
    pairs = [(i, index[c]) for i, c in enumerate(ids) if c in index]
    matched = {i for i, _ in pairs}
    used = {j for _, j in pairs}
    by_name = 0
    if src_names:
        counts: dict[str, list[int]] = {}
        for j, n in enumerate(src_names):
            counts.setdefault(_norm(n), []).append(j)
        candidates = names or ids
        # Unambiguous on both sides: one old row carries the name, one unmatched new class asks
        # for it, and no class already took that row by id.
        wanted: dict[str, list[int]] = {}
        for i, n in enumerate(candidates):
            if i not in matched:
                wanted.setdefault(_norm(n), []).append(i)
        for key, new_rows in wanted.items():
            hits = counts.get(key, [])
            if len(hits) == 1 and len(new_rows) == 1 and hits[0] not in used:
                pairs.append((new_rows[0], hits[0]))
                by_name += 1
    return sorted(pairs), by_name


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", " ").replace("-", " ")

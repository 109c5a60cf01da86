"""Adapt the classifier to a new class list by class identity, never silently by index."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import WeightsError
from .weights import LoadedWeights

log = logging.getLogger("stagewise")


@dataclass
class HeadReport:
    """How the classifier rows were obtained: `kept` of `total` copied from the incoming head."""

    mode: str  # "match", "keep", "reset" or "new"
    kept: int
    total: int
    by_name: int = 0
    source: str | None = None

    def describe(self) -> str:
        if self.mode in ("reset", "new"):
            return f"head: new ({self.total} rows, freshly initialised)"
        src = f" from {self.source}" if self.source else ""
        extra = f" ({self.by_name} matched by name)" if self.by_name else ""
        return f"head: kept {self.kept}/{self.total} rows{src}{extra}"

    def as_dict(self) -> dict:
        return {"mode": self.mode, "kept": self.kept, "total": self.total, "by_name": self.by_name,
                "source": self.source}


def classifier_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the final classifier (weight and bias)."""
    names = model.pretrained_cfg.get("classifier") if hasattr(model, "pretrained_cfg") else None
    if names is None:
        return []
    if isinstance(names, str):
        names = (names,)
    own = model.state_dict()
    return [f"{n}.{p}" for n in names for p in ("weight", "bias") if f"{n}.{p}" in own]


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
    """Fill `model`'s classifier from `incoming` according to `mode` (match/keep/reset/None)."""
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
    if mode is None:
        mode = "match" if src_ids is not None and have else "reset"
    total = len(class_ids)
    if mode == "reset" or not have:
        return HeadReport(mode="reset", kept=0, total=total)
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
        pairs = list(enumerate(range(total)))
        by_name = 0
    elif mode == "match":
        pairs, by_name = _match_rows(class_ids, class_names, src_ids, incoming.class_names)
    else:
        raise WeightsError(f"head: unknown mode '{mode}'; choose one of match, reset, keep")
    own = model.state_dict()
    with torch.no_grad():
        for k in have:
            target = own[k]
            src = incoming.state_dict[k]
            if src.shape[1:] != target.shape[1:]:
                raise WeightsError(f"head: {k} has shape {tuple(src.shape)}, model wants {tuple(target.shape)}")
            for dst_row, src_row in pairs:
                target[dst_row].copy_(src[src_row])
    report = HeadReport(mode=mode, kept=len(pairs), total=total, by_name=by_name,
                        source=incoming.class_list_name)
    log.info(report.describe())
    return report


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

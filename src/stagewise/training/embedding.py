"""What an embed stage does differently from a classifier's: its loss and its validation.

The loss is the embedding head's own objective (models/embedding.py), so its parameters train,
checkpoint and resume with the network. Validation searches the validation identities
leave-one-out (each image queries all the others) and scores the ranking with `ranking.py`, the
same code `stagewise evaluate --retrieval` uses: an epoch's val_map is what evaluate would report.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from ..models.embedding import EmbeddingHead, Objective
from ..ranking import RECALL_AT, retrieval_metrics
from .loop import eval_batches


class EmbedCriterion:
    """`criterion(embeddings, labels)` for the loop; `scores` gives class logits for a training
    accuracy when the loss has class centres (ArcFace, CosFace), else None.

    Not an nn.Module: the objective's parameters belong to the network (its optimizer groups,
    checkpoints and EMA copy), and the criterion only calls it.
    """

    def __init__(self, head: EmbeddingHead) -> None:
        if head.objective is None:
            raise ValueError("the embedding head was built for inference, without its loss")
        self.objective: Objective = head.objective

    def to(self, _device: torch.device) -> EmbedCriterion:
        return self  # the objective moves with the network

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.objective(embeddings, labels)

    def scores(self, embeddings: torch.Tensor) -> torch.Tensor | None:
        return self.objective.scores(embeddings)


def _gather(acc: Accelerator, items: list[Any]) -> list[Any]:
    """Every rank's list, concatenated in rank order, on every rank."""
    if acc.num_processes == 1:
        return items
    import torch.distributed as dist

    out: list[Any] = [None] * acc.num_processes
    dist.all_gather_object(out, items)
    return [x for part in out for x in part]


@torch.inference_mode()
def evaluate_embeddings(
    model: nn.Module, loader: DataLoader, accelerator: Accelerator, channels_last: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Leave-one-out retrieval over `loader`'s identities: recall@1/5/10, mAP, mAP@R and the
    open-set threshold, the same on every process (each embeds its shard; all are gathered)."""
    model.eval()
    vectors: list[torch.Tensor] = []
    labels: list[int] = []
    bad = 0
    for x, batch_labels, n_bad, _index in eval_batches(loader, accelerator, channels_last, progress):
        bad += n_bad
        if x is None:
            continue
        with accelerator.autocast():
            vectors.append(model(x).float().cpu())
        labels += batch_labels.tolist()
    chunks = _gather(accelerator, [torch.cat(vectors)] if vectors else [])
    labels = _gather(accelerator, labels)
    bad = sum(_gather(accelerator, [bad]))
    out: dict[str, Any] = {"val_images": len(labels), "bad_val_images": bad,
                           "val_identities": len(set(labels))}
    m = retrieval_metrics(torch.cat(chunks).numpy(), [str(v) for v in labels])
    out.update({f"val_recall{k}": m["recall"][str(k)] for k in RECALL_AT})
    out.update(val_map=m["map"], val_map_at_r=m["map_at_r"], val_threshold=m["threshold"])
    return out

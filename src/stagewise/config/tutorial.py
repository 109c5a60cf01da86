"""Stage keys in the shapes tutorials use: a pasted torchvision `augment:` list and a data subset.

`fill_from_augment` runs before a stage's keys are validated: it reads the pasted list into
canonical steps (data.pasted), takes the run's normalisation from its Normalize step and the image
size from its last fixed-size crop, so that config.yaml records the values the run uses and a
resume or `stagewise predict` sees the same ones. `Subset` is `train_subset:`/`val_subset:`.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

_PER_CLASS = re.compile(r"^\s*(\d+)\s*(?:/|per)\s*class(?:es)?\s*$", re.IGNORECASE)


def fill_from_augment(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with `augment:` canonical and mean/std/image_size filled from it where not given.

    A value the list contradicts (mean: given and a different Normalize) raises ValueError; a list
    that cannot be read is left as it is, for the field's validator to report with its key path.
    """
    from ..data.augment import normalization, output_size
    from ..data.pasted import canonical_steps

    if not data.get("augment"):
        return data
    try:
        steps = canonical_steps(data["augment"])
        norm = normalization(steps) if isinstance(steps, list) else None
        size = output_size(steps) if isinstance(steps, list) else None
    except ValueError:
        return data
    out = {**data, "augment": steps}
    for key, values in zip(("mean", "std"), norm or (), strict=False):
        given = out.get(key)
        if given is None:
            out[key] = values
        elif [round(float(v), 6) for v in given] != [round(v, 6) for v in values]:
            raise ValueError(f"{key}: {list(given)} but augment's Normalize has {key}={values}; the "
                             f"run normalises once: remove {key}: or the Normalize step")
    if size is not None and out.get("image_size") is None:
        # Given and different is allowed, as before pasting existed (a CNN takes either size);
        # the stage's log says training and evaluation sizes differ (training.setup).
        out["image_size"] = size
    return out


class Subset(BaseModel):
    """`train_subset: 500` (500 images, stratified), `train_subset: 5/class` or
    `{per_class: 5}`: a seeded, stratified subset of a split, to try a recipe quickly."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    per_class: int | None = Field(None, ge=1, le=10**9, description="images per class")
    total: int | None = Field(None, ge=1, le=10**12, description="images in all, spread over the "
                              "classes in proportion to their sizes")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, bool):
            raise ValueError("expected a number of images, 'K/class' or {per_class: K}")
        if isinstance(data, int):
            return {"total": data}
        if isinstance(data, str):
            text = data.strip()
            if text.isdigit():
                return {"total": int(text)}
            match = _PER_CLASS.match(text)
            if match is None:
                raise ValueError(f"{data[:60]!r}: expected a number of images (500), 'K/class' "
                                 "(5/class) or {per_class: K}")
            return {"per_class": int(match.group(1))}
        return data

    @model_validator(mode="after")
    def _one(self) -> Subset:
        if (self.per_class is None) == (self.total is None):
            raise ValueError("give one of per_class or total")
        return self

    def describe(self) -> str:
        return f"{self.per_class}/class" if self.per_class is not None else f"{self.total} images"

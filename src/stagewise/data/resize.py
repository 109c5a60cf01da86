"""Progressive resizing within a stage (fastai / Composer / FFCV's recipe): train at a fraction of
the image size first and grow linearly to the full size by a given fraction of the epochs.

The size is a pure function of the epoch, and the epoch travels inside each sample's key (see
loader.py), so persistent workers pick it up without being told, and a resumed run lands on the
size an uninterrupted one used. Evaluation always runs at the full size. The transform of each epoch is progressive.py's
`EpochTransforms`, shared with progressive learning.
"""

from __future__ import annotations


def size_schedule(full: int, epochs: int, start: float, finish: float) -> list[int]:
    """The training image size of each epoch: `start` x `full` at epoch 0, growing linearly to
    `full` at `finish` x `epochs`, then `full`. Sizes are multiples of a step the usual
    networks accept (32 from 128 px up, else 8), never below one step."""
    step = 32 if full >= 128 else 8
    ramp = max(1, round(finish * epochs))
    sizes = []
    for epoch in range(max(1, epochs)):
        frac = start + (1.0 - start) * min(1.0, epoch / ramp)
        size = max(step, int(round(frac * full / step)) * step)
        sizes.append(min(full, size))
    return sizes

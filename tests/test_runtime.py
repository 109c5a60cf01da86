"""What the trainer relies on from Accelerate, pinned so that an upgrade that changes it fails
here rather than silently changing runs."""

from __future__ import annotations

from stagewise.training.runtime import make_accelerator


def test_each_stage_gets_its_own_precision_in_one_process() -> None:
    # A pipeline's stages may differ in precision; Accelerate's state is a process-wide
    # singleton that make_accelerator resets through private API (AcceleratorState._reset_state).
    assert make_accelerator("bf16").mixed_precision == "bf16"
    assert make_accelerator("fp32").mixed_precision == "no"
    assert make_accelerator("bf16").mixed_precision == "bf16"


def test_the_accelerator_does_not_accumulate_by_itself() -> None:
    # Accumulation windows are the loop's (train/loop.py): Accelerate must step on every call.
    acc = make_accelerator("fp32")
    assert acc.gradient_accumulation_steps == 1 and acc.sync_gradients

"""Tasks and strategies are objects in one registry (kinds.py): the config's names are the
registry's, and what a strategy says about DDP matches what it trains."""

from __future__ import annotations

from typing import get_args

import pytest

from stagewise.kinds import STRATEGIES, TASKS, StrategyName, TaskName, Unfreezing, strategy, task


def test_the_names_the_config_accepts_are_the_registries() -> None:
    assert set(get_args(StrategyName)) == set(STRATEGIES)
    assert set(get_args(TaskName)) == set(TASKS)


@pytest.mark.parametrize("plan", [Unfreezing(), Unfreezing(freeze_epochs=2), Unfreezing(every=2),
                                  Unfreezing(at=(3,))])
def test_a_strategy_that_ever_trains_part_of_the_network_warns_ddp(plan: Unfreezing) -> None:
    for s in STRATEGIES.values():
        partial = any(s.trainable_groups(e, 5, plan) < 5 for e in range(6))
        assert s.may_leave_unused(plan) == partial, s.name


def test_strategy_recipes_and_lookups() -> None:
    assert strategy("probe").head_only and not strategy("finetune").head_only
    assert not strategy("scratch").uses_weights
    assert strategy("finetune").trainable_groups(0, 4, Unfreezing(freeze_epochs=1)) == 1
    assert strategy("finetune").trainable_groups(1, 4, Unfreezing(freeze_epochs=1)) == 4
    with pytest.raises(TypeError):
        strategy("probe").defaults["lr"] = 1.0  # type: ignore[index]
    with pytest.raises(ValueError, match="choose one of scratch, probe, finetune, gradual"):
        strategy("frozen")
    with pytest.raises(ValueError, match="choose one of classify, embed"):
        task("detect")

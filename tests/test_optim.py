"""Param groups (layer decay, no weight decay on biases/norms, explicit LRs) and LR schedule shapes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch

import stagewise
from conftest import make_image_folder, tiny_config
from stagewise.config import TrainConfig
from stagewise.errors import ConfigError
from stagewise.training.optim import Schedule, create_optimizer, group_lrs, param_groups

LR = 0.1


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(data="unused", model="test_resnet", lr=LR, **kw)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=3)


def _group_of(groups: list[dict], name: str) -> dict:
    return next(g for g in groups if name in g["param_names"])


def test_every_parameter_in_exactly_one_group(model) -> None:
    groups = param_groups(model, _cfg(layer_decay=0.5))
    names = [n for g in groups for n in g["param_names"]]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert all(len(g["params"]) == len(g["param_names"]) for g in groups)


def test_layer_decay_lr_per_layer(model) -> None:
    decay = 0.5
    groups = param_groups(model, _cfg(layer_decay=decay))
    top = max(g["layer"] for g in groups)
    for g in groups:
        assert g["lr"] == pytest.approx(LR * decay ** (top - g["layer"])), g["name"]
    # Layers are numbered without gaps, the classifier on top: the block right below the head
    # gets lr * decay, the stem the smallest LR.
    assert sorted({g["layer"] for g in groups}) == list(range(top + 1))
    assert _group_of(groups, "fc.weight")["lr"] == pytest.approx(LR)
    assert _group_of(groups, "layer4.0.conv1.weight")["lr"] == pytest.approx(LR * decay)
    stem = _group_of(groups, "conv1.0.weight")
    assert stem["layer"] == 0 and stem["lr"] == pytest.approx(LR * decay**top)


def test_without_layer_decay_every_group_has_the_base_lr(model) -> None:
    # layer_decay None: a finetune's default is 0.8
    assert {g["lr"] for g in param_groups(model, _cfg(layer_decay=None))} == {LR}


def test_no_weight_decay_on_biases_and_norms(model) -> None:
    groups = param_groups(model, _cfg(weight_decay=0.05))
    params = dict(model.named_parameters())
    for g in groups:
        for name in g["param_names"]:
            is_norm_or_bias = params[name].ndim <= 1
            assert g["weight_decay"] == (0.0 if is_norm_or_bias else 0.05), name
    assert _group_of(groups, "bn1.weight")["weight_decay"] == 0.0
    assert _group_of(groups, "fc.bias")["weight_decay"] == 0.0
    assert _group_of(groups, "fc.weight")["weight_decay"] == 0.05


def test_group_lrs_patterns_override_layer_decay(model) -> None:
    groups = param_groups(model, _cfg(layer_decay=0.5, group_lrs={"fc.*": 0.5, "layer1.*": 1e-4}))
    assert _group_of(groups, "fc.weight")["lr"] == 0.5
    assert _group_of(groups, "fc.bias")["lr"] == 0.5
    assert _group_of(groups, "layer1.0.conv1.weight")["lr"] == 1e-4
    assert _group_of(groups, "layer1.0.bn1.bias")["lr"] == 1e-4
    assert _group_of(groups, "layer2.0.conv1.weight")["lr"] < LR  # still layer-decayed


def test_group_lrs_history_names_one_lr_per_layer(model) -> None:
    opt = create_optimizer(model, _cfg(layer_decay=0.5))
    lrs = group_lrs(opt)
    assert len(lrs) == len({g["layer"] for g in opt.param_groups})
    assert not any(k.endswith("no_wd") for k in lrs)
    assert max(lrs.values()) == pytest.approx(LR)


@pytest.mark.parametrize(("name", "cls"), [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                           ("adamw", torch.optim.AdamW), ("rmsprop", torch.optim.RMSprop)])
def test_optimizer_names(model, name: str, cls: type) -> None:
    opt = create_optimizer(model, _cfg(optimizer=name, layer_decay=0.5))
    assert isinstance(opt, cls)
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in param_groups(model, _cfg(layer_decay=0.5))]


def test_adamw8bit_without_bitsandbytes_says_how_to_install(model) -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="pip install"):
            create_optimizer(model, _cfg(optimizer="adamw8bit"))
    else:
        assert create_optimizer(model, _cfg(optimizer="adamw8bit")) is not None


def _lrs(steps_per_epoch: int = 4, epochs: int = 5, metric: float = 0.5, **kw) -> list[float]:
    """The first group's LR before training and after every optimizer step."""
    cfg = _cfg(epochs=epochs, **kw)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [param], "lr": LR}], lr=LR)
    schedule = Schedule(opt, cfg, steps_per_epoch)
    out = [opt.param_groups[0]["lr"]]
    for _ in range(epochs):
        for _ in range(steps_per_epoch):
            opt.step()
            schedule.step()
            out.append(opt.param_groups[0]["lr"])
        schedule.epoch_end(metric)
    return out


def test_constant() -> None:
    assert _lrs(scheduler="constant") == [LR] * 21


def test_cosine_decays_to_min_lr() -> None:
    lrs = _lrs(scheduler="cosine", min_lr=0.01)
    assert lrs[0] == pytest.approx(LR) and lrs[-1] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[10] == pytest.approx((LR + 0.01) / 2)  # half way: the cosine's midpoint


def test_warmup_rises_linearly_then_decays() -> None:
    lrs = _lrs(scheduler="cosine", warmup_epochs=1)
    warm = lrs[:5]
    steps = [b - a for a, b in zip(warm, warm[1:], strict=False)]
    assert warm[0] < 0.05 * LR and warm[4] == pytest.approx(LR)
    assert all(s == pytest.approx(steps[0]) for s in steps) and steps[0] > 0
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False)) and lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_step_drops_by_gamma_every_step_epochs() -> None:
    lrs = _lrs(scheduler="step", step_epochs=2, gamma=0.5)
    for i, lr in enumerate(lrs):
        assert lr == pytest.approx(LR * 0.5 ** (i // 8)), i


def test_multistep_drops_at_milestones() -> None:
    lrs = _lrs(scheduler="multistep", milestones=[1, 3], gamma=0.1)
    expected = [LR if i < 4 else LR * 0.1 if i < 12 else LR * 0.01 for i in range(21)]
    assert lrs == pytest.approx(expected)


def test_exponential_decays_by_gamma_per_epoch() -> None:
    lrs = _lrs(scheduler="exponential", gamma=0.5)
    for epoch in range(6):
        assert lrs[4 * epoch] == pytest.approx(LR * 0.5**epoch)
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))


def test_polynomial_follows_its_power() -> None:
    lrs = _lrs(scheduler="polynomial", power=2.0)
    for i, lr in enumerate(lrs):
        assert lr == pytest.approx(LR * (1 - i / 20) ** 2, abs=1e-9), i


def test_one_cycle_peaks_then_falls() -> None:
    lrs = _lrs(scheduler="one_cycle", warmup_epochs=1)
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert lrs[peak] == pytest.approx(LR, rel=0.02)
    assert 3 <= peak <= 5  # warmup_epochs / epochs of the way in
    assert lrs[0] < LR / 10 and lrs[-1] < LR / 100
    assert all(a <= b for a, b in zip(lrs[: peak + 1], lrs[1 : peak + 1], strict=False))
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1 :], strict=False))


def test_plateau_reduces_on_a_flat_metric_and_keeps_the_reduction() -> None:
    lrs = _lrs(scheduler="plateau", plateau_patience=1, gamma=0.5, epochs=5, metric=0.5)
    per_epoch = [lrs[4 * e + 2] for e in range(5)]  # mid-epoch LR of each epoch
    # Epoch 1 sets the best, epochs 2-3 do not improve: more than `patience` bad epochs halve it.
    assert per_epoch == pytest.approx([LR, LR, LR, LR * 0.5, LR * 0.5])
    assert lrs[13:] == pytest.approx([LR * 0.5] * 8)  # later steps keep the reduced LR


def test_plateau_keeps_the_lr_while_the_metric_improves() -> None:
    cfg = _cfg(epochs=4, scheduler="plateau", plateau_patience=0, gamma=0.5)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=LR)
    schedule = Schedule(opt, cfg, 2)
    for epoch in range(4):
        for _ in range(2):
            opt.step()
            schedule.step()
        schedule.epoch_end(0.1 * (epoch + 1))  # val_top1 rising
    assert opt.param_groups[0]["lr"] == pytest.approx(LR)


@pytest.mark.parametrize("name", ["constant", "one_cycle", "cosine", "polynomial", "exponential",
                                  "step", "multistep", "plateau"])
def test_schedule_state_round_trips_through_weights_only_load(name: str, tmp_path) -> None:
    """Resuming loads the schedule with torch.load(weights_only=True): it must hold plain data."""
    cfg = _cfg(epochs=3, scheduler=name, warmup_epochs=1 if name != "plateau" else 0,
               plateau_patience=0, milestones=[1, 2], step_epochs=1)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=LR)
    schedule = Schedule(opt, cfg, 3)
    for _ in range(4):
        opt.step()
        schedule.step()
    schedule.epoch_end(0.5)
    schedule.epoch_end(0.5)
    torch.save({"s": schedule.state_dict(), "o": opt.state_dict()}, tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    param2 = torch.nn.Parameter(torch.zeros(1))
    opt2 = torch.optim.SGD([param2], lr=LR)
    again = Schedule(opt2, cfg, 3)
    opt2.load_state_dict(state["o"])
    again.load_state_dict(state["s"])
    for _ in range(3):
        opt.step()
        schedule.step()
        opt2.step()
        again.step()
        assert math.isclose(opt.param_groups[0]["lr"], opt2.param_groups[0]["lr"], rel_tol=1e-12)


def test_lr_scale_follows_the_global_batch(tmp_path: Path) -> None:
    """lr_scale: the LR used is the configured one times (global batch / reference), linear or
    sqrt, and the optimizer's groups carry it."""
    from stagewise.config import build_config
    from stagewise.training.optim import lr_factor, scaled

    cfg = build_config({"data": "d", "lr": 0.1, "batch_size": 64, "grad_accum": 2,
                        "lr_scale": "linear", "lr_reference_batch": 256,
                        "group_lrs": {"fc.*": 0.01}})
    assert lr_factor(cfg, 4) == 2.0 and scaled(cfg, 4).lr == pytest.approx(0.2)
    assert scaled(cfg, 4).group_lrs == {"fc.*": pytest.approx(0.02)}
    assert lr_factor(cfg.model_copy(update={"lr_scale": "sqrt"}), 4) == pytest.approx(2 ** 0.5)
    assert lr_factor(cfg.model_copy(update={"lr_scale": "none"}), 4) == 1.0
    data = make_image_folder(tmp_path / "d", per_class=4)
    result = stagewise.train(tiny_config(data, tmp_path / "run", epochs=1, lr=0.01, batch_size=4,
                                         scheduler="constant", lr_scale="linear",
                                         lr_reference_batch=8), reporter="quiet")
    assert list(result.history[-1]["lr"].values()) == pytest.approx([0.005] * len(result.history[-1]["lr"]))

"""Tutorial-style input runs as written: underscored flags, `compare` without a model list, the
stage-dict spellings of other tools (config/aliases.py), compare's LR axes and its plot, and
OneCycle's pct_start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import yaml

from conftest import make_image_folder
from stagewise.cli import build_parser, main
from stagewise.config import build_config
from stagewise.config.aliases import ALIASES, apply_aliases
from stagewise.defaults import ALIAS_WARMUP_EPOCHS, COMPARE_MODELS
from stagewise.errors import ConfigError
from stagewise.models.build import resolve_model_name
from stagewise.reporting.compare_report import plot_styles
from stagewise.runs.comparison import parse_group_lrs
from stagewise.training.optim import Schedule

FAST = ["--model", "test_resnet", "--image_size", "32", "--batch_size", "8", "--num_workers", "0",
        "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("tutorial") / "data", per_class=4)


def test_tutorial_train_command_runs_as_written(data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "models"
    argv = ["train", "--data_dir", str(data), "--freeze_backbone", "--output_dir", str(out),
            "--learning_rate", "0.0001", "--epochs", "1", *FAST, "--set", "report=false"]
    assert main(argv) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["data"], saved["out"], saved["lr"]) == (str(data), str(out), 0.0001)
    assert saved["strategy"] == "probe"  # --freeze_backbone: only the head trains
    # Resuming reads an alias as its key: the same value is no change, another is refused by name.
    resume = ["train", "--resume", "--output_dir", str(out), "--quiet", "--set"]
    assert main([*resume, "learning_rate=0.0001"]) == 0
    assert main([*resume, "lr=0.0001", "--set", "learning_rate=0.01"]) == 2
    assert main([*resume, "learning_rate=0.01"]) == 2
    assert "lr: 0.0001 -> 0.01" in capsys.readouterr().err


def test_tutorial_compare_command_with_lr_axes(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    argv = ["compare", "--data_dir", str(data), "--output_dir", str(out), "--epochs", "1",
            "--layer_decays", "1.0,0.5", "--group_lrs", "none;head:fc.*=0.05",
            "--models", "test_resnet", *FAST[2:]]
    assert main(argv) == 0
    result = json.loads((out / "compare.json").read_text())
    assert result["grid"] == ["test_resnet-finetune-ld1-glr1", "test_resnet-finetune-ld1-head",
                              "test_resnet-finetune-ld0.5-glr1", "test_resnet-finetune-ld0.5-head"]
    for row in result["cells"]:
        cfg = yaml.safe_load((out / "cells" / row["cell"] / "config.yaml").read_text())
        assert cfg["layer_decay"] == row["layer_decay"] == (1.0 if "-ld1-" in row["cell"] else 0.5)
        assert cfg["group_lrs"] == ({"fc.*": 0.05} if row["group_lrs"] == "head" else {})
    styles, legend = plot_styles(result["cells"])
    assert len({(s["color"], s["marker"], s["ls"]) for s in styles}) == 4
    assert "layer decay" in legend and "group LRs" in legend
    html = (out / "compare.html").read_text()
    assert "layer decay" in html and "group LRs" in html  # table columns for the varying axes


def test_compare_without_models_uses_the_documented_default_set(data: Path) -> None:
    compare = next(a for a in build_parser()._actions if a.dest == "command").choices["compare"]
    args = compare.parse_args(["--data_dir", str(data), "--output_dir", "o"])
    assert args.models == ",".join(COMPARE_MODELS) and args.epochs is None
    for name in COMPARE_MODELS:  # each a timm architecture with pretrained ImageNet weights
        assert resolve_model_name(name) == name and timm.list_models(name, pretrained=True)


def test_plot_styles_tell_apart_cells_differing_only_by_optimizer_or_scheduler() -> None:
    rows = [{"cell": f"{o}-{s}", "model": "m", "strategy": "finetune", "optimizer": o, "scheduler": s}
            for o in ("sgd", "adamw", "lamb") for s in ("cosine", "step")]
    styles, legend = plot_styles(rows)
    assert len({(s["color"], s["marker"], s["ls"]) for s in styles}) == 6
    assert legend == "colour: optimizer · marker: scheduler"
    # A resolved value that follows from another axis (layer_decay by strategy) adds no channel.
    rows = [{"cell": s, "model": "m", "strategy": s, "layer_decay": d} for s, d in
            (("probe", None), ("finetune", 0.8))]
    assert plot_styles(rows)[1] == "colour: strategy"


def test_group_lrs_axis_syntax() -> None:
    assert parse_group_lrs("none; head10x:fc.*=1e-2,layer4.*=1e-3") == {
        "glr1": {}, "head10x": {"fc.*": 0.01, "layer4.*": 0.001}}
    with pytest.raises(ConfigError, match="PATTERN=LR"):
        parse_group_lrs("fc.*")
    with pytest.raises(ConfigError, match="used twice"):
        parse_group_lrs("a:none;a:fc.*=1")


def _lrs(cfg_keys: dict, steps_per_epoch: int = 4) -> list[float]:
    cfg = build_config({"data": "d", "lr": 0.1, **cfg_keys})
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [param], "lr": 0.1}], lr=0.1)
    schedule = Schedule(opt, cfg, steps_per_epoch)
    out = [opt.param_groups[0]["lr"]]
    for _ in range(cfg.epochs * steps_per_epoch):
        opt.step()
        schedule.step()
        out.append(opt.param_groups[0]["lr"])
    return out


def test_one_cycle_pct_start_sets_where_the_lr_peaks() -> None:
    for pct, key in ((0.1, "one_cycle_pct_start"), (0.6, "warmup_pct"), (0.3, "pct_start")):
        lrs = _lrs({"scheduler": "one_cycle", "epochs": 5, key: pct})
        peak = max(range(len(lrs)), key=lrs.__getitem__)
        assert peak == round(pct * 20), key  # 20 steps: the peak at pct of them
    with pytest.raises(ConfigError, match="one_cycle_pct_start: shapes the one_cycle schedule"):
        build_config({"data": "d", "one_cycle_pct_start": 0.3})


PIPELINE = """\
description: tutorial spellings
defaults:
  model: test_resnet
  image_size: 32
  batch_size: 8
  num_workers: 0
  epochs: 1
  report: false
  mixed_precision: true
  gradient_clipping: 1.0
stages:
  - name: coarse
    data: {data}
    description: the easy stage
    dataset: generated colours
    classes: [alpha, beta, gamma]
    optimizer: sgd_momentum
    scheduler: cosine_warmup
    learning_rate: 0.01
  - name: fine
    data: {data}
    optimizer: adamw
    scheduler: exponential_warmup
    warmup_epochs: 0.5
"""


def test_pipeline_with_tutorial_stage_dict_spellings_runs(data: Path, tmp_path: Path, capsys) -> None:
    spec = tmp_path / "pipeline.yaml"
    spec.write_text(PIPELINE.format(data=data))
    assert main(["run", str(spec), "--dry-run", "--log-format", "json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["optimizer"], r["scheduler"], r["problems"]) for r in rows] == [
        ("sgd", "cosine", []), ("adamw", "exponential", [])]
    assert main(["run", str(spec), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    coarse = yaml.safe_load((tmp_path / "run" / "stages" / "coarse" / "config.yaml").read_text())
    assert (coarse["precision"], coarse["grad_clip"], coarse["lr"]) == ("auto", 1.0, 0.01)
    assert (coarse["optimizer"], coarse["momentum"], coarse["scheduler"]) == ("sgd", 0.9, "cosine")
    assert coarse["warmup_epochs"] == min(ALIAS_WARMUP_EPOCHS, 0.1)  # a tenth of its 1 epoch
    assert coarse["notes"] == {"description": "the easy stage", "dataset": "generated colours",
                               "classes": ["alpha", "beta", "gamma"]}
    fine = yaml.safe_load((tmp_path / "run" / "stages" / "fine" / "config.yaml").read_text())
    assert (fine["scheduler"], fine["warmup_epochs"], fine["notes"]) == ("exponential", 0.5, {})
    assert not any(k in coarse for k in ALIASES)  # config.yaml holds stagewise's own keys only


def _error(data: dict) -> str:
    with pytest.raises(ConfigError) as err:
        build_config({"data": "d", **data})
    return str(err.value)


def test_unknown_key_hints_point_to_aliases_or_the_closest_key() -> None:
    assert "clases: unknown key (did you mean 'classes' (kept in notes)?)" in _error({"clases": 3})
    msg = _error({"mixed_precison": True})
    assert "did you mean 'mixed_precision' (an alias of precision)?" in msg
    assert "stagewise keys" in msg and "weight_decay" not in msg  # no wall of ~80 keys
    assert "class_weights" not in _error({"klasses": 3})
    assert "grad_clip: given twice" in _error({"grad_clip": 2.0, "gradient_clipping": 1.0})
    # Given alongside, the stage's own value wins over what an alias implies.
    assert apply_aliases({"optimizer": "sgd_momentum", "momentum": 0.95})["momentum"] == 0.95
    assert build_config({"data": "d", "mixed_precision": False}).precision == "fp32"


def test_keys_lists_every_stage_key_and_the_aliases(capsys) -> None:
    from stagewise.config.schema import TrainConfig

    assert main(["keys", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["key"] for r in listed["keys"]] == list(TrainConfig.model_fields)
    assert all(r["help"] for r in listed["keys"])  # every key says what it does
    assert any(a["spelling"] == "gradient_clipping:" for a in listed["aliases"])
    assert main(["keys", "clip"]) == 0
    text = capsys.readouterr().out
    assert "grad_clip" in text and "gradient_clipping" in text and "batch_size" not in text


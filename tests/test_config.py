"""Bad configuration fails early with one message naming the key and the valid choices."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import stagewise
from conftest import make_image_folder, tiny_config
from stagewise.cli import main
from stagewise.config import apply_overrides, build_config, load_yaml
from stagewise.errors import ConfigError
from stagewise.kinds import STRATEGIES


def _error(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        build_config({"data": "some/folder", **data})
    return str(info.value)


def test_defaults_validate() -> None:
    cfg = build_config({"data": "d"})
    assert cfg.strategy == "scratch" and cfg.model == "resnet18" and cfg.epochs == 10  # no weights


def test_unknown_key_names_it_suggests_and_says_where_the_keys_are() -> None:
    msg = _error({"lrr": 0.1})
    assert "lrr: unknown key (did you mean 'lr'?)" in msg
    # ~80 stage keys are too many to read in an error: `stagewise keys` lists them on request.
    assert "stagewise keys" in msg and "weight_decay" not in msg


def test_wrong_type_names_key_and_value() -> None:
    msg = _error({"epochs": "many"})
    assert "epochs:" in msg and "integer" in msg and "'many'" in msg


def test_out_of_range_value() -> None:
    assert "val_fraction:" in _error({"val_fraction": 1.5})


def test_unknown_model_suggests_close_names() -> None:
    msg = _error({"model": "resnet19"})
    assert "model: unknown model 'resnet19'" in msg and "resnet18" in msg


@pytest.mark.parametrize(("key", "value", "valid"), [
    ("optimizer", "adamx", ["sgd", "adamw", "rmsprop"]),
    ("scheduler", "cos", ["cosine", "one_cycle", "plateau", "multistep"]),
    ("strategy", "probee", ["scratch", "probe", "finetune", "gradual"]),
    ("precision", "fp8", ["fp32", "bf16", "fp16"]),
])
def test_unknown_choice_lists_valid_choices(key: str, value: str, valid: list[str]) -> None:
    msg = _error({key: value})
    assert f"{key}: unknown value '{value}'" in msg
    assert all(f"'{v}'" in msg for v in valid)


def test_all_problems_are_listed_at_once() -> None:
    msg = _error({"optimizer": "adamx", "epochs": -1, "bogus": 1})
    assert msg.count("\n  - ") == 3


def test_inconsistent_combinations() -> None:
    assert "class_weights cannot be combined with mixup" in _error({"mixup": 0.2, "class_weights": "balanced"})
    assert "remove 'weights'" in _error({"strategy": "scratch", "weights": "w.safetensors"})
    assert "unfreeze_at" in _error({"unfreeze_at": [4, 2]})


def test_set_overrides_parse_yaml_scalars() -> None:
    data = apply_overrides({"lr": 0.1, "nested": {"a": 1}}, [
        "lr=0.01", "epochs=3", "freeze=[conv1.*, bn1.*]", "weights=null", "train_bn=true",
        "group_lrs={fc.*: 0.5}", "nested.b=2", "deep.x.y=on", "model=resnet18",
    ])
    assert data["lr"] == 0.01 and data["epochs"] == 3
    assert data["freeze"] == ["conv1.*", "bn1.*"] and data["weights"] is None
    assert data["train_bn"] is True and data["group_lrs"] == {"fc.*": 0.5}
    assert data["nested"] == {"a": 1, "b": 2} and data["deep"] == {"x": {"y": True}}
    cfg = build_config({"data": "d", **apply_overrides({}, ["lr=1e-3", "layer_decay=0.7"])})
    assert cfg.lr == 1e-3 and cfg.layer_decay == 0.7


def test_set_without_equals_is_an_error() -> None:
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["lr"])


def test_yaml_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("lr: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_yaml(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="list.yaml: expected a mapping"):
        load_yaml(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_yaml(tmp_path / "missing.yaml")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("config") / "data", per_class=4)


def _cli(tmp_path: Path, data: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--model", "test_resnet", "--image-size", "32",
            "--batch-size", "8", "--num-workers", "0", "--out", str(tmp_path / "run"), "--quiet", *extra]


@pytest.mark.parametrize(("extra", "expected"), [
    (["--optimizer", "adamx"], "optimizer: unknown value 'adamx'"),
    (["--scheduler", "cos"], "scheduler: unknown value 'cos'"),
    (["--strategy", "probee"], "strategy: unknown value 'probee'"),
    (["--model", "resnet19"], "unknown model 'resnet19'"),
    (["--set", "lrr=0.1"], "lrr: unknown key (did you mean 'lr'?)"),
    (["--set", "epochs=many"], "epochs:"),
    (["--set", "lr"], "expected key=value"),
])
def test_cli_config_errors_exit_2(tmp_path: Path, data: Path, capsys, extra, expected) -> None:
    assert main(_cli(tmp_path, data, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and expected in err
    assert not (tmp_path / "run").exists()


def test_cli_subprocess_config_error_has_no_traceback(tmp_path: Path, data: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "stagewise",
                           *_cli(tmp_path, data, "--optimizer", "adamx", "--set", "bogus=1")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "optimizer: unknown value 'adamx'" in proc.stderr and "bogus: unknown key" in proc.stderr


def test_cli_config_file_flags_and_set_layer(tmp_path: Path, data: Path) -> None:
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"lr": 0.5, "epochs": 3, "layer_decay": 0.9, "seed": 4}))
    code = main(_cli(tmp_path, data, "--config", str(config), "--epochs", "0",
                     "--set", "layer_decay=0.7", "--set", "freeze=[conv1.*]"))
    assert code == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["lr"] == 0.5 and saved["seed"] == 4  # from the file
    assert saved["epochs"] == 0  # the flag wins over the file
    assert saved["layer_decay"] == 0.7 and saved["freeze"] == ["conv1.*"]  # --set wins over both


def test_existing_run_folder_needs_resume(tmp_path: Path, data: Path, capsys) -> None:
    assert main(_cli(tmp_path, data, "--epochs", "0")) == 0
    assert main(_cli(tmp_path, data, "--epochs", "0")) == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err


def test_resume_refuses_to_change_the_run(tmp_path: Path, data: Path, capsys) -> None:
    out = tmp_path / "run"
    stagewise.train(tiny_config(data, out, epochs=1), reporter="quiet")
    with pytest.raises(ConfigError, match=r"resuming would change the run .*epochs: 1 -> 2"):
        stagewise.train(resume=True, out=str(out), epochs=2, reporter="quiet")
    with pytest.raises(ConfigError, match=r"lr: 0.01 -> 0.5"):
        stagewise.train(resume=True, out=str(out), lr=0.5, reporter="quiet")
    code = main(["train", "--resume", "--out", str(out), "--set", "optimizer=sgd", "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "optimizer: 'adamw' -> 'sgd'" in err and "Traceback" not in err
    # Keys that do not change the result may differ; unchanged keys may be repeated.
    result = stagewise.train(resume=True, out=str(out), num_workers=0, epochs=1, reporter="quiet")
    assert result.stopped == "completed" and len(result.history) == 1


def test_resume_needs_a_run_folder(tmp_path: Path, capsys) -> None:
    assert main(["train", "--resume", "--out", str(tmp_path / "nothing"), "--quiet"]) == 2
    assert "config.yaml not found" in capsys.readouterr().err


def test_strategy_defaults_fill_only_missing_keys_and_are_resolved() -> None:
    for strategy, s in STRATEGIES.items():
        source = "transfer" if s.uses_weights else "none"
        resolved = build_config({"data": "d", "strategy": strategy, "weights_source": source}).resolved()
        assert {k: resolved[k] for k in s.defaults} == dict(s.defaults), strategy
    with_weights = build_config({"data": "d", "weights": "w.safetensors"})
    assert (with_weights.strategy, with_weights.weights_source) == ("finetune", "transfer")
    assert with_weights.freeze_epochs == STRATEGIES["finetune"].defaults["freeze_epochs"]
    given = build_config({"data": "d", "strategy": "probe", "lr": 0.5, "augmentation": "light"})
    assert (given.lr, given.augmentation) == (0.5, "light")
    assert build_config({"data": "d", "strategy": "finetune", "layer_decay": None}).layer_decay is None
    # timm's additions need a preset: a probe given one keeps standard instead of refusing it
    assert build_config({"data": "d", "strategy": "probe", "re_prob": 0.25}).augmentation == "standard"
    with pytest.raises(ConfigError, match="strategy"):
        build_config({"data": "d", "strategy": "bogus"})


def test_recipe_follows_where_the_weights_come_from_and_the_optimizer() -> None:
    """none = scratch; a foreign pretrained file = the strategy's transfer recipe; an earlier
    stage (handoff) = no head-only warm-up and no layer decay; SGD gets SGD's weight decay."""
    scratch = build_config({"data": "d"})
    assert (scratch.strategy, scratch.weights_source, scratch.freeze_epochs) == ("scratch", "none", 0)
    transfer = build_config({"data": "d", "weights": "w.safetensors", "strategy": "finetune"})
    assert (transfer.freeze_epochs, transfer.layer_decay) == (1, 0.8)
    handoff = build_config({"data": "d", "strategy": "finetune", "weights_source": "handoff"})
    assert (handoff.freeze_epochs, handoff.layer_decay, handoff.lr) == (0, None, transfer.lr)
    sgd = build_config({"data": "d", "optimizer": "sgd"})
    assert sgd.weight_decay == 1e-4 and build_config({"data": "d"}).weight_decay == 0.05
    assert build_config({"data": "d", "optimizer": "sgd", "weight_decay": 5e-4}).weight_decay == 5e-4
    with pytest.raises(ConfigError, match="monitor .val_accuracy. is unknown; choose one of val_loss, val_top1, val_top5"):
        build_config({"data": "d", "monitor": "val_accuracy"})
    with pytest.raises(ConfigError, match="not measured by task .classify.; choose one of val_loss"):
        build_config({"data": "d", "monitor": "val_map"})

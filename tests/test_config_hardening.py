"""Hostile or mistaken config input fails fast with a short ConfigError (issue 15)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stagewise.cli import main
from stagewise.config import MAX_CONFIG_BYTES, apply_overrides, build_config, load_yaml
from stagewise.config.pipeline import MAX_STAGES
from stagewise.errors import ConfigError
from stagewise.runs.plan import load_pipeline

# Nine levels of nine aliases: 9**9 (387 million) strings once expanded.
ALIAS_BOMB = "\n".join(
    [f'l0: &l0 [{", ".join(["lol"] * 9)}]']
    + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
) + "\n"


def _file(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(fn: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    return str(info.value)


def _config_error(**data: Any) -> str:
    return _error(build_config, {"data": "d", **data})


def _pipeline_error(spec: dict[str, Any], overrides: list[str] = ()) -> str:  # type: ignore[assignment]
    return _error(load_pipeline, spec, list(overrides), check_data=False)


# --- 1. aliases, file size, nesting, message size -----------------------------------------------

def test_alias_bomb_is_refused_at_its_first_anchor(tmp_path: Path) -> None:
    path = _file(tmp_path, ALIAS_BOMB, "bomb.yaml")
    for load in (load_yaml, load_pipeline):
        msg = _error(load, path)
        assert msg.startswith(f"{path}: not valid YAML at line 1, column 5: found &l0: anchors and aliases")
        assert "vars:" in msg and len(msg) < 400


def test_alias_bomb_pipeline_exits_2_without_writing_anything(tmp_path: Path, capsys) -> None:
    path = _file(tmp_path, ALIAS_BOMB, "bomb.yaml")
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "anchors and aliases" in err and len(err) < 400
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text", ["lr: &x 0.1\nmin_lr: *x\n", "a: [1]\nb: *missing\n", "a: !!str &x y\n"])
def test_any_anchor_or_alias_is_refused(tmp_path: Path, text: str) -> None:
    assert "anchors and aliases are not allowed" in _error(load_yaml, _file(tmp_path, text))


def test_set_values_go_through_the_same_loader() -> None:
    assert "--set freeze: not valid YAML" in _error(apply_overrides, {}, ["freeze=&a [x]"])
    # A broken value was a yaml.YAMLError (a traceback at the CLI); now it is a ConfigError.
    assert "--set freeze: not valid YAML at line 1" in _error(apply_overrides, {}, ["freeze=[x"])


def test_file_over_one_mib_is_refused(tmp_path: Path) -> None:
    path = _file(tmp_path, "#" * MAX_CONFIG_BYTES + "\n")
    assert "larger than 1 MiB" in _error(load_yaml, path)


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    path = _file(tmp_path, "freeze: " + "[" * 40 + "]" * 40 + "\n")
    assert "nested deeper than 20 levels" in _error(load_yaml, path)


def test_bad_explicit_tag_is_a_config_error(tmp_path: Path) -> None:
    # PyYAML raises a bare ValueError for `!!int ten`.
    assert "not valid YAML" in _error(load_yaml, _file(tmp_path, "epochs: !!int ten\n"))


def test_text_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    # Was a UnicodeDecodeError from read_text(): a traceback at the CLI.
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"data: caf\xe9\n")
    assert "latin1.yaml: not valid YAML at position 9: #xe9" in _error(load_yaml, path)


def test_huge_values_are_cut_in_messages() -> None:
    msg = _config_error(model="m" * 100_000, freeze=list(range(1000)), **{"k" * 100_000: 1})
    assert len(msg) < 5_000 and "unknown key" in msg and "...: unknown key" in msg
    # Three items of a bad list, then a count: the other keys' problems stay in view.
    assert "freeze[2]:" in msg and "freeze[3]:" not in msg and "freeze: 997 more problem(s)" in msg


def test_pipeline_lists_at_most_fifty_problems() -> None:
    spec = {"stages": [{"name": f"s{i}", "data": f"${{undefined{i}}}"} for i in range(80)]}
    msg = _pipeline_error(spec)
    assert msg.startswith("pipeline: 80 problem(s):") and msg.endswith("  ... and 30 more")


# --- 2. duplicate keys --------------------------------------------------------------------------

def test_duplicate_key_names_the_key_and_both_lines(tmp_path: Path) -> None:
    path = _file(tmp_path, "data: d\nlr: 0.1\nepochs: 3\n\nlr: 0.5\n")
    msg = _error(load_yaml, path)
    assert msg.startswith(f"{path}: duplicate keys")
    assert "  - lr: given at line 2 and again at line 5" in msg


def test_every_duplicate_key_in_a_pipeline_is_listed(tmp_path: Path) -> None:
    text = ("defaults: {lr: 0.1, lr: 0.2}\n"
            "stages:\n"
            "  - name: a\n"
            "    epochs: 1\n"
            "    epochs: 2\n"
            "  - {name: b, 1: x, 0x1: y}\n")
    msg = _error(load_pipeline, _file(tmp_path, text, "pipe.yaml"))
    assert "  - defaults.lr: given at line 1 and again at line 1" in msg
    assert "  - stages[0].epochs: given at line 4 and again at line 5" in msg
    assert "  - stages[1].1: given at line 6 and again at line 6" in msg  # 1 and 0x1 are one key


# --- 3. non-finite and absurd numbers -----------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("lr: .inf", "lr: inf is not a finite number; valid: 0.0 < lr <= 10.0"),
    ("lr: -.inf", "lr: -inf is not a finite number"),
    ("lr: .nan", "lr: nan is not a finite number"),
    ("lr: 1.0e+30", "lr: 1e+30 is out of range; valid: 0.0 < lr <= 10.0"),
    ("lr: 1e30", "lr: '1e30' is out of range"),  # YAML 1.1 reads this as text; pydantic converts it
    ("weight_decay: 5", "weight_decay: 5 is out of range; valid: 0.0 <= weight_decay <= 1.0"),
    ("grad_clip: .inf", "grad_clip: inf is not a finite number"),
    ("mixup: 1000", "mixup: 1000 is out of range; valid: 0.0 <= mixup <= 10.0"),
    ("gamma: 1.0", "gamma: 1.0 is out of range; valid: 0.0 < gamma < 1.0 (the learning rate"),
    ("group_lrs: {fc.*: .nan}", "group_lrs.fc.*: nan is not a finite number; valid: 0.0 < group_lrs.fc.* <= 10.0"),
    ("milestones: [10, .inf]", "milestones[1]: inf is not a finite number"),
    ("mean: [0.485, 123.7, 0.406]", "mean[1]: 123.7 is out of range; valid: 0.0 <= mean[1] <= 1.0 (normal"),
    ("std: [0, 0.2, 0.2]", "std[0]: 0 is out of range; valid: 0.0 < std[0] <= 1.0"),
    ("seed: -1", "seed: -1 is out of range; valid: 0 <= seed <= 4294967295"),
])
def test_non_finite_and_out_of_range_numbers(tmp_path: Path, text: str, expected: str) -> None:
    path = _file(tmp_path, f"data: d\n{text}\n")
    msg = _error(build_config, load_yaml(path), source=str(path))
    assert msg.startswith(f"{path}: invalid configuration") and f"  - {expected}" in msg


# --- 4. sizes -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("key", "value", "expected"), [
    ("image_size", 100_000, "16 <= image_size <= 2048 (memory grows with the square"),
    ("image_size", 8, "16 <= image_size <= 2048"),
    ("batch_size", 0, "1 <= batch_size <= 4096 (larger batches"),
    ("batch_size", 1_000_000, "1 <= batch_size <= 4096"),
    ("epochs", 10**9, "0 <= epochs <= 10000"),
    ("num_workers", 10_000, "0 <= num_workers <= 256"),
    ("grad_accum", 10**6, "1 <= grad_accum <= 1024"),
])
def test_size_like_keys_are_bounded(key: str, value: int, expected: str) -> None:
    assert f"  - {key}: {value} is out of range; valid: {expected}" in _config_error(**{key: value})


def test_bounds_hold_at_the_cli_too(tmp_path: Path, capsys) -> None:
    code = main(["train", "--data", str(tmp_path), "--image-size", "100000", "--out", str(tmp_path / "run"),
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "image_size: 100000 is out of range" in err and "Traceback" not in err


def test_sane_edge_values_pass() -> None:
    cfg = build_config({"data": "d", "image_size": 2048, "batch_size": 4096, "lr": 10, "epochs": 10_000,
                        "mean": [0.5, 0.5, 0.5], "std": [1, 1, 1], "seed": 2**32 - 1})
    assert cfg.image_size == 2048 and cfg.lr == 10.0


# --- 5. stage names and other pipeline input ----------------------------------------------------

@pytest.mark.parametrize("name", ["..", ".", ".hidden", "a/b", "../escape", "a\\b", "v1.", "x" * 65, "a b"])
def test_unsafe_stage_names_are_refused(name: str) -> None:
    msg = _pipeline_error({"stages": [{"name": name, "data": "d"}]})
    assert f"stage name {name!r} is not allowed; use 1-64 letters, digits, '_', '-' or '.'" in msg


def test_every_bad_name_is_listed_at_once() -> None:
    msg = _pipeline_error({"stages": [{"name": "..", "data": "d"}, {"name": "a/b", "data": "d"},
                                      {"name": "ok", "data": "d", "lr": ".inf"}]})
    assert "stage name '..'" in msg and "stage name 'a/b'" in msg and "(ok).lr" in msg


def test_safe_stage_names_pass(tmp_path: Path) -> None:
    names = ["v1.0", "stage_2", "A-b", "x" * 64, "7"]
    plan = load_pipeline({"stages": [{"name": n, "data": "d"} for n in names]}, out=tmp_path, check_data=False)
    assert plan.order == names and plan.stage("v1.0").config.out == tmp_path / "stages" / "v1.0"


def test_stage_names_differing_only_in_case_are_refused() -> None:
    msg = _pipeline_error({"stages": [{"name": "S1", "data": "d"}, {"name": "s1", "data": "d"},
                                      {"name": "s1", "data": "d"}]})
    assert "stage names 'S1' and 's1' differ only in case" in msg and "duplicate stage name 's1'" in msg


def test_too_many_stages() -> None:
    msg = _pipeline_error({"stages": [{"data": "d"}] * (MAX_STAGES + 1)})
    assert f"stages: {MAX_STAGES + 1} stages; a pipeline may have at most {MAX_STAGES}" in msg


def test_a_variable_cannot_expand_the_file_past_one_mib() -> None:
    # One budget for the whole file: 300 KB used twice in defaults, once in data, then too much.
    spec = {"vars": {"a": "x" * 300_000}, "defaults": {"freeze": ["${a}", "${a}"]},
            "stages": [{"name": "s", "data": "${a}", "freeze": ["${a}", "${a}"]}]}
    msg = _pipeline_error(spec)
    assert "stages[0].freeze[0]: substituting variables here would take the file past 1 MiB" in msg
    assert "data: substituting" not in msg


def test_a_variable_holds_one_value() -> None:
    msg = _pipeline_error({"vars": {"big": [1, 2]}, "stages": [{"name": "s", "data": "d", "epochs": "${big}"}]})
    assert "vars.big: a variable holds one value" in msg


@pytest.mark.parametrize("spec", [
    {"vars": [1], "stages": [{"data": "d"}]},
    {"stages": 5},
    {1: "x", "stages": [{"data": "d"}]},
    {"stages": [{"name": "x" * 300, "data": "a" * 5000}]},
])
def test_malformed_pipelines_are_config_errors_not_crashes(spec: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        load_pipeline(spec)


# --- the pipeline file's own keys (config/pipeline.py) -------------------------------------------

def test_pipeline_keys_are_checked_like_stage_keys() -> None:
    msg = _pipeline_error({"stagess": [], "defaults": 3,
                           "stages": [7, {"name": "a", "data": "d", "baseline": "scratchh", "lrr": 1}]})
    assert ("stagess: unknown key (did you mean 'stages'?); valid keys: defaults, description, name, "
            "stages, vars (a variable goes under vars:)") in msg
    assert "defaults: Input should be a valid dictionary" in msg
    assert "stages[0]: Input should be a valid dictionary" in msg
    # The other entries are still checked: every problem at once.
    assert "stages[1] (a).baseline: unknown value 'scratchh'; input should be 'scratch', 'pretrained'" in msg
    assert "stages[1] (a).lrr: unknown key (did you mean 'lr'?)" in msg


def test_bad_pipeline_key_exits_2(tmp_path: Path, capsys) -> None:
    path = _file(tmp_path, "stages:\n  - name: a\n    data: d\n    init: 5\n    baselin: none\n", "p.yaml")
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "stages[0] (a).baselin: unknown key (did you mean 'baseline'?)" in err
    assert not (tmp_path / "run").exists()

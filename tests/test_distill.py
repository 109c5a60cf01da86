"""Knowledge distillation (`teacher:` + `distill:`): the loss is Hinton's, the teacher stays
frozen and out of the optimizer and checkpoints, alpha 0 is plain training, the logit cache is
exact, a resume is exact and refuses a changed teacher, a pipeline stage learns from an earlier
one, and a bad teacher fails before a run folder is made."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file

import stagewise
from conftest import crash_then_resume, make_image_folder, tiny_config
from stagewise.cli import main
from stagewise.data.hashing import file_digest
from stagewise.errors import ConfigError
from stagewise.training.distill import soft_target_loss

NO_AUG = {"augmentation": "none"}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("distill") / "data", per_class=8)


@pytest.fixture(scope="module")
def teacher(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained teacher with its own image size and normalisation (the student's differ)."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    stagewise.train(tiny_config(data, out, image_size=48, mean=[0.5, 0.5, 0.5],
                                std=[0.25, 0.25, 0.25], epochs=2), reporter="quiet")
    return out


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_soft_target_loss_is_hintons() -> None:
    torch.manual_seed(0)
    s, t, temp = torch.randn(5, 4), torch.randn(5, 4), 3.0
    p_t = torch.softmax(t / temp, dim=1)
    by_hand = (p_t * (p_t.log() - torch.log_softmax(s / temp, dim=1))).sum(1).mean() * temp**2
    assert torch.allclose(soft_target_loss(s, t, temp), by_hand, atol=1e-6)
    # The mixed loss: (1 - alpha) * CE + alpha * soft.
    from stagewise.config import Distill
    from stagewise.data import Preprocess
    from stagewise.training.distill import Distiller, Teacher

    pre = Preprocess(image_size=8, mean=(0.5,) * 3, std=(0.5,) * 3)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    # The teacher knows 4 classes in another order; the student learns three of them.
    tch = Teacher(net, "linear", ["d", "c", "b", "a"], pre, "mem", "0" * 64)
    dist = Distiller(tch, [3, 1, 2], pre, Distill(alpha=0.25, temperature=2.0), torch.device("cpu"))
    # The teacher sees the student's batch in its own normalisation and at its own size.
    own = Preprocess(image_size=4, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4))
    seer = Distiller(Teacher(net, "linear", ["a"], own, "mem", "0" * 64), [0], pre, Distill(),
                     torch.device("cpu"))
    image = torch.rand(2, 3, 8, 8)
    seen = seer.teacher_input((image - 0.5) / 0.5)
    mean, std = torch.tensor(own.mean).view(1, 3, 1, 1), torch.tensor(own.std).view(1, 3, 1, 1)
    expected_view = F.interpolate((image - mean) / std, size=(4, 4), mode="bilinear", antialias=True)
    assert seen.shape == (2, 3, 4, 4) and torch.allclose(seen, expected_view, atol=1e-5)
    x, y = torch.randn(5, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1])
    student = torch.randn(5, 3)
    ce = F.cross_entropy(student, y)
    expected = 0.75 * ce + 0.25 * soft_target_loss(student, net(x)[:, [3, 1, 2]], 2.0)
    assert torch.allclose(dist(ce, student, x, None), expected, atol=1e-6)


def test_distilled_run_records_its_teacher_and_keeps_it_frozen(data: Path, teacher: Path,
                                                               tmp_path: Path) -> None:
    before = file_digest(teacher / "best.safetensors", "sha256")
    result = stagewise.train(tiny_config(data, tmp_path / "s", teacher=str(teacher),
                                         distill={"alpha": 0.7, "temperature": 2.0}), reporter="quiet")
    assert file_digest(teacher / "best.safetensors", "sha256") == before
    card = json.loads((result.run_dir / "model.json").read_text())
    assert card["teacher"]["sha256"] == before and card["teacher"]["architecture"] == "test_resnet"
    assert card["teacher"]["val_top1"] is not None and card["teacher"]["image_size"] == 48
    assert json.loads((result.run_dir / "teacher.json").read_text())["sha256"] == before
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert saved["teacher"] == str(teacher) and saved["distill"]["alpha"] == 0.7
    assert all(r["train_distill_loss"] > 0 for r in result.history)
    # The checkpoint holds the student only: the same keys as its best weights.
    last = load_file(str(result.run_dir / "last" / "model.safetensors"))
    assert last.keys() == load_file(str(result.weights)).keys()


def test_teacher_is_frozen_and_not_in_the_optimizer(data: Path, teacher: Path, tmp_path: Path) -> None:
    from stagewise.config import build_config
    from stagewise.runs.teacher import load_teacher
    from stagewise.training import prepare_stage
    from stagewise.training.progress import make_reporter

    cfg = build_config(tiny_config(data, tmp_path / "s", teacher=str(teacher)))
    tch = load_teacher(str(teacher))
    setup = prepare_stage(cfg, make_reporter("quiet"), teacher=tch)
    net = setup.parts.distill.network
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    in_optimizer = {id(p) for g in setup.parts.optimizer.param_groups for p in g["params"]}
    assert not in_optimizer & {id(p) for p in net.parameters()}


def test_alpha_zero_is_plain_training(data: Path, teacher: Path, tmp_path: Path) -> None:
    plain = stagewise.train(tiny_config(data, tmp_path / "plain"), reporter="quiet")
    zero = stagewise.train(tiny_config(data, tmp_path / "zero", teacher=str(teacher),
                                       distill={"alpha": 0.0}), reporter="quiet")
    _same_weights(plain.run_dir / "last" / "model.safetensors", zero.run_dir / "last" / "model.safetensors")


def test_cached_teacher_logits_equal_computed_ones(data: Path, teacher: Path, tmp_path: Path) -> None:
    cfg = dict(teacher=str(teacher), **NO_AUG)
    cached = stagewise.train(tiny_config(data, tmp_path / "c", **cfg), reporter="quiet")
    computed = stagewise.train(tiny_config(data, tmp_path / "n", distill={"cache": False}, **cfg),
                               reporter="quiet")
    a = load_file(str(cached.run_dir / "last" / "model.safetensors"))
    b = load_file(str(computed.run_dir / "last" / "model.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    assert cached.history[-1]["train_distill_loss"] == pytest.approx(
        computed.history[-1]["train_distill_loss"], rel=1e-4)


def test_distillation_resumes_exactly(data: Path, teacher: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = dict(teacher=str(teacher), batch_size=4, checkpoint_every=3, **NO_AUG)
    straight = stagewise.train(tiny_config(data, tmp_path / "straight", **cfg), reporter="quiet")
    resumed = crash_then_resume(tiny_config(data, tmp_path / "crashed", **cfg), monkeypatch)
    assert resumed.history[-1]["epoch"] == 2
    _same_weights(straight.run_dir / "last" / "model.safetensors",
                  resumed.run_dir / "last" / "model.safetensors")
    _same_weights(straight.weights, resumed.weights)


def test_resume_refuses_a_changed_teacher(data: Path, teacher: Path, tmp_path: Path) -> None:
    import shutil

    own = tmp_path / "teacher"
    shutil.copytree(teacher, own)
    out = tmp_path / "s"
    with pytest.raises(RuntimeError, match="stop"):
        import stagewise.training.stage as stage

        real = stage._checkpoint

        def stop(setup, where):
            real(setup, where)
            raise RuntimeError("stop")

        stage._checkpoint = stop
        try:
            stagewise.train(tiny_config(data, out, teacher=str(own)), reporter="quiet")
        finally:
            stage._checkpoint = real
    weights = load_file(str(own / "best.safetensors"))
    from safetensors.torch import save_file

    save_file({k: v + 1 if v.is_floating_point() else v for k, v in weights.items()},
              str(own / "best.safetensors"))
    with pytest.raises(ConfigError, match="teacher's weights changed"):
        stagewise.train(resume=True, reporter="quiet", out=str(out))


def test_bad_teacher_exits_2_without_a_run_folder(data: Path, teacher: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "s"
    base = ["train", "--data", str(data), "--model", "test_resnet", "--image-size", "32",
            "--epochs", "1", "--out", str(out), "--set", "num_workers=0", "--set", "report=false"]
    assert main([*base, "--teacher", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "teacher:" in err and "not found" in err
    assert not out.exists()
    # A teacher that does not know one of the student's classes.
    more = make_image_folder(tmp_path / "more", classes=("alpha", "beta", "gamma", "delta"), per_class=4)
    assert main([*base[:2], str(more), *base[3:], "--set", f"teacher={teacher}"]) == 2
    err = capsys.readouterr().err
    assert "delta" in err and "does not predict 1" in err
    assert not out.exists()
    assert main([*base, "--set", "distill.alpha=0.5"]) == 2
    assert "set teacher" in capsys.readouterr().err


def test_pipeline_stage_learns_from_an_earlier_stage(data: Path, tmp_path: Path) -> None:
    fast = {k: v for k, v in tiny_config(data, tmp_path).items() if k not in ("out", "data")}
    pipeline = {"defaults": {**fast, "epochs": 1, **NO_AUG}, "stages": [
        {"name": "big", "data": str(data), "image_size": 40},
        {"name": "small", "data": str(data), "init": "scratch", "strategy": "scratch",
         "teacher": "big", "distill": {"alpha": 0.5}}]}
    out = tmp_path / "pipe"
    result = stagewise.run(pipeline, out=out, reporter="quiet")
    assert result.stages["small"]["status"] == "done"
    card = json.loads((out / "stages" / "small" / "model.json").read_text())
    assert card["teacher"]["source"] == str(out / "stages" / "big")
    assert card["teacher"]["sha256"] == file_digest(out / "stages" / "big" / "best.safetensors", "sha256")
    bad = {**pipeline, "stages": [{**pipeline["stages"][0], "teacher": "small"}, pipeline["stages"][1]]}
    with pytest.raises(ConfigError, match="a later stage 'small'"):
        stagewise.run(bad, out=tmp_path / "bad", reporter="quiet")


def test_distill_settings_are_checked_at_load(data: Path, tmp_path: Path) -> None:
    from stagewise.config import build_config

    cfg = build_config({"data": str(data), "teacher": "t"})
    assert cfg.distill is None  # the defaults apply: alpha 0.5, temperature 4, cache on
    with pytest.raises(ConfigError, match=r"distill.alpha: Input should be less than or equal to 1"):
        build_config({"data": str(data), "teacher": "t", "distill": {"alpha": 1.5}})
    with pytest.raises(ConfigError, match="distill.temperature"):
        build_config({"data": str(data), "teacher": "t", "distill": {"temperature": 0}})
    with pytest.raises(ConfigError, match="cache: features trains a head"):
        build_config({"data": str(data), "teacher": "t", "cache": "features"})
    # A pipeline: a teacher that is neither an earlier stage nor a path is listed before training.
    from stagewise.runs.plan import load_pipeline

    with pytest.raises(ConfigError, match="teacher: 'nowhere' is neither an earlier stage"):
        load_pipeline({"stages": [{"name": "a", "data": str(data)},
                                  {"name": "b", "data": str(data), "teacher": "nowhere"}]})


def test_lr_find_sweeps_the_distillation_loss(data: Path, teacher: Path, tmp_path: Path) -> None:
    plain = stagewise.lr_find(tiny_config(data, tmp_path / "a"), steps=6)
    taught = stagewise.lr_find(tiny_config(data, tmp_path / "b", teacher=str(teacher),
                                           distill={"alpha": 1.0}), steps=6)
    assert len(taught.losses) == len(plain.losses) and taught.losses[0] != plain.losses[0]

"""Run reports: what a user opens after training must show the right things and open offline."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import random
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import stagewise
from conftest import make_image_folder, tiny_config
from stagewise.cli import main
from stagewise.models import LoadedWeights
from stagewise.reporting import ReportError, plots, read_run, write_report
from stagewise.reporting.samples import load_model, predict, split_samples
from stagewise.runfolder import read_split

STAGES = (("probe", "probe", 1), ("finetune", "finetune", 1), ("gradual", "gradual", 3))


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three real stage runs under RUN/stages/ and the pipeline's history.json written as the
    pipeline runner does: stage entries with their global epoch range, and every epoch record."""
    data = make_image_folder(tmp_path_factory.mktemp("report") / "data")
    run = data.parent / "pipeline"
    stages, epochs, offset, incoming = [], [], 0, None
    for name, strategy, n in STAGES:
        result = stagewise.train(tiny_config(data, run / "stages" / name, strategy=strategy, epochs=n),
                                 reporter="quiet", incoming=incoming)
        # the next stage starts from this one's weights, its head matched by class id
        incoming = LoadedWeights(load_file(str(result.weights)), f"stage '{name}'",
                                 class_ids=result.class_ids, class_names=result.class_names)
        baseline = {"kind": "scratch", "best_val_top1": 0.5} if name == "finetune" else None
        stages.append({"name": name, "run_dir": str(run / "stages" / name), "first_epoch": offset + 1,
                       "last_epoch": offset + n, "strategy": strategy, "baseline": baseline,
                       "head": result.head})
        epochs += [{"global_epoch": offset + r["epoch"], "stage": name, **r} for r in result.history
                   if r["epoch"] > 0]
        offset += n
    (run / "history.json").write_text(json.dumps({"stages": stages, "epochs": epochs}))
    write_report(run)
    return run


@pytest.fixture(scope="module")
def single_run(pipeline_run: Path) -> Path:
    """A single-stage run folder: the gradual stage (3 epochs, 2 unfreeze events) on its own."""
    stage = pipeline_run / "stages" / "gradual"
    write_report(stage)
    return stage


def _markers(fig, gid: str) -> list[list[float]]:
    """x positions of the vertical markers with `gid`, per axes."""
    return [[line.get_xdata()[0] for line in ax.get_lines() if line.get_gid() == gid]
            for ax in fig.axes if ax.get_lines()]


def test_pipeline_curves_have_stage_boundaries_and_unfreeze_events(pipeline_run: Path) -> None:
    history = read_run(pipeline_run)
    assert history.kind == "pipeline"
    assert [s.name for s in history.stages] == [name for name, _, _ in STAGES]
    trained = [(r["stage"], r["global_epoch"]) for r in history.epochs if r["epoch"] >= 1]
    assert trained == [("probe", 1), ("finetune", 2), ("gradual", 3), ("gradual", 4), ("gradual", 5)]
    starts = [(r["stage"], r["x"]) for r in history.epochs if r["epoch"] == 0]
    assert starts == [("finetune", 1.5), ("gradual", 2.5)]  # evaluations of the handed-over weights
    fig = plots.plot_curves(history)
    # loss and accuracy axes each: 2 boundaries for 3 stages, between epochs 1|2 and 2|3
    assert _markers(fig, plots.BOUNDARY_GID) == [[1.5, 2.5], [1.5, 2.5]]
    # gradual (global epochs 3-5) unfreezes a group at the start of its 2nd and 3rd epoch
    assert _markers(fig, plots.UNFREEZE_GID) == [[3.5, 4.5], [3.5, 4.5]]
    val = [line for line in fig.axes[1].get_lines() if line.get_label().endswith("val top-1")]
    # one segment per stage; a handed-over stage's epoch-0 evaluation sits on its start boundary
    assert [list(line.get_xdata()) for line in val] == [[1], [1.5, 2], [2.5, 3, 4, 5]]
    # the best epoch is the one whose weights the trainer kept (never the epoch-0 evaluation)
    assert [s.best["epoch"] for s in history.stages] == [
        s.model_info["metrics"]["epoch"] for s in history.stages]
    single = plots.plot_curves(read_run(pipeline_run / "stages" / "gradual"))
    assert _markers(single, plots.BOUNDARY_GID) == [[], []]
    assert _markers(single, plots.UNFREEZE_GID) == [[1.5, 2.5], [1.5, 2.5]]


def test_lr_plot_draws_every_param_group(single_run: Path) -> None:
    history = read_run(single_run)
    trained = [r for r in history.epochs if "lr" in r]
    groups = set(trained[0]["lr"])
    series = plots.lr_series(history)
    assert {g for names, _ in series for g in names} == groups
    fig = plots.plot_lr(history)
    drawn = [line for line in fig.axes[0].get_lines() if line.get_gid() is None]
    assert len(drawn) == len(series)
    assert list(drawn[0].get_ydata()) == [r["lr"][series[0][0][0]] for r in trained]


def test_confusion_matrix_counts_every_validation_image(single_run: Path) -> None:
    history = read_run(single_run)
    stage = history.stages[0]
    split = read_split(single_run)
    matrix = np.asarray(stage.confusion["matrix"])
    assert matrix.sum() == len(split["splits"]["val"]) == stage.best["val_images"]
    fig = plots.plot_confusion(matrix, stage.class_names, "x")
    shown = fig.axes[0].get_images()[0].get_array()
    assert np.allclose(np.asarray(shown).sum(axis=1), 1.0)  # rows normalised
    assert f"({matrix.sum()} validation images)" in fig.axes[0].get_title()
    acc = plots.per_class_accuracy(matrix)
    assert np.allclose(acc, np.diag(matrix) / matrix.sum(axis=1))


def test_reloaded_model_reproduces_the_saved_confusion_matrix(single_run: Path) -> None:
    history = read_run(single_run)
    model, pre = load_model(history.final_weights)
    samples, _ = split_samples(history.stages[0].config, single_run, "val")
    preds = predict(model, pre, samples, list(range(len(samples))))
    rebuilt = np.zeros_like(np.asarray(history.stages[0].confusion["matrix"]))
    for p in preds:
        rebuilt[p.true, p.pred] += 1
    assert rebuilt.tolist() == history.stages[0].confusion["matrix"]


def test_many_classes_list_confused_pairs_instead_of_a_heatmap() -> None:
    n = 60
    matrix = np.eye(n, dtype=int) * 5
    matrix[3, 7] = 4
    matrix[10, 2] = 2
    names = [f"class{i}" for i in range(n)]
    with pytest.raises(ValueError, match="60 classes"):
        plots.plot_confusion(matrix, names)
    assert plots.top_confused(matrix, names, k=5) == [("class3", "class7", 4, 4 / 9),
                                                    ("class10", "class2", 2, 2 / 7)]
    bars = plots.plot_per_class(matrix, names).axes[0].patches
    assert len(bars) == plots.MAX_BAR_CLASSES


def test_report_files_and_summary(pipeline_run: Path) -> None:
    md = (pipeline_run / "report.md").read_text()
    for link in re.findall(r"\]\((plots/[^)]+\.png)\)", md):
        assert (pipeline_run / link).is_file(), link
    names = {p.name for p in (pipeline_run / "plots").glob("*.png")}
    assert {"curves.png", "lr.png", "predictions.png", "augmentation-probe.png"} <= names
    assert {f"confusion-{s}.png" for s, _, _ in STAGES} <= names
    assert {f"per-class-{s}.png" for s, _, _ in STAGES} <= names
    summary = _md_table(md, "| stage | dataset |")
    finetune = read_run(pipeline_run).stages[1]
    assert summary["finetune"]["best val top-1"] == f"{100 * finetune.best['val_top1']:.1f}%"
    gain = f"{100 * (finetune.best['val_top1'] - 0.5):+.1f} pp"  # against the baseline's 0.5
    assert summary["finetune"]["transfer gain"] == gain
    assert summary["probe"]["transfer gain"] == "-"
    assert summary["gradual"]["epochs"] == "3/3"
    assert _md_table(md, "| stage | baseline |")["finetune"]["gain (best)"] == gain
    assert "config of gradual" in md and "strategy: gradual" in md


def _md_table(md: str, header: str) -> dict[str, dict[str, str]]:
    """The markdown table starting with `header`, as {first cell: {column: cell}}."""
    lines = md[md.index(header):].splitlines()
    columns = [c.strip() for c in lines[0].split("|")[1:-1]]
    rows = {}
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.split("|")[1:-1]]
        rows[cells[0]] = dict(zip(columns, cells, strict=True))
    return rows


def test_report_html_is_self_contained(single_run: Path) -> None:
    html = (single_run / "report.html").read_text()
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", html)
    assert refs and not [r for r in refs if re.match(r"\s*(https?:)?//", r)]
    assert not re.search(r"<script|@import|url\(", html)
    images = re.findall(r"<img [^>]*src=\"([^\"]+)\"", html)
    assert len(images) == 6  # curves, lr, confusion, per-class, predictions, augmentation
    for src in images:
        assert src.startswith("data:image/png;base64,")
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert img.format == "PNG"
        img.load()


def test_partial_runs_still_get_a_report(single_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "partial"
    run.mkdir()
    shutil.copy(single_run / "config.yaml", run / "config.yaml")
    lines = (single_run / "history.jsonl").read_text().splitlines()
    first = next(line for line in lines if json.loads(line)["epoch"] == 1)
    (run / "history.jsonl").write_text(first + "\n{\"epoch\": 2, \"train_lo")  # torn last line
    write_report(run)
    md = (run / "report.md").read_text()
    assert "| 1/3 |" in md  # one epoch of three recorded
    assert "No confusion matrix yet" in md and "No trained weights yet" in md
    empty = tmp_path / "empty"
    (empty / "stages" / "a").mkdir(parents=True)
    assert write_report(empty).is_file()
    assert "No epoch has finished yet" in (empty / "report.md").read_text()
    torn = tmp_path / "torn"  # a pipeline whose history.json was cut off mid-write
    shutil.copytree(single_run.parent, torn / "stages")
    (torn / "history.json").write_text('{"stages": [{"name": "probe", "first_ep')
    write_report(torn)
    assert [s.name for s in read_run(torn).stages] == ["probe", "finetune", "gradual"]  # by age
    assert "## Confusion matrix: gradual" in (torn / "report.md").read_text()
    with pytest.raises(ReportError, match="not a stagewise run folder"):
        write_report(tmp_path)


def test_report_leaves_the_callers_random_state_alone(single_run: Path) -> None:
    random.seed(1)
    torch.manual_seed(1)
    np.random.seed(1)
    expected = (random.random(), torch.rand(1).item(), np.random.rand())
    random.seed(1)
    torch.manual_seed(1)
    np.random.seed(1)
    write_report(single_run)
    assert (random.random(), torch.rand(1).item(), np.random.rand()) == expected


def test_report_command(single_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", str(single_run)]) == 0
    assert str(single_run / "report.html") in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "run folder not found" in capsys.readouterr().err


# --- the browser check ------------------------------------------------------------------------

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"),
                             "/usr/bin/chromium") if p and os.path.exists(p)), None)


class DevTools:
    """A minimal Chrome DevTools Protocol client over --remote-debugging-pipe (fds 3 and 4,
    NUL-separated JSON): no websocket library needed."""

    def __init__(self, binary: str, profile: Path, width: int = 1280, height: int = 1400) -> None:
        cmd_read, self.cmd_write = os.pipe()
        self.event_read, event_write = os.pipe()

        def wire_fds() -> None:  # in the child: Chromium reads commands on 3, writes on 4
            import fcntl

            a = fcntl.fcntl(cmd_read, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(event_write, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", f"--window-size={width},{height}",
                 "--remote-debugging-pipe", "about:blank"]
        self.proc = subprocess.Popen([binary, *flags], preexec_fn=wire_fds, close_fds=False,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(cmd_read)
        os.close(event_write)
        self.buffer, self.events, self.next_id = b"", [], 0

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.event_read], [], [], left)[0]:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self.event_read, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.cmd_write, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + 30
        while True:
            m = self._message(deadline)
            if m.get("id") == self.next_id:
                assert "error" not in m, m["error"]
                return m["result"]
            self.events.append(m)

    def wait_for(self, method: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._message(deadline))

    def drain(self, seconds: float) -> None:
        """Collect late events (errors after load) for a moment."""
        try:
            while True:
                self.events.append(self._message(time.monotonic() + seconds))
        except TimeoutError:
            pass

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.call("Browser.close")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self.cmd_write)
        os.close(self.event_read)


def render(html: Path, profile: Path, screenshot: Path) -> dict:
    """Open `html` in headless Chromium; return requests, failures, console errors, image sizes."""
    browser = DevTools(CHROMIUM, profile)
    try:
        page = next(t for t in browser.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        session = browser.call("Target.attachToTarget", {"targetId": page["targetId"],
                                                         "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.call(f"{domain}.enable", session=session)
        browser.call("Page.navigate", {"url": html.resolve().as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired")
        browser.drain(0.5)
        sizes = browser.call("Runtime.evaluate", {
            "expression": "JSON.stringify(Array.from(document.images)"
                          ".map(i => [i.complete, i.naturalWidth, i.naturalHeight]))",
            "returnByValue": True}, session=session)["result"]["value"]
        shot = browser.call("Page.captureScreenshot", {"format": "png"}, session=session)["data"]
        screenshot.write_bytes(base64.b64decode(shot))
    finally:
        browser.close()
    events = browser.events
    params = [(e.get("method"), e.get("params", {})) for e in events]
    return {
        "requests": [p["request"]["url"] for m, p in params if m == "Network.requestWillBeSent"],
        "failed": [p for m, p in params if m == "Network.loadingFailed"],
        "errors": [p for m, p in params if m == "Runtime.exceptionThrown"
                   or (m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"))
                   or (m == "Log.entryAdded" and p["entry"].get("level") == "error")],
        "images": json.loads(sizes),
    }


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on this machine (apt-get install chromium)")
def test_report_renders_in_headless_chromium(pipeline_run: Path, tmp_path: Path) -> None:
    html = pipeline_run / "report.html"
    shot = tmp_path / "report.png"
    seen = render(html, tmp_path / "profile", shot)
    assert seen["requests"] and all(u.startswith(("file:", "data:")) for u in seen["requests"])
    assert seen["failed"] == []
    assert seen["errors"] == []
    n_img = len(re.findall(r"<img ", html.read_text()))
    assert len(seen["images"]) == n_img >= 10
    assert all(done and w > 0 and h > 0 for done, w, h in seen["images"])  # every image decoded
    picture = Image.open(shot)
    assert picture.width == 1280 and picture.height > 1000  # the viewport, less window chrome
    assert len(picture.convert("L").getcolors(1 << 16) or []) > 20  # not a blank page

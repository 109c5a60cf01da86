"""SIGKILL campaign: kill a small 2-stage pipeline at random moments, resume, compare bit for bit.

Each trial starts `stagewise run PIPELINE --out RUN`, kills it with SIGKILL after a random
(seeded) delay (one trial in ten during start-up, the others at a uniform moment of the training
that follows it, as timed on the reference run), resumes it with `stagewise run PIPELINE --out RUN --resume`, and compares every
safetensors file the run left (each stage's best weights and last/ checkpoint, the pipeline's
final weights) tensor by tensor with those of an uninterrupted reference run. Trials alternate
between two pipelines: a classify stage followed by an embed stage (`task: embed`, supcon with
m_per_class), and a classify stage followed by a student distilled from it (`teacher:`).
`checkpoint_every` is chosen so that step checkpoints also land on an epoch's last batch.

    python benchmarks/sigkill_campaign.py                 # 20 trials, seed 0
    python benchmarks/sigkill_campaign.py --trials 40 --seed 3 --keep /tmp/campaign

Everything runs on the CPU with one thread, so that runs are bit-reproducible.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

# The tests' generated identities (the same images the embed tests learn from), not a copy.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import make_identity_folder  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
       "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
           [str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
# 10 identities x 8 views, 30% of the identities for validation: 56 training images, which at a
# batch of 16 is 4 batches an epoch, so checkpoint_every 2 also saves at an epoch's last batch.
COMMON = {"model": "test_resnet", "image_size": 32, "batch_size": 16, "num_workers": 0,
          "report": False, "seed": 0, "val_fraction": 0.3, "checkpoint_every": 2,
          "augmentation": "light"}
PIPELINES = {
    "embed": [
        {"name": "classify", "strategy": "scratch", "epochs": 4, "lr": 1e-2},
        {"name": "embed", "task": "embed", "strategy": "finetune", "metric_loss": "supcon",
         "m_per_class": 4, "epochs": 4, "lr": 3e-3},
    ],
    "distill": [
        {"name": "teacher", "strategy": "scratch", "epochs": 4, "lr": 1e-2},
        {"name": "student", "init": "scratch", "strategy": "scratch", "teacher": "teacher",
         "distill": {"alpha": 0.5}, "epochs": 4, "lr": 1e-2},
    ],
}


def write_pipeline(path: Path, kind: str, data: Path) -> Path:
    stages = [{**s, "data": str(data)} for s in PIPELINES[kind]]
    path.write_text(json.dumps({"defaults": COMMON, "stages": stages}, indent=1))
    return path


def command(pipeline: Path, out: Path, resume: bool = False) -> list[str]:
    return [sys.executable, "-m", "stagewise", "run", str(pipeline), "--out", str(out), "--quiet",
            *(["--resume"] if resume else [])]


def run_to_end(pipeline: Path, out: Path, resume: bool = False) -> tuple[int, float, str]:
    start = time.perf_counter()
    proc = subprocess.run(command(pipeline, out, resume), env=ENV, capture_output=True, text=True)
    return proc.returncode, time.perf_counter() - start, proc.stderr[-2000:]


def timed_reference(pipeline: Path, out: Path) -> tuple[int, float, float, str]:
    """Run to the end; (exit code, seconds of start-up until the manifest exists, seconds of
    training after it, stderr)."""
    start = time.perf_counter()
    proc = subprocess.Popen(command(pipeline, out), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    started = None
    while proc.poll() is None:
        if started is None and (out / "pipeline.json").is_file():
            started = time.perf_counter() - start
        time.sleep(0.05)
    total = time.perf_counter() - start
    started = started if started is not None else total
    return proc.returncode, started, total - started, (proc.stderr.read() if proc.stderr else "")[-2000:]


def wait_for_start(proc: subprocess.Popen, out: Path, limit: float = 300.0) -> bool:
    """Wait until the run's manifest exists (start-up is over); False if the run ended first."""
    deadline = time.perf_counter() + limit
    while not (out / "pipeline.json").is_file():
        if proc.poll() is not None or time.perf_counter() > deadline:
            return False
        time.sleep(0.02)
    return True


def weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {str(p.relative_to(run)): load_file(str(p)) for p in sorted(run.rglob("*.safetensors"))}


def compare(reference: Path, run: Path) -> list[str]:
    """The files (and tensors) that differ from the reference; [] when all are identical."""
    ref, got = weights(reference), weights(run)
    problems = [f"missing {name}" for name in ref if name not in got]
    problems += [f"extra {name}" for name in got if name not in ref]
    for name in ref.keys() & got.keys():
        a, b = ref[name], got[name]
        bad = sorted(k for k in a.keys() | b.keys() if k not in a or k not in b or not torch.equal(a[k], b[k]))
        if bad:
            problems.append(f"{name}: {len(bad)} tensor(s) differ, e.g. {bad[0]}")
    return problems


def where_killed(run: Path) -> str:
    """What the killed run had reached: the running stage and its checkpoint position."""
    manifest = run / "pipeline.json"
    if not manifest.is_file():
        return "start-up (no manifest)"
    try:
        stages = json.loads(manifest.read_text())["stages"]
    except (OSError, ValueError, KeyError):
        return "manifest unreadable"
    running = [n for n, s in stages.items() if s.get("status") != "done"]
    if not running:
        return "all stages done"
    name = running[0]
    state = run / "stages" / name / "last" / "state.pt"
    if not state.is_file():
        return f"{name}: no checkpoint"
    saved = torch.load(state, map_location="cpu", weights_only=True)
    return f"{name}: epoch {saved['epoch']} batch {saved['batches_done']}"


def trial(i: int, kind: str, pipeline: Path, reference: Path, delay: float, in_startup: bool,
          work: Path) -> dict:
    """Kill `delay` s after start (`in_startup`), else `delay` s after the manifest appeared."""
    out = work / f"trial{i:03d}"
    proc = subprocess.Popen(command(pipeline, out), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        if not in_startup:
            wait_for_start(proc, out)
        proc.wait(timeout=delay)
        killed = False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed = True
    reached = where_killed(out) if killed else "finished before the kill"
    rc, seconds, err = run_to_end(pipeline, out, resume=True)
    problems = compare(reference, out) if rc == 0 else [f"resume exited {rc}: {err.strip()[-300:]}"]
    return {"trial": i, "kind": kind, "kill_at": delay, "killed": killed, "reached": reached,
            "resume_rc": rc, "resume_s": seconds, "identical": not problems, "problems": problems}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default="embed,distill", help="pipelines to alternate between")
    parser.add_argument("--keep", type=Path, help="keep the runs in this folder (default: a temp dir)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="sigkill_"))
    work.mkdir(parents=True, exist_ok=True)
    data = make_identity_folder(work / "data", identities=10, views=8)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    references, startup, training = {}, {}, {}
    for kind in kinds:
        pipeline = write_pipeline(work / f"{kind}.json", kind, data)
        rc, startup[kind], training[kind], err = timed_reference(pipeline, work / f"reference_{kind}")
        if rc != 0:
            print(f"reference run of {kind} failed ({rc}):\n{err}", file=sys.stderr)
            return 1
        references[kind] = work / f"reference_{kind}"
        print(f"reference {kind}: start-up {startup[kind]:.1f} s, then {training[kind]:.1f} s", flush=True)
    rng = random.Random(args.seed)
    results = []
    print(f"{'trial':>5} {'kind':8} {'kill at':>14}  {'reached':32} {'resume':>7}  identical")
    for i in range(args.trials):
        kind = kinds[i % len(kinds)]
        # One kill in ten during start-up (before the manifest), the rest while stages train.
        in_startup = rng.random() < 0.1
        delay = rng.uniform(0.2, startup[kind]) if in_startup else rng.uniform(0.0, 0.9 * training[kind])
        r = trial(i, kind, work / f"{kind}.json", references[kind], delay, in_startup, work)
        results.append(r)
        when = f"{delay:.1f}s" + (" (start)" if in_startup else " (train)")
        print(f"{i:>5} {kind:8} {when:>14}  {r['reached'][:32]:32} {r['resume_rc']:>7}  "
              f"{'yes' if r['identical'] else 'NO: ' + '; '.join(r['problems'])[:200]}", flush=True)
        if not args.keep and r["identical"]:
            shutil.rmtree(work / f"trial{i:03d}", ignore_errors=True)
    same = sum(r["identical"] for r in results)
    killed = sum(r["killed"] for r in results)
    print(f"\n{same}/{len(results)} identical ({killed} killed mid-run, "
          f"{len(results) - killed} finished before the kill); runs in {work}")
    return 0 if same == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())

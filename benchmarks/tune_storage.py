"""Optuna storages under concurrent workers: SQLite file against the journal file.

N processes share one study and each runs K trials as `stagewise tune` does (sample, write
parameters and a few intermediate values, finish), with no training in between, so the storage
is as contended as it gets. Prints, per storage, the trials recorded against expected, the
workers that failed (and their first error) and the wall time relative to the journal's.

    python benchmarks/tune_storage.py --workers 8 --trials 40
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from pathlib import Path


def _storage(kind: str, path: Path):  # noqa: ANN202
    import optuna

    if kind == "sqlite":
        return f"sqlite:///{path}/study.db"
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(path / "study.journal")))


def _worker(kind: str, path: str, trials: int, errors: mp.Queue) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        study = optuna.load_study(study_name="bench", storage=_storage(kind, Path(path)))
        for _ in range(trials):
            t = study.ask()
            x = t.suggest_float("lr", 1e-4, 1e-2, log=True)
            t.suggest_categorical("strategy", ["probe", "finetune"])
            for step in range(1, 4):
                t.report(x * step, step)
            study.tell(t, x)
    except Exception as exc:  # noqa: BLE001 - a benchmark counts every failure
        errors.put(f"{type(exc).__name__}: {str(exc)[:200]}")


def run(kind: str, workers: int, trials: int) -> tuple[int, list[str], float]:
    import optuna

    with tempfile.TemporaryDirectory() as tmp:
        optuna.create_study(study_name="bench", storage=_storage(kind, Path(tmp)))
        errors: mp.Queue = mp.Queue()
        procs = [mp.Process(target=_worker, args=(kind, tmp, trials, errors)) for _ in range(workers)]
        start = time.perf_counter()
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        seconds = time.perf_counter() - start
        found = [errors.get() for _ in range(errors.qsize())]
        done = len(optuna.load_study(study_name="bench", storage=_storage(kind, Path(tmp))).trials)
    return done, found, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--trials", type=int, default=40)
    args = ap.parse_args()
    results = {kind: run(kind, args.workers, args.trials) for kind in ("journal", "sqlite")}
    base = results["journal"][2]
    for kind, (done, errors, seconds) in results.items():
        print(f"{kind}: {done}/{args.workers * args.trials} trials recorded, {len(errors)} worker(s) "
              f"failed{(': ' + errors[0]) if errors else ''}; time x{seconds / base:.2f} of journal")


if __name__ == "__main__":
    main()

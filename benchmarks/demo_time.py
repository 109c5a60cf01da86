"""How long the default job takes (`stagewise run` with no arguments: generate the curriculum,
run the 3-stage demo with its baselines), from a clean cache, in a fresh process.

    python benchmarks/demo_time.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "STAGEWISE_CACHE": str(Path(tmp) / "cache")}
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "stagewise", "run", "--quiet",
                               "--out", str(Path(tmp) / "demo")], env=env, cwd=tmp)
        seconds = time.perf_counter() - start
    print(f"demo: exit {proc.returncode}, {seconds:.1f}s on {os.cpu_count()} cores "
          "(the README promises about a minute and a half on an idle 2-core machine)")


if __name__ == "__main__":
    main()

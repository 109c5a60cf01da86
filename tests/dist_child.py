"""What torchrun starts in the multi-process tests: stagewise's CLI, except that on every rank
but 0 replacing a file under $STAGEWISE_TEST_OUT fails loudly. Every run-folder write ends in an
atomic os.replace/os.rename (io.py), so a rank other than 0 that writes anything is caught."""

import os
import sys

RANK = os.environ.get("RANK", "0")


def _guard(real):
    def replace(src, dst, *args, **kwargs):
        if str(dst).startswith(os.environ["STAGEWISE_TEST_OUT"]):
            raise RuntimeError(f"rank {RANK} wrote {dst}: only rank 0 may write the run folder")
        return real(src, dst, *args, **kwargs)

    return replace


if RANK != "0":
    os.replace, os.rename = _guard(os.replace), _guard(os.rename)

from stagewise.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))

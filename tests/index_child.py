"""Run by tests/test_saved_index.py under torchrun: every rank indexes the same folder at once.

Each rank reports whether it built the index or read it back, and a digest of its samples; rank 0
writes all ranks' reports (gathered over gloo) to $STAGEWISE_TEST_OUT.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch.distributed as dist

from stagewise.data.layouts import index_dataset

dist.init_process_group("gloo")
done = index_dataset(Path(sys.argv[1]))
digest = hashlib.sha256()
for name, s in sorted(done.index.splits.items()):
    digest.update(name.encode() + "\n".join(map(str, s.paths or [])).encode() + bytes(list(s.labels)))
mine = {"rank": dist.get_rank(), "cached": done.cached, "files": done.files,
        "digest": digest.hexdigest(), "cache": str(done.path)}
everyone: list = [None] * dist.get_world_size()
dist.all_gather_object(everyone, mine)
if dist.get_rank() == 0:
    Path(os.environ["STAGEWISE_TEST_OUT"]).write_text(json.dumps(everyone))
dist.destroy_process_group()

"""The content of a folder tree as {relative path: sha256} (symlinks followed), so a test can show
that a refused input changed no file: hash before, act, compare."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def tree_hashes(*roots: str | os.PathLike) -> dict[str, str]:
    out = {}
    for root in map(Path, roots):
        for dirpath, _, files in os.walk(root, followlinks=True):
            for name in files:
                p = Path(dirpath) / name
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                out[str(p)] = h.hexdigest()
    return out

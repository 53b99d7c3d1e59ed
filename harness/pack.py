"""The pack imported as the package ``videoedit`` (its pure-torch modules need no ComfyUI).

ComfyUI imports the pack under a path-derived module name; the harness and the tests use this
stable name instead, e.g. ``from videoedit.nodes.atomic_file import atomic_path`` after
``import_pack()``. Importing the package runs only its ``__init__.py``, which imports nothing
from ComfyUI.
"""
from __future__ import annotations

import importlib.util
import sys

from .embedded import REPO_ROOT


def import_pack():
    if "videoedit" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "videoedit", REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["videoedit"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["videoedit"]

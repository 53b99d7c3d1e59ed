"""The pack imported as the package ``videoedit`` (its pure-torch modules need no ComfyUI).

ComfyUI imports the pack under a path-derived module name; the harness and the tests use this
stable name instead, e.g. ``from videoedit.nodes.core.atomic_file import atomic_path`` after
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


def pack_module(node_cls, name: str):
    """The module ``nodes.<name>`` (e.g. "host.training_ui") of the copy of the pack that
    ``node_cls`` belongs to: ComfyUI imports the pack under its own module name, and a test that
    patches or reads the running pack must reach that copy, not ``videoedit``."""
    import importlib
    pkg = node_cls.__module__.rsplit(".nodes.", 1)[0]
    return importlib.import_module(f"{pkg}.nodes.{name}")


def running_pack_module(name: str):
    """The module ``nodes.<name>`` of the pack as ComfyUI loaded it (after ``boot_in_process``):
    the headless trainers and benches use the classes the running nodes use."""
    import importlib
    registry = next((m for m in sys.modules if m.endswith(".nodes.registry")), None)
    if registry is None:
        raise RuntimeError("the pack was not loaded by ComfyUI")
    return importlib.import_module(registry[: -len("registry")] + name)

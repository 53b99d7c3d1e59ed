"""``./videoedit eval`` end to end on the real server with the random-weight fixtures: the TokenFlow
template as shipped and per-frame (propagation and extended attention off) on the sample clip (1 step),
with the sample clip's known pan as the flow; the table, results.json, the chart and both videos.
A CLIP vision file with SD1.5's text encoder is refused and reported as skipped, not scored.

What this cannot show: which method is more consistent. Random weights output noise; the rows
prove the instrument and the plumbing, not the paper's claim (that needs real SD 2.1 weights)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from harness.sample_clip import panned_frames, read_video, write_mp4
from harness.eval import table

ROOT = Path(__file__).resolve().parent.parent


def _eval(args, base, timeout=900):
    env = {k: v for k, v in os.environ.items() if k not in ("VIDEOEDIT_BASE", "VIDEOEDIT_EXTRA_MODEL_PATHS")}
    env["TORCH_HOME"] = str(base.parent / "torch_home")   # an empty torch hub cache: no RAFT weights here
    return subprocess.run([sys.executable, "-m", "harness.eval", "--base", str(base), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def eval_base(tmp_path_factory):
    from harness import embedded, fixtures
    base = embedded.prepare_base_dir(tmp_path_factory.mktemp("eval") / "base")
    fixtures.install_all(base)
    # A refusal probe: the three tensors ComfyUI's loader reads to build a ViT-L/14 vision model. The
    # template's model is SD2.1 base (OpenCLIP ViT-H/14 text encoder): not the same CLIP as ViT-L, so
    # the CLIP Score node refuses the pair from the shapes before any image is encoded (it never runs).
    (base / "models" / "clip_vision").mkdir(parents=True, exist_ok=True)
    save_file({"vision_model.encoder.layers.22.layer_norm1.weight": torch.ones(1024),
               "vision_model.encoder.layers.0.layer_norm1.weight": torch.ones(1024),
               "vision_model.embeddings.position_embedding.weight": torch.zeros(257, 1024)},
              str(base / "models" / "clip_vision" / "refusal_probe_vit_l.safetensors"))
    return base


@pytest.fixture(scope="module")
def clip_mp4(tmp_path_factory):
    frames, _ = panned_frames(8, 64, shift=(2, 1))
    return write_mp4(frames, tmp_path_factory.mktemp("clip") / "sample.mp4", fps=8)


def test_table_prints_the_papers_columns():
    rows = [{"method": "TokenFlow", "warp_error": 0.003, "clip_score": 0.33, "clip_frame": None}]
    text = table(rows)
    assert "warp error (x1e-3)" in text and "CLIP score" in text
    assert "3.000" in text and "0.3300" in text and text.rstrip().endswith("-")


@pytest.mark.slow
def test_compare_tokenflow_with_per_frame_end_to_end(eval_base, clip_mp4, tmp_path):
    out = tmp_path / "results"
    r = _eval(["--compare", "tokenflow_pnp_edit", "--with", "per-frame", "--video", str(clip_mp4), "--pan", "2", "1",
               "--clip-vision", "refusal_probe_vit_l.safetensors", "--out", str(out),
               "--set", "VideoEditTokenFlowDDIMInverter.steps=1", "--set", "VideoEditTokenFlowDDIMInverter.refine_iters=0"],
              eval_base)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    methods = [row["method"] for row in report["rows"]]
    assert methods == ["source clip (no edit)", "TokenFlow (tokenflow_pnp_edit)",
                       "per-frame PnP (no propagation, no extended attention)"]
    assert report["variants"] == {"per-frame": {"propagation": False, "extended_attention": False}}
    assert report["prompt"] == "a marble statue of an astronaut, museum photo"   # the template's edit prompt
    source, tokenflow, per_frame = report["rows"]
    for row in report["rows"]:
        assert len(row["warp_error_per_pair"]) == 7 and row["flow"].startswith("known pan")
        assert row["clip_score"] is None
    print("warp error x1e-3:", {row["method"]: round(row["warp_error"] * 1e3, 3) for row in report["rows"]})
    # the decoded h264 sample clip against its own exact pan: only compression noise is left
    assert source["warp_error"] < 1e-3
    assert tokenflow["warp_error_per_pair"] != per_frame["warp_error_per_pair"]   # the variant really ran
    assert "are not two towers of one CLIP model" in report["clip_skipped"]
    assert "text encoder (OpenCLIP ViT-H/14 (LAION-2B))" in report["clip_skipped"]
    assert "CLIP score: " in r.stdout and "TokenFlow (tokenflow_pnp_edit)" in r.stdout
    for name in ("tokenflow.mp4", "per_frame.mp4"):
        frames, _ = read_video(out / name)
        assert frames.shape == (8, 64, 64, 3)
    from PIL import Image
    with Image.open(out / "warp_error.png") as img:
        assert img.format == "PNG" and img.size[0] > 300
    assert not list(out.glob(".*")), "a temporary file was left behind"
    assert not list((eval_base / "input").glob("videoedit_eval_*")), "the copied input was left behind"


def test_eval_of_a_file_against_its_source(eval_base, clip_mp4, tmp_path):
    """EDITED --source SOURCE: a flickering copy of the clip scores (2d)^2 above the clip itself."""
    frames, _ = read_video(clip_mp4)
    flicker = (frames + 0.1 * torch.tensor([(-1.0) ** i for i in range(8)]).view(8, 1, 1, 1)).clamp(0, 1)
    edited = write_mp4(flicker, tmp_path / "flicker.mp4", fps=8)
    out = tmp_path / "results"
    r = _eval([str(edited), "--source", str(clip_mp4), "--pan", "2", "1", "--out", str(out)], eval_base, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    source, edited_row = report["rows"]
    print(f"source {source['warp_error']:.2e}, flickering copy {edited_row['warp_error']:.2e}")
    assert edited_row["warp_error"] > 10 * source["warp_error"] and edited_row["warp_error"] > 0.02
    assert "not measured" in report["clip_skipped"]


def test_without_weights_or_pan_it_stops_before_running(eval_base, clip_mp4, tmp_path):
    r = _eval(["--compare", "tokenflow_pnp_edit", "--with", "per-frame", "--video", str(clip_mp4),
               "--out", str(tmp_path / "o")], eval_base, timeout=300)
    assert r.returncode != 0
    assert "raft_large_C_T_SKHT_V2-ff5fadd5.pth" in r.stderr and "--pan DX DY" in r.stderr
    assert "running" not in r.stdout          # no node ran: the template was never queued
    assert not (tmp_path / "o").exists()


def test_bad_arguments_are_named(eval_base, clip_mp4, tmp_path):
    r = _eval(["--compare", "tokenflow_pnp_edit", "--with", "no-such", "--video", str(clip_mp4), "--pan", "2", "1"],
              eval_base, timeout=120)
    assert r.returncode != 0 and "--with no-such: known variants are per-frame, even-keyframes" in r.stderr
    r = _eval([str(clip_mp4)], eval_base, timeout=60)
    assert r.returncode != 0 and "EDITED --source SOURCE" in r.stderr

"""Five prompts queued at once on the real server, one of them bad: the bad one fails with the
node's message and writes nothing, the other four run to the end with the right frames, and the
server keeps serving. The cheapest shipped template (taesd_video_roundtrip) on the sample clip."""
from __future__ import annotations

import copy
import io
import json
import uuid
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from harness.workflow_api import to_api

ROOT = Path(__file__).resolve().parent.parent
CHUNKS = (1, 2, 3, 4, 16)  # per prompt, so no prompt is served from another's cached outputs
BAD = 2


def _node(prompt: dict, class_type: str) -> str:
    return next(nid for nid, n in prompt.items() if n["class_type"] == class_type)


def _prompts(object_info: dict, clip_name: str, tag: str) -> list[dict]:
    template = to_api(json.loads((ROOT / "example_workflows" / "taesd_video_roundtrip.json").read_text()), object_info)
    template[_node(template, "LoadVideo")]["inputs"]["file"] = clip_name
    prompts = []
    for i, chunk in enumerate(CHUNKS):
        p = copy.deepcopy(template)
        enc, dec = _node(p, "VideoEditTAESDEncode"), _node(p, "VideoEditTAESDDecode")
        p[enc]["inputs"]["frames_per_chunk"] = p[dec]["inputs"]["frames_per_chunk"] = chunk
        p[_node(p, "SaveVideo")]["inputs"]["filename_prefix"] = f"videoedit/queue_{tag}_{i}"
        p["png"] = {"class_type": "SaveImage", "inputs": {"images": [dec, 0], "filename_prefix": f"videoedit/queue_{tag}_{i}_png"}}
        if i == BAD:  # a NaN latent from a core node: passes ComfyUI's validation (0.3.75 and current)
            p["nan"] = {"class_type": "LatentMultiply", "inputs": {"samples": [enc, 0], "multiplier": float("nan")}}
            p[dec]["inputs"]["samples"] = ["nan", 0]
        prompts.append(p)
    return prompts


def _expected_frames(comfy, clip_path) -> np.ndarray:
    """The round trip computed here, in-process: core's video reader, the pack's TAESD nodes (the
    same random fixture files as the server's), SaveImage's quantisation."""
    from comfy_api.input_impl import VideoFromFile
    images = VideoFromFile(str(clip_path)).get_components().images
    enc, dec = comfy.node_classes["VideoEditTAESDEncode"], comfy.node_classes["VideoEditTAESDDecode"]
    with torch.inference_mode():  # as the server runs nodes
        out = dec.execute(enc.execute(images, "taesd", 16).result[0], "taesd", 16).result[0]
    return np.clip(255.0 * out.cpu().numpy(), 0, 255).astype(np.uint8)


def test_five_prompts_at_once_one_bad(comfy, comfy_server, object_info, sample_clip):
    tag = uuid.uuid4().hex[:8]
    out_dir = comfy_server.base / "output" / "videoedit"
    client = uuid.uuid4().hex
    comfy_server.free()
    ids = [comfy_server.queue_prompt(p, client) for p in _prompts(object_info, sample_clip.name, tag)]
    for pid in ids:
        comfy_server.wait(pid, client, timeout=300)
    history = [comfy_server.history(pid) for pid in ids]

    bad = history[BAD]
    assert bad["status"]["status_str"] == "error"
    err = next(d for e, d in bad["status"]["messages"] if e == "execution_error")
    assert err["node_type"] == "VideoEditTAESDDecode"
    assert err["exception_message"].startswith("samples: frame 0 of 8 holds NaN or infinite values")
    assert "fix that node or its settings" in err["exception_message"]
    assert not list(out_dir.glob(f"queue_{tag}_{BAD}*")), "the failed prompt wrote a file"

    frames = []
    for i, h in enumerate(history):
        if i == BAD:
            continue
        assert h["status"]["status_str"] == "success", (i, h["status"])
        pngs = [f for node in h["outputs"].values() for f in node.get("images", []) if f["filename"].endswith(".png")]
        assert len(pngs) == sample_clip.num_frames
        frames.append(np.stack([np.asarray(Image.open(io.BytesIO(comfy_server.view(**f)))) for f in pngs]))
        assert len(list(out_dir.glob(f"queue_{tag}_{i}_*.mp4"))) == 1
    assert frames[0].shape == (sample_clip.num_frames, sample_clip.height, sample_clip.width, 3)
    for other in frames[1:]:  # chunk sizes 1..16 give the same frames, prompt after prompt
        assert np.array_equal(other, frames[0])
    # and they are the round trip of the clip (random TAESD weights: mostly dark, not a picture)
    diff = np.abs(frames[0].astype(int) - _expected_frames(comfy, sample_clip.path).astype(int))
    assert diff.max() <= 1 and (frames[0] > 0).any()
    assert comfy_server.alive() and comfy_server.proc.poll() is None

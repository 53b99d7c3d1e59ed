"""Benchmark: EVE plug-and-play edit (Adapter Stacker: SD1.5 + ControlNet + AnimateDiff motion
module, 8-frame windows overlapping by 4, first-frame anchor) vs per-frame ControlNet editing
with core nodes (ControlNetApplyAdvanced + KSampler on the frame batch), at 16 and 64 frames.

Peak RAM of several sizes needs one process per size (the high-water mark only rises), so every
(method, frames) cell runs in its own worker process: ``python -m harness.bench_eve --worker``.
A worker loads the full-size random-weight models, runs a 1-frame warm-up, resets the kernel's
RSS high-water mark (/proc/self/clear_refs), times ``repeats`` edits (median) and reports the
peak RSS above the RSS it had at the reset: the memory the edit itself needs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys

import torch

from .embedded import REPO_ROOT
from .measure import median_seconds, print_table

STEPS, CFG = 1, 1.0  # one denoising step, no CFG batch: per-frame cost of one UNet(+ControlNet) pass


def _vm(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _worker(mode: str, frames: int, size: int, repeats: int) -> dict:
    from . import fixtures
    from .bench import BENCH_BASE
    from .embedded import boot_in_process, use_comfy
    use_comfy(BENCH_BASE)
    models = BENCH_BASE / "models"
    fixtures._link(fixtures.sd15_checkpoint(), models / "checkpoints")
    fixtures._link(fixtures.sd15_controlnet(), models / "controlnet")
    fixtures._link(fixtures.animatediff_motion_module("v2"), models / "animatediff_models")
    comfy = boot_in_process(BENCH_BASE)
    nc = comfy.node_classes
    model, clip, _ = nc["CheckpointLoaderSimple"]().load_checkpoint(fixtures.sd15_checkpoint().name)[:3]
    cnet = nc["ControlNetLoader"]().load_controlnet(fixtures.sd15_controlnet().name)[0]
    adapter = nc["VideoEditEVELoadVideoAdapter"].execute(fixtures.animatediff_motion_module("v2").name).result[0]
    enc = nc["CLIPTextEncode"]()
    pos, neg = enc.encode(clip, "make it a snowy winter scene")[0], enc.encode(clip, "")[0]
    g = torch.Generator().manual_seed(0)

    def edit(n):
        images = torch.rand(n, size, size, 3, generator=g)
        latent = {"samples": torch.zeros(n, 4, size // 8, size // 8)}
        if mode == "eve":
            m, p, q = nc["VideoEditEVEAdapterStacker"].execute(
                model, adapter, cnet, images, pos, neg, 1.0, 8, 4, True, "backbone default", "none", 1.0).result
        else:
            m = model
            p, q = nc["ControlNetApplyAdvanced"]().apply_controlnet(pos, neg, cnet, images, 1.0, 0.0, 1.0)
        return nc["KSampler"]().sample(m, 1, STEPS, CFG, "euler", "normal", p, q, latent, denoise=1.0)[0]

    with torch.inference_mode():
        edit(1)  # warm-up: models loaded, kernels picked
        base = _vm("VmRSS")
        _reset_peak()
        seconds = median_seconds(lambda: edit(frames), repeats)
        peak = _vm("VmHWM")
    inputs = frames * (size * size * 3 + 3 * 4 * (size // 8) ** 2) * 4  # images, latent, noise, output
    return {"mode": mode, "frames": frames, "seconds": seconds, "extra_bytes": peak - base, "input_bytes": inputs}


def _run_worker(mode: str, frames: int, size: int, repeats: int) -> dict:
    cmd = [sys.executable, "-m", "harness.bench_eve", "--worker", "--mode", mode, "--frames", str(frames),
           "--size", str(size), "--repeats", str(repeats)]
    out = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, env=os.environ.copy())
    if out.returncode != 0:
        raise RuntimeError(f"bench worker {mode}/{frames} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_eve(comfy, repeats: int = 3, size: int = 256, lengths=(16, 64)) -> str:
    """Wall time and peak RAM per frame, EVE plug-and-play vs core per-frame ControlNet."""
    res = {(m, n): _run_worker(m, n, size, repeats) for m in ("core", "eve") for n in lengths}
    mib = 1 / 2**20
    rows = []
    for m, label in (("core", "core per-frame ControlNet"), ("eve", "EVE stacker (windows 8/4, anchor)")):
        for n in lengths:
            r = res[(m, n)]
            rows.append([label, n, f"{r['seconds']:.1f}", f"{r['seconds'] / n:.2f}",
                         f"{r['extra_bytes'] * mib:.0f}", f"{r['extra_bytes'] * mib / n:.1f}",
                         f"{(r['extra_bytes'] - r['input_bytes']) * mib:.0f}"])
    lo, hi = lengths[0], lengths[-1]
    ratio = {m: (res[(m, hi)]["extra_bytes"] - res[(m, hi)]["input_bytes"]) /
             max(1, res[(m, lo)]["extra_bytes"] - res[(m, lo)]["input_bytes"]) for m in ("core", "eve")}
    rows.append([f"peak beyond inputs, {hi} vs {lo} frames", "", "", "", "",
                 f"core {ratio['core']:.2f}x", f"EVE {ratio['eve']:.2f}x (bar 1.25x)"])
    return print_table(
        f"EVE plug-and-play vs core per-frame ControlNet, SD1.5 + ControlNet (+ motion module), {size}x{size}, "
        f"{STEPS} step, cfg {CFG}, median of {repeats} (torch {torch.__version__}, "
        f"{os.environ.get('OMP_NUM_THREADS', torch.get_num_threads())} threads, {platform.machine()})",
        ["method", "frames", "s/edit", "s/frame", "peak RAM over loaded models, MiB", "MiB/frame",
         "same minus inputs, MiB"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--mode", choices=["core", "eve"])
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(_worker(a.mode, a.frames, a.size, a.repeats)), flush=True)
    else:
        bench_eve(None, a.repeats, a.size)


if __name__ == "__main__":
    main()

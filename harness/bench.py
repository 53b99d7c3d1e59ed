"""Benchmarks: ``./videoedit bench`` prints one table per family. Numbers never gate tests.

Every comparison runs both sides in this one process, on the same full-size random-weight
architecture, with the same allocator settings (./videoedit bench sets
MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000, see ../shared/MEASURING.md), and
reports ratios; FLOPs come from torch's FlopCounterMode with CPU attention registered.
"""
from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import torch

from . import fixtures
from .embedded import REPO_ROOT, boot_in_process, use_comfy
from .measure import count_flops, fmt_flops, median_seconds, print_table

BENCH_BASE = REPO_ROOT / ".comfy" / "bench-base"


def _setup():
    use_comfy(BENCH_BASE)
    fixtures.install_taesd(BENCH_BASE)
    fixtures._link(fixtures.sd15_vae(), BENCH_BASE / "models" / "vae")
    return boot_in_process(BENCH_BASE)


def bench_taesd(comfy, size: int = 256, frames: int = 8, repeats: int = 3) -> str:
    """TAESD Encode/Decode (ours) vs core VAELoader(SD VAE) + VAEEncode/VAEDecode."""
    nc = comfy.node_classes
    sd_vae = nc["VAELoader"]().load_vae(fixtures.sd15_vae().name)[0]
    enc, dec = nc["VideoEditTAESDEncode"], nc["VideoEditTAESDDecode"]
    g = torch.Generator().manual_seed(0)
    images = torch.rand(frames, size, size, 3, generator=g)
    latent = {"samples": torch.randn(frames, 4, size // 8, size // 8, generator=g)}
    jobs = {
        "decode": (lambda x: nc["VAEDecode"]().decode(sd_vae, x)[0],
                   lambda x: dec.execute(x, "taesd", 16).result[0], latent,
                   lambda x, n: {"samples": x["samples"][:n]}),
        "encode": (lambda x: nc["VAEEncode"]().encode(sd_vae, x)[0],
                   lambda x: enc.execute(x, "taesd", 16).result[0], images,
                   lambda x, n: x[:n]),
    }
    rows = []
    with torch.inference_mode():
        for op, (core_fn, ours_fn, batch, first) in jobs.items():
            core_f = count_flops(core_fn, first(batch, 1))[0]
            ours_f = count_flops(ours_fn, first(batch, 1))[0]
            core_s = median_seconds(lambda: core_fn(batch), repeats, warmup=1)
            ours_s = median_seconds(lambda: ours_fn(batch), repeats, warmup=1)
            rows.append([op, fmt_flops(core_f), fmt_flops(ours_f), f"{100 * (1 - ours_f / core_f):.1f}%",
                         f"{core_s:.2f}", f"{ours_s:.2f}", f"{core_s / ours_s:.1f}x"])
    return print_table(
        f"TAESD vs SD VAE, {size}x{size}, batch of {frames} frames, median of {repeats} "
        f"(torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()})",
        ["op", "SD VAE FLOPs/frame", "TAESD FLOPs/frame", "FLOPs saved", "SD VAE s/batch",
         "TAESD s/batch", "speed-up"], rows)


BENCHES = {"taesd": bench_taesd}
from .bench_eve import bench_eve  # noqa: E402  (EVE plug-and-play: one worker process per size)
BENCHES["eve"] = bench_eve
from .bench_tokenflow import bench_tokenflow  # noqa: E402  (TokenFlow: FLOPs, round trip, time, RAM workers)
BENCHES["tokenflow"] = bench_tokenflow
from .bench_movie import bench_movie  # noqa: E402  (MoViE fast path vs core IP2P)
BENCHES["movie"] = bench_movie
from .bench_movie_onestep import bench_movie_onestep  # noqa: E402  (MoViE one-step student vs core IP2P)
BENCHES["movie_onestep"] = bench_movie_onestep
from .bench_eve_align import bench_eve_align  # noqa: E402  (EVE LoRA alignment: tiny s/iteration, full-size FLOPs)
BENCHES["eve_align"] = bench_eve_align


def main() -> None:
    ap = argparse.ArgumentParser(description="Print the benchmark tables.")
    ap.add_argument("--only", choices=list(BENCHES), action="append", help="run only these benchmarks")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    ap.add_argument("--out", type=Path, help="also write the tables (markdown) to this file")
    a = ap.parse_args()
    print(f"allocator: MALLOC_MMAP_MAX_={os.environ.get('MALLOC_MMAP_MAX_', 'default')} "
          f"MALLOC_TRIM_THRESHOLD_={os.environ.get('MALLOC_TRIM_THRESHOLD_', 'default')}", flush=True)
    comfy = _setup()
    tables = [BENCHES[name](comfy, repeats=a.repeats) for name in (a.only or BENCHES)]
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text("\n".join(tables) + "\n")


if __name__ == "__main__":
    main()

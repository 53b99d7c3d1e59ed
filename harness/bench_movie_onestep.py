"""Benchmark: the MoViE one-step path (Stage 4 student) vs core InstructPix2Pix, on the full-size
random-weight IP2P + guidance adapter + one-step student fixtures.

FLOPs per frame at 480x480 (torch FlopCounterMode, CPU attention counted): one student UNet pass
of a non-anchor frame with the middle-frame anchor (bench_movie._unet_pass_flops), without and
with the highest-resolution attention removed (Mobile-Pix2Pix), plus TAESD encode + decode; the
core workflow (20 steps x 3 passes + SD VAE) for reference. Bar (issue 5): <= 0.7 TFLOPs/frame
with the attention removed (MoViE Table 1: 0.76).
Wall time per frame at 256x256 on this CPU, both in this one run: the core IP2P workflow (20
steps, 3 passes, SD VAE; bench_movie's pipeline) vs the one-step path (TAESD Encode, student +
Cross-Frame Attention, One-Step Sampler at 1 step, TAESD Decode). Bar: >= 30x faster.
"""
from __future__ import annotations

import platform

import torch

from .bench_movie import _models, _pipelines, _unet_pass_flops, _vae_flops
from .measure import fmt_flops, median_seconds, print_table
from .onestep_fixture import install as install_student, movie_onestep_student


def _student(comfy, teacher):
    install_student(comfy.base)
    return comfy.node_classes["VideoEditLoadOneStepStudent"].execute(teacher, movie_onestep_student().name).result[0]


def bench_movie_onestep(comfy, repeats: int = 3, flop_size: int = 480, time_size: int = 256, frames: int = 2,
                        core_steps: int = 20, wall_time: bool = True) -> str:
    nc = comfy.node_classes
    model, teacher, sd_vae, taesd, enc = _models(comfy)
    student = _student(comfy, teacher)
    mobile = nc["VideoEditMobilePix2Pix"].execute(student).result[0]
    with torch.inference_mode():
        core_pass = _unet_pass_flops(comfy, model, flop_size, False)
        full = _unet_pass_flops(comfy, student, flop_size, True)
        trimmed = _unet_pass_flops(comfy, mobile, flop_size, True)
        vae = _vae_flops(sd_vae, flop_size)
        tae = _vae_flops(taesd, flop_size)
        core_f = core_steps * 3 * core_pass + vae
        rows = [[f"core IP2P ({core_steps} steps x 3 passes, SD VAE)", fmt_flops(core_steps * 3 * core_pass), fmt_flops(vae),
                 fmt_flops(core_f), "1.0x"]]
        for name, unet in (("one-step student + anchor + TAESD", full),
                           ("same, highest-res attention removed (Mobile-Pix2Pix)", trimmed)):
            rows.append([name, fmt_flops(unet), fmt_flops(tae), f"{(unet + tae) / 1e12:.3f} TFLOPs",
                         f"{core_f / (unet + tae):.0f}x"])
        t1 = print_table(
            f"MoViE one-step FLOPs per frame at {flop_size}x{flop_size}, full-size IP2P UNet (Mobile-Pix2Pix saves "
            f"{100 * (1 - trimmed / full):.1f}% of the UNet pass; bar: <= 0.7 TFLOPs/frame with it, MoViE Table 1: 0.76)",
            ["pipeline", "UNet FLOPs/frame", "autoencoder enc+dec", "total/frame", "core / this"], rows)
        if not wall_time:
            return t1

        core = _pipelines(comfy, model, teacher, sd_vae, taesd, enc, frames, time_size, core_steps)[0]
        pos = enc("make it look like a watercolor painting")
        images = torch.rand(frames, time_size, time_size, 3, generator=torch.Generator().manual_seed(0))

        def one_step():
            m = nc["VideoEditCrossFrameAttention"].execute(student, "middle", 1).result[0]
            src = nc["VideoEditTAESDEncode"].execute(images, "taesd", 16).result[0]
            out = nc["VideoEditOneStepSampler"].execute(m, pos, src, 1.5, 7.5, 1, 0).result[0]
            return nc["VideoEditTAESDDecode"].execute(out, "taesd", 16).result[0]

        fast = median_seconds(one_step, repeats, warmup=1) / frames
        slow = median_seconds(core, 1, warmup=0) / frames  # minutes per run: one timed run
        t2 = print_table(
            f"MoViE one-step wall time per frame at {time_size}x{time_size}, {frames} frames (one-step: median of "
            f"{repeats} after a warm-up; core: 1 run) (torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"{platform.machine()}; bar: >= 30x)",
            ["pipeline", "UNet passes/frame", "s/frame", "speed-up"],
            [[f"core IP2P workflow ({core_steps} steps, 3 passes, SD VAE)", str(3 * core_steps), f"{slow:.2f}", "1.0x"],
             ["one-step path (student + anchor, 1 step, TAESD)", "1", f"{fast:.3f}", f"{slow / fast:.1f}x"]])
    return t1 + "\n" + t2

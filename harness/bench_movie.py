"""Benchmark: MoViE fast path vs core InstructPix2Pix, on the full-size random-weight IP2P.

FLOPs per frame at 480x480 (torch FlopCounterMode, CPU attention counted), built from one
counted UNet pass (batch 1; with cross-frame attention: the pass of a non-anchor frame), one
SD VAE encode+decode and one TAESD encode+decode:
- core IP2P: 20 steps x 3 passes (DualCFGGuider) + SD VAE;
- our teacher path: 20 steps x 3 passes with the middle-frame anchor + TAESD;
- distilled path: 10 steps x 1 pass with the anchor + TAESD.
Wall time per frame at 256x256 on this CPU, both in this one run, same step count: the core
workflow (InstructPixToPixConditioning with the SD VAE, DualCFGGuider, SamplerCustomAdvanced,
VAEDecode) vs the distilled path (TAESD Encode, CFG-Distilled Guider, SamplerCustomAdvanced,
TAESD Decode), without and with cross-frame attention.
"""
from __future__ import annotations

import platform

import torch

from . import fixtures
from .measure import count_flops, fmt_flops, median_seconds, print_table


def _models(comfy):
    base = comfy.base
    fixtures._link(fixtures.sd15_checkpoint(ip2p=True), base / "models" / "checkpoints")
    fixtures._link(fixtures.sd15_vae(), base / "models" / "vae")
    fixtures._link(fixtures.movie_guidance_adapter(), base / "models" / "videoedit_guidance")
    fixtures.install_taesd(base)
    nc = comfy.node_classes
    model, clip, _ = nc["CheckpointLoaderSimple"]().load_checkpoint(fixtures.sd15_checkpoint(ip2p=True).name)[:3]
    sd_vae = nc["VAELoader"]().load_vae(fixtures.sd15_vae().name)[0]
    taesd = nc["VAELoader"]().load_vae("taesd")[0]
    student = nc["VideoEditLoadGuidanceAdapter"].execute(model, fixtures.movie_guidance_adapter().name).result[0]
    enc = lambda t: nc["CLIPTextEncode"]().encode(clip, t)[0]
    return model, student, sd_vae, taesd, enc


def _unet_pass_flops(comfy, model, size, cross_frame: bool) -> int:
    """FLOPs of one UNet pass for one frame (cross-frame: a non-anchor frame, = 2-frame clip - 1 anchor)."""
    m = model
    if cross_frame:
        m = comfy.node_classes["VideoEditCrossFrameAttention"].execute(model, "middle", 1).result[0]
    import comfy.model_management as mm
    mm.load_models_gpu([m])
    unet = m.model.diffusion_model
    to = m.model_options["transformer_options"]
    h = size // 8

    def run(frames):
        x = torch.randn(frames, 8, h, h)
        ctx = torch.randn(frames, 77, 768)
        return unet(x, torch.full((frames,), 500.0), context=ctx, transformer_options={**to, "cond_or_uncond": [0]})

    if not cross_frame:
        return count_flops(run, 1)[0]
    return count_flops(run, 2)[0] - count_flops(run, 1)[0]  # 2-frame clip minus its anchor frame (vanilla)


def _vae_flops(vae, size) -> int:
    img = torch.rand(1, size, size, 3)
    return count_flops(lambda: vae.decode(vae.encode(img)))[0]


def _pipelines(comfy, model, student, sd_vae, taesd, enc, frames, size, steps):
    nc = comfy.node_classes
    import comfy.samplers as cs
    pos, neg = enc("make it look like a watercolor painting"), enc("")
    images = torch.rand(frames, size, size, 3, generator=torch.Generator().manual_seed(0))
    sampler = cs.sampler_object("euler")
    sigmas = cs.calculate_sigmas(model.get_model_object("model_sampling"), "normal", steps)

    def sample(guider, latent):
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
        return guider.sample(noise, latent, sampler, sigmas, seed=0)

    def core():
        p, n, lat = nc["InstructPixToPixConditioning"].execute(pos, neg, images, sd_vae).result
        g = nc["DualCFGGuider"].execute(model, p, n, neg, 7.5, 1.5, "regular").result[0]
        out = sample(g, lat["samples"])
        return nc["VAEDecode"]().decode(sd_vae, {"samples": out})[0]

    def distilled(cross_frame):
        def go():
            m = nc["VideoEditCrossFrameAttention"].execute(student, "middle", 1).result[0] if cross_frame else student
            src = nc["VideoEditTAESDEncode"].execute(images, "taesd", 16).result[0]
            g, lat, _ = nc["VideoEditCFGDistilledGuider"].execute(m, pos, src, 1.5, 7.5).result
            out = sample(g, lat["samples"])
            return nc["VideoEditTAESDDecode"].execute({"samples": out}, "taesd", 16).result[0]
        return go

    return core, distilled(False), distilled(True)


def bench_movie(comfy, repeats: int = 3, flop_size: int = 480, time_size: int = 256, frames: int = 2,
                steps: int = 4) -> str:
    model, student, sd_vae, taesd, enc = _models(comfy)
    with torch.inference_mode():
        unet = _unet_pass_flops(comfy, model, flop_size, False)
        unet_cf = _unet_pass_flops(comfy, model, flop_size, True)
        vae = _vae_flops(sd_vae, flop_size)
        tae = _vae_flops(taesd, flop_size)
        core_f = 20 * 3 * unet + vae
        teacher_f = 20 * 3 * unet_cf + tae
        dist_f = 10 * 1 * unet_cf + tae
        flops_rows = [
            ["core IP2P (DualCFGGuider, SD VAE)", "20 x 3", fmt_flops(core_f), "1.00x"],
            ["teacher path (anchor + Eq. 1 + TAESD)", "20 x 3", fmt_flops(teacher_f), f"{core_f / teacher_f:.2f}x"],
            ["distilled path (anchor + 1 pass + TAESD)", "10 x 1", fmt_flops(dist_f), f"{core_f / dist_f:.2f}x"],
        ]
        t1 = print_table(
            f"MoViE FLOPs per frame at {flop_size}x{flop_size}, full-size IP2P UNet (one pass {fmt_flops(unet)}, "
            f"with cross-frame anchor {fmt_flops(unet_cf)}; SD VAE enc+dec {fmt_flops(vae)}, TAESD {fmt_flops(tae)})",
            ["pipeline", "steps x passes", "FLOPs/frame", "core / this"], flops_rows)
        core, dist, dist_cf = _pipelines(comfy, model, student, sd_vae, taesd, enc, frames, time_size, steps)
        ts = {name: median_seconds(fn, repeats, warmup=1) / frames
              for name, fn in (("core", core), ("distilled", dist), ("distilled+anchor", dist_cf))}
        rows = [["core IP2P workflow (3 passes, SD VAE)", f"{ts['core']:.2f}", "1.00x"],
                ["distilled path (1 pass, TAESD)", f"{ts['distilled']:.2f}", f"{ts['core'] / ts['distilled']:.2f}x"],
                ["distilled path + cross-frame anchor", f"{ts['distilled+anchor']:.2f}",
                 f"{ts['core'] / ts['distilled+anchor']:.2f}x"]]
        t2 = print_table(
            f"MoViE wall time per frame at {time_size}x{time_size}, {steps} steps, {frames} frames, median of {repeats} "
            f"(torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}; bar: >= 2.8x)",
            ["pipeline", "s/frame", "speed-up"], rows)
    return t1 + "\n" + t2

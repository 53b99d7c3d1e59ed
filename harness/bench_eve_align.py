"""Benchmark: EVE LoRA alignment (FDD) iterations.

1. Seconds per alignment iteration and peak RAM on the tiny random stack (tiny SD-shaped UNet +
   ControlNet + motion module, 32x32 pixels, 3 frames, k = 3) on this CPU, SDS-only iterations and
   adversarial ones apart; a worker process resets the RSS high-water mark after the first
   iteration and reports the peak above the RSS it had then.
2. FLOPs of one alignment iteration on the full-size architecture (random SD1.5 + SD1.5 ControlNet
   + AnimateDiff v2 motion module) at 256x256, 8 frames, k = 3, teacher_steps = 8, split into
   student generation (k checkpointed steps), teacher SDS passes, discriminators (feature network +
   heads), the teachers' DDIM "real" samples, and backward (with the checkpoint recomputation);
   torch's FlopCounterMode with CPU attention counted (harness/measure.py).

``python -m harness.bench_eve_align --worker tiny|flops`` runs one part alone.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch
import torch.utils.checkpoint

from .bench_eve import _reset_peak, _vm
from .embedded import REPO_ROOT
from .measure import count_flops, fmt_flops, print_table
from .pack import running_pack_module


def _pack(name):
    from .train_eve_align import _pack as p
    return p(name)


def _tiny_worker(steps: int) -> dict:
    from .bench import BENCH_BASE
    from .embedded import boot_in_process, use_comfy
    from .fixtures import build_clip, build_model, tiny_controlnet, tiny_motion_module_sd, tiny_unet_config
    use_comfy(BENCH_BASE)
    boot_in_process(BENCH_BASE)
    et, ne, ta = _pack("engine_align_trainer"), _pack("engine_video_adapter"), _pack("temporal_adapter")
    with torch.inference_mode():
        model = build_model(tiny_unet_config(), seed=3)
        clip = build_clip(tiny=True)
        video = ne.apply_video_adapter(model, ta.adapter_from_state_dict(tiny_motion_module_sd(), "tiny"), True)
        enc = lambda t: clip.encode_from_tokens_scheduled(clip.tokenize(t))[0][0]
        g = torch.Generator().manual_seed(0)
        data = et.AlignData(torch.randn(1, 3, 4, 4, 4, generator=g), torch.rand(1, 3, 32, 32, 3, generator=g),
                            enc("make it winter"), enc("a snowy street"), enc(""), ["clip"])
    cfg = et.AlignConfig(steps=steps, learning_rate=1e-5, rank=16, k=3, teacher_steps=8, sds_fraction=0.5,
                         checkpoint_every=0)
    a = et.Aligner(model, tiny_controlnet(tiny_unet_config()), video, data, cfg)
    stamps, base = [time.perf_counter()], {}

    def on_step(step, loss):
        stamps.append(time.perf_counter())
        if step == 1:  # after the first (warm-up) iteration: models loaded, heads built
            base["rss"] = _vm("VmRSS")
            _reset_peak()

    a.run(on_step=on_step)
    adv = et.eve_align.adversarial_from(steps, cfg.sds_fraction)
    dts = [b - a_ for a_, b in zip(stamps, stamps[1:])]
    sds = [d for i, d in enumerate(dts, 1) if 1 < i < adv]
    advs = [d for i, d in enumerate(dts, 1) if i >= adv]
    return {"sds_s": sorted(sds)[len(sds) // 2], "adv_s": sorted(advs)[len(advs) // 2],
            "extra_bytes": _vm("VmHWM") - base["rss"], "rss": base["rss"], "steps": steps}


def _pass_flops(et, ea, dist, model, cnet, video, texts, frames, size, k, teacher_steps) -> dict:
    """FLOPs of one pass of each kind of an alignment iteration, for a clip of ``frames`` frames."""
    g = torch.Generator().manual_seed(0)
    data = et.AlignData(torch.randn(1, frames, 4, size // 8, size // 8, generator=g),
                        torch.rand(1, frames, size, size, 3, generator=g), *texts, ["clip"])
    cfg = et.AlignConfig(steps=1, k=k, teacher_steps=teacher_steps, checkpoint_every=0)
    a = et.Aligner(model, cnet, video, data, cfg)
    s = cfg.settings()
    with torch.inference_mode(False), torch.enable_grad():
        a._load()
        a._build_discriminators()
        m = a.batch_models(torch.tensor([0]))
        nt = len(a.sigmas)
        dr = ea.draw(torch.Generator().manual_seed(1), m.source.shape, m.frames, s, nt)
        t = torch.full((m.source.shape[0],), int(dr.student_t[0]), dtype=torch.long)
        # one pass of each kind at full size; an iteration is a fixed number of each (every pass of
        # a kind has the same shapes, so the same FLOPs)
        p = {}
        with torch.no_grad():  # the same forward FLOPs; a graph here would sit beside the next one (OOM at 8 frames)
            p["student"], _ = count_flops(m.student, dr.noise, t)
        del _
        x = dr.noise.clone().requires_grad_(True)
        out = torch.utils.checkpoint.checkpoint(m.student, x, t, use_reentrant=False)
        p["student step backward"], _ = count_flops(out.sum().backward)  # recompute + input and LoRA grads
        del out, x
        with torch.no_grad():
            p["edit teacher"], _ = count_flops(m.edit_teacher, dr.noise, t)
            p["video teacher"], _ = count_flops(m.video_teacher, dr.noise, t)
            p["features"], _ = count_flops(m.features, m.source)
            src = m.features(m.source)
        x0 = m.source.clone().requires_grad_(True)

        def g_terms():
            f = m.features(x0)  # one feature pass of x'_0 serves both discriminators (as in the loop)
            return (dist.eve_generator_loss(a.d_edit(f, m.instruction, 1, src)),
                    dist.eve_generator_loss(a.d_video(f, m.caption, m.frames)))
        p["features + heads (with grad)"], (ge, gv) = count_flops(g_terms)
        p["heads, G backward through features"], _ = count_flops((ge + gv).backward)
        with torch.no_grad():
            feats = m.features(m.source)
        p["heads (D, one sample kind)"], ld = count_flops(
            lambda: dist.eve_discriminator_loss(a.d_edit(feats, m.instruction, 1, src), a.d_edit(feats, m.instruction, 1, src))
            + dist.eve_discriminator_loss(a.d_video(feats, m.caption, m.frames), a.d_video(feats, m.caption, m.frames)))
        p["heads, D backward"], _ = count_flops(ld.backward)
    return p


def _flops_worker(frames: int = 8, size: int = 256, tiny: bool = False) -> dict:
    from . import fixtures
    from .bench import BENCH_BASE
    from .embedded import boot_in_process, use_comfy
    use_comfy(BENCH_BASE)
    models = BENCH_BASE / "models"
    if not tiny:
        fixtures._link(fixtures.sd15_checkpoint(), models / "checkpoints")
        fixtures._link(fixtures.sd15_controlnet(), models / "controlnet")
        fixtures._link(fixtures.animatediff_motion_module("v2"), models / "animatediff_models")
    comfy = boot_in_process(BENCH_BASE)
    nc = comfy.node_classes
    et, ea = _pack("engine_align_trainer"), _pack("align")
    dist = running_pack_module("core.adversarial_distillation")
    with torch.inference_mode():
        if tiny:  # a dry run of this worker on the tiny stack
            model = fixtures.build_model(fixtures.tiny_unet_config(), seed=3)
            clip = fixtures.build_clip(tiny=True)
            cnet = fixtures.tiny_controlnet(fixtures.tiny_unet_config())
            adapter = _pack("temporal_adapter").adapter_from_state_dict(fixtures.tiny_motion_module_sd(), "tiny")
            video = _pack("engine_video_adapter").apply_video_adapter(model, adapter, True)
        else:
            model, clip, _ = nc["CheckpointLoaderSimple"]().load_checkpoint(fixtures.sd15_checkpoint().name)[:3]
            cnet = nc["ControlNetLoader"]().load_controlnet(fixtures.sd15_controlnet().name)[0]
            adapter = nc["VideoEditEVELoadVideoAdapter"].execute(fixtures.animatediff_motion_module("v2").name).result[0]
            video = nc["VideoEditEVEApplyVideoAdapter"].execute(model, adapter, True).result[0]
        enc = lambda t: clip.encode_from_tokens_scheduled(clip.tokenize(t))[0][0]
        texts = (enc("make it winter"), enc("a snowy street"), enc(""))
    k, teacher_steps = 3, 8
    # one pass of each kind, counted at full size; an iteration runs a fixed number of each
    # (passes of a kind have the same shapes, so the same FLOPs)
    p = _pass_flops(et, ea, dist, model, cnet, video, texts, frames, size, k, teacher_steps)
    out = {
        f"student generation ({k} steps)": k * p["student"],
        "teacher SDS passes (edit + video)": p["edit teacher"] + p["video teacher"],
        # G: features of x'_0 twice (D_e, D_v) with grad + the source once; D: fake, both real kinds, source
        "discriminators (features + heads)": p["features + heads (with grad)"] + p["features"] + 4 * p["features"]
                                             + p["heads (D, one sample kind)"],
        f"teachers' DDIM real samples (2 x {teacher_steps} steps)": teacher_steps * (p["edit teacher"] + p["video teacher"]),
        "backward (k recomputed steps + features + heads)": k * p["student step backward"]
                                                           + p["heads, G backward through features"] + p["heads, D backward"],
    }
    out["_passes"] = p
    return out


def _run(args: list[str]) -> dict:
    cmd = [sys.executable, "-m", "harness.bench_eve_align", "--worker", *args]
    env = os.environ.copy()
    if args[0] == "flops":  # counts do not depend on the allocator; handing freed weight copies back to the OS
        env.pop("MALLOC_MMAP_MAX_", None)  # (the bench's no-return setting is for honest RSS peaks) keeps
        env.pop("MALLOC_TRIM_THRESHOLD_", None)  # the full-size counts inside 24 GiB
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    r = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"bench worker {args} failed:\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


FULL_FRAMES = 8
FIT_FRAMES = (1, 2, 3, 4)  # an 8-frame count needs > 21.5 GB at full size with grad (killed on the 24 GiB machine)


def quadratic_in_frames(counts: dict[int, float], frames: int) -> tuple[float, float]:
    """Every pass's FLOPs are c + a F + b F^2 in the clip length F: per-frame layers give a F, the
    motion modules' and D_v's attention along time b F^2, per-clip caption projections c. Solve
    that exactly through the first three counts; returns (its value at ``frames``, its relative
    error at the fourth count: the check that the form holds)."""
    fs = sorted(counts)
    A = torch.tensor([[1.0, f, f * f] for f in fs[:3]], dtype=torch.float64)
    coef = torch.linalg.solve(A, torch.tensor([counts[f] for f in fs[:3]], dtype=torch.float64))
    at = lambda f: float(coef[0] + coef[1] * f + coef[2] * f * f)
    check = abs(at(fs[3]) - counts[fs[3]]) / max(1.0, abs(counts[fs[3]]))
    return at(frames), check


def flops_at_frames(frames: int) -> tuple[dict, str]:
    """The flops worker's table at ``frames``, from counts at FIT_FRAMES (one worker each)."""
    runs = {f: _run(["flops", "--frames", str(f)]) for f in FIT_FRAMES}
    out, worst = {}, 0.0
    for key, v in runs[FIT_FRAMES[0]].items():
        if key == "_passes":
            continue
        out[key], err = quadratic_in_frames({f: runs[f][key] for f in FIT_FRAMES}, frames)
        worst = max(worst, err)
    out["_passes"] = {}
    for key in runs[FIT_FRAMES[0]]["_passes"]:
        out["_passes"][key], err = quadratic_in_frames({f: runs[f]["_passes"][key] for f in FIT_FRAMES}, frames)
        worst = max(worst, err)
    return out, f"the fit through {FIT_FRAMES[:3]} predicts the {FIT_FRAMES[3]}-frame counts within {worst:.1e} relative"


def bench_eve_align(comfy, repeats: int = 3) -> str:
    tiny = _run(["tiny", "--steps", str(2 + 2 * max(repeats, 1))])
    mib = 1 / 2**20
    threads = os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())
    t1 = print_table(
        f"EVE LoRA alignment on the tiny stack (tiny UNet + ControlNet + motion module, 32x32, 3 frames, k=3, "
        f"teacher_steps 8), median of {max(repeats, 1)} iterations per phase after 1 warm-up (torch "
        f"{torch.__version__}, {threads} threads, {platform.machine()})",
        ["phase", "s/iteration", "peak RAM above the warm RSS, MiB"],
        [["SDS only (first 2/3)", f"{tiny['sds_s']:.2f}", ""],
         ["SDS + adversarial (last 1/3)", f"{tiny['adv_s']:.2f}", f"{tiny['extra_bytes'] * mib:.0f} "
                                                                  f"(warm RSS {tiny['rss'] * mib:.0f})"]])
    fl, fit = flops_at_frames(FULL_FRAMES)
    passes = fl.pop("_passes")
    sds_phase = sum(v for k, v in fl.items() if k.startswith(("student", "teacher SDS"))) + \
        3 * passes["student step backward"]
    total = sum(fl.values())
    rows = [[k, fmt_flops(v), f"{100 * v / total:.1f}%"] for k, v in fl.items()]
    rows.append(["iteration, adversarial phase (sum)", fmt_flops(total), "100%"])
    rows.append(["iteration, SDS-only phase (no discriminators)", fmt_flops(sds_phase), f"{100 * sds_phase / total:.1f}%"])
    t2 = print_table(f"FLOPs per EVE alignment iteration, full-size SD1.5 + ControlNet + AnimateDiff v2 motion module, "
                     f"256x256, {FULL_FRAMES} frames, k=3, teacher_steps 8, batch 1 clip: each kind of pass counted once at full "
                     "size, times its count per iteration (backward through frozen layers: input gradients only); "
                     f"counted at {', '.join(map(str, FIT_FRAMES))} frames and extrapolated exactly ({fit})",
                     ["part", "FLOPs", "share"], rows)
    t2 += "\n\nper pass: " + ", ".join(f"{k} {fmt_flops(v)}" for k, v in passes.items())
    return t1 + "\n" + t2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", choices=["tiny", "flops", "flops-dry"])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--frames", type=int, default=8, help="clip length of the flops worker")
    a = ap.parse_args()
    if a.worker == "tiny":
        print(json.dumps(_tiny_worker(a.steps)), flush=True)
    elif a.worker == "flops":
        print(json.dumps(_flops_worker(a.frames)), flush=True)
    elif a.worker == "flops-dry":
        print(json.dumps(_flops_worker(3, 32, tiny=True)), flush=True)
    else:
        bench_eve_align(None, a.repeats)


if __name__ == "__main__":
    main()

"""Benchmark: TokenFlow (DDIM Inverter + Keyframe Sampler) — FLOPs per frame vs the official
defaults, reconstruction error of both inversion schemes, wall time per frame against per-frame
editing with core nodes, and peak RAM at 16 / 64 / 240 frames.

- FLOPs per frame at 512x512 on the full-size SD1.5 architecture: one UNet call is counted
  (``measure.count_flops``, CPU attention included) and multiplied by the UNet calls per frame
  of each scheme, the same way for both. Official defaults: inversion 500 steps (guidance 1,
  one call each), edit 50 steps x (source + uncond + cond) x (1 + 1/8 keyframe pass). Ours:
  inversion ``steps x (1 + refine_iters)``, edit ``steps x 3 x (1 + 1/interval)``.
- Reconstruction error (invert, then sample back with the source prompt, guidance 1) on the
  sample clip at 256x256 with the small *trained* toy model (``harness.tokenflow_toy``; a
  random UNet has no stable inversion): the official scheme (plain DDIM inversion on a 10x finer
  grid, ~500 steps, sampled back in 50) vs ours (few steps + fixed-point refinement).
- Wall time per frame at ``size`` (one run each, same process, same inversion): the Keyframe
  Sampler vs core KSamplerAdvanced (ddim, no added noise) on the inverted latent, per-frame.
- Peak RAM: one worker process per frame count (the RSS high-water mark only rises), with a
  fixed 128 KiB mmap threshold so freed tensors leave the RSS. After the model is loaded and a
  1-frame warm-up ran, the latents and an inversion store are allocated, the high-water mark is
  reset, and the first step of a 2-step edit runs (a PnP step, the heaviest): the keyframe pass
  over all keyframes and ``chunks`` chunk passes (then it is cancelled through ComfyUI's own
  interrupt, from the progress hook: later chunks are the same computation on other frames, so
  the peak is reached). Reported: peak above the RSS at the reset, with the default
  ``keyframe_store`` (auto) at every length and with ``memory`` at the longest.
- ``--worker full --frames N --steps S``: inverts and edits a whole clip end to end, no cancel.
- One step by clip length (16 / 64 / 240 frames) and keyframe attention mode, seconds and FLOPs
  per frame, core per-frame KSamplerAdvanced beside it: ``bench_tokenflow_steps``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time

import torch

from .embedded import REPO_ROOT
from .measure import count_flops, fmt_flops, print_table

OFFICIAL = {"inv_steps": 500, "steps": 50, "interval": 8}
OURS = {"steps": 20, "refine_iters": 2, "interval": 8}  # the nodes' defaults


def _vm(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _load_sd15(comfy):
    from . import fixtures
    from .bench import BENCH_BASE
    fixtures._link(fixtures.sd15_checkpoint(), BENCH_BASE / "models" / "checkpoints")
    model, clip, vae = comfy.node_classes["CheckpointLoaderSimple"]().load_checkpoint(fixtures.sd15_checkpoint().name)[:3]
    return model, clip, vae


def edit_calls(steps: int, interval: int, parts: int = 3) -> float:
    """UNet calls per frame of a TokenFlow edit: every frame once, keyframes once more."""
    return steps * parts * (1 + 1 / interval)


def flops_rows(comfy, size: int = 512) -> tuple[list[list[str]], dict]:
    model, clip, _ = _load_sd15(comfy)
    ctx = comfy.node_classes["CLIPTextEncode"]().encode(clip, "a photo")[0][0][0]
    bm = model.model
    x = torch.randn(1, 4, size // 8, size // 8)
    with torch.inference_mode():
        f_call, _ = count_flops(lambda: bm.apply_model(x, torch.tensor([1.0]), c_crossattn=ctx))
    off_inv, off_edit = OFFICIAL["inv_steps"] * f_call, edit_calls(OFFICIAL["steps"], OFFICIAL["interval"]) * f_call
    our_inv = OURS["steps"] * (1 + OURS["refine_iters"]) * f_call
    our_edit = edit_calls(OURS["steps"], OURS["interval"]) * f_call
    rows = [["official (500-step inversion, 50-step edit)", fmt_flops(off_inv), fmt_flops(off_edit),
             fmt_flops(off_inv + off_edit), "1.0x"],
            [f"ours ({OURS['steps']} steps, refine {OURS['refine_iters']}, interval {OURS['interval']})",
             fmt_flops(our_inv), fmt_flops(our_edit), fmt_flops(our_inv + our_edit),
             f"{(off_inv + off_edit) / (our_inv + our_edit):.1f}x fewer"],
            ["ours, a second prompt on the same inversion", "0", fmt_flops(our_edit), fmt_flops(our_edit),
             f"{(off_inv + off_edit) / our_edit:.1f}x fewer"]]
    return rows, {"unet_call": f_call}


def _tf_math():
    """TokenFlow's DDIM (pure: imported from the repository, no ComfyUI needed)."""
    from .pack import import_pack
    import_pack()
    from videoedit.nodes.tokenflow import ddim
    return ddim


def reconstruction_rows(size: int = 256, frames: int = 8) -> tuple[list[list[str]], dict]:
    import comfy.samplers

    from .sample_clip import panned_frames
    from .tokenflow_toy import contexts, image_latents, toy_model
    tf = _tf_math()
    model = toy_model()
    bm = model.model
    ms = bm.model_sampling
    clip, _ = panned_frames(frames, size, shift=(8, 8))
    x0 = image_latents(clip)
    ctx = contexts()[0].expand(frames, -1, -1)

    def eps(x, sigma):
        s = torch.full((x.shape[0],), float(sigma))
        return (x - bm.apply_model(x, s, c_crossattn=ctx)) / float(sigma)

    def rel(a):
        return float((a - x0).norm() / x0.norm())

    res = {}
    with torch.inference_mode():
        s50 = comfy.samplers.calculate_sigmas(ms, "ddim_uniform", OFFICIAL["steps"]).double()
        # the official inversion grid: 10 inversion steps per sampling step (500 in all)
        fine = [float(s50[i] * (s50[i + 1] / s50[i]) ** (j / 10)) if s50[i + 1] > 0 else
                float(s50[i] * (1 - j / 10)) for i in range(len(s50) - 1) for j in range(10)] + [0.0]
        traj = tf.ddim_invert(eps, x0, torch.tensor(fine), 0)
        res["official"] = rel(tf.ddim_sample(eps, traj[0], s50))
        res["official_calls"] = len(fine) - 1
        ours = comfy.samplers.calculate_sigmas(ms, "ddim_uniform", OURS["steps"]).double()
        t0 = tf.ddim_invert(eps, x0, ours, OURS["refine_iters"])
        res["ours"] = rel(tf.ddim_sample(eps, t0[0], ours))
        res["ours_steps"] = len(ours) - 1
        plain = tf.ddim_invert(eps, x0, ours, 0)
        res["ours_plain"] = rel(tf.ddim_sample(eps, plain[0], ours))
    rows = [[f"official: plain DDIM inversion, {res['official_calls']} steps, sampled back in {len(s50) - 1}",
             f"{res['official']:.2e}"],
            [f"ours: {res['ours_steps']} steps + {OURS['refine_iters']} fixed-point iterations", f"{res['ours']:.2e}"],
            [f"(ours without refinement, {res['ours_steps']} steps)", f"{res['ours_plain']:.2e}"]]
    return rows, res


# ---------------------------------------------------------------------------- workers

def run_cancelled_after(run, updates: int) -> int:
    """Run ``run()`` (a Keyframe Sampler edit) until its progress bar has moved ``updates`` times
    (host.progress: once for a step's keyframe pass, once per chunk of frames), then press
    ComfyUI's Cancel, which the sampler honours before its next chunk. Returns the progress value
    reached (frame passes: steps x (keyframes + frames) in all)."""
    import comfy.model_management as mm
    import comfy.utils
    seen = []

    def hook(value, total, preview, node_id=None):
        seen.append(value)
        if len(seen) >= updates:
            mm.interrupt_current_processing(True)
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        run()
    except mm.InterruptProcessingException:
        pass
    finally:
        mm.interrupt_current_processing(False)
        comfy.utils.set_progress_bar_global_hook(None)
    return seen[-1] if seen else 0


def worker_session():
    """In a bench worker process: boots the embedded ComfyUI on the bench base and returns the
    full-size random SD1.5 model, the source / edit / negative conditionings (every TokenFlow
    worker edits the same way) and the node classes."""
    from .bench import BENCH_BASE
    from .embedded import boot_in_process, use_comfy
    use_comfy(BENCH_BASE)
    comfy_h = boot_in_process(BENCH_BASE)
    nc = comfy_h.node_classes
    model, clip, _ = _load_sd15(comfy_h)
    enc = nc["CLIPTextEncode"]()
    conds = tuple(enc.encode(clip, t)[0] for t in ("a photo of a man", "a marble statue", "blurry"))
    return model, conds, nc


def _worker(job: str, frames: int, size: int, steps: int, chunks: int, fpc: int, store: str = "auto") -> dict:
    model, (src, pos, neg), nc = worker_session()
    inverter, sampler = nc["VideoEditTokenFlowDDIMInverter"], nc["VideoEditTokenFlowKeyframeSampler"]
    g = torch.Generator().manual_seed(0)
    lat = size // 8
    out = {"job": job, "frames": frames, "size": size}

    def sample(inv, n_fpc):
        return sampler.execute(model, pos, neg, inv, 7.5, 8, "random", 0, True, True, 0.8, 0.5, 1.0, n_fpc,
                               keyframe_store=store).result[0]

    with torch.inference_mode():
        if job == "full":  # the whole clip, inverted and edited end to end (no cancel)
            latent = {"samples": torch.randn(frames, 4, lat, lat, generator=g)}
            base = _vm("VmRSS")
            _reset_peak()
            t = time.perf_counter()
            inv, _ = inverter.execute(model, src, latent, steps, "ddim_uniform", 0, fpc).result
            out["invert_s"] = time.perf_counter() - t
            t = time.perf_counter()
            edited = sample(inv, fpc)["samples"]
            out.update(tokenflow_s=time.perf_counter() - t, extra_bytes=_vm("VmHWM") - base,
                       store_bytes=inv.trajectory.numel() * 4, steps=inv.steps, finite=bool(edited.isfinite().all()),
                       shape=list(edited.shape))
            return out
        if job == "time":
            latent = {"samples": torch.randn(frames, 4, lat, lat, generator=g)}
            t = time.perf_counter()
            inv, noised = inverter.execute(model, src, latent, steps, "ddim_uniform", OURS["refine_iters"], fpc).result
            out["invert_s"] = time.perf_counter() - t
            t = time.perf_counter()
            sample(inv, fpc)
            out["tokenflow_s"] = time.perf_counter() - t
            t = time.perf_counter()
            nc["KSamplerAdvanced"]().sample(model, "disable", 0, steps, 7.5, "ddim", "ddim_uniform", pos, neg,
                                            noised, 0, 10000, "disable", denoise=1.0)
            out["core_s"] = time.perf_counter() - t
            out["steps"] = inv.steps
            return out
        # memory: warm-up on 1 frame, then one step on `frames` frames, cancelled after the
        # keyframe pass and `chunks` chunks. Two inversion steps, so the measured first step is a
        # PnP step (conv features and q/k injected: int(2 * 0.8) = int(2 * 0.5) = 1), the heaviest.
        one = {"samples": torch.randn(1, 4, lat, lat, generator=g)}
        inv1, _ = inverter.execute(model, src, one, 2, "ddim_uniform", 0, 1).result
        sample(inv1, 1)
        traj = torch.randn(inv1.trajectory.shape[0], frames, 4, lat, lat, generator=g)  # the inversion store
        inv = type(inv1)(traj, inv1.sigmas, inv1.fingerprint, 0, inv1.scheduler, inv1.model_id, inv1.source_context)
        traj_bytes = traj.numel() * 4
        base = _vm("VmRSS")
        _reset_peak()
        t = time.perf_counter()
        reached = run_cancelled_after(lambda: sample(inv, fpc), 1 + chunks)  # keyframe pass + `chunks` chunks
        out.update(seconds=time.perf_counter() - t, extra_bytes=_vm("VmHWM") - base, store_bytes=traj_bytes,
                   chunks_run=chunks, cancelled_after=reached)
        return out


def _run_worker(job: str, frames: int, size: int, steps: int = 1, chunks: int = 2, fpc: int = 16,
                store: str = "auto") -> dict:
    cmd = [sys.executable, "-m", "harness.bench_tokenflow", "--worker", job, "--frames", str(frames), "--size", str(size),
           "--steps", str(steps), "--chunks", str(chunks), "--fpc", str(fpc), "--store", store]
    env = os.environ.copy()
    if job == "memory":
        # every block >= 128 KiB is its own mapping, returned when freed: the RSS high-water mark is
        # then the peak of live tensors, not of a heap that never shrinks (the bench's default
        # no-return setting made this table's rows wander by +-0.9 GB from run to run)
        for key in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_"):
            env.pop(key, None)
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    out = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"bench worker {job}/{frames} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def identity_rows(comfy) -> list[list[str]]:
    """What the model identity an inversion stores (host.model_identity) costs on the full-size
    SD1.5 fixture: the first call hashes the UNet's weights (once per loaded model), later calls
    reuse it and only walk the weight patches (a LoRA's tensors are hashed once too)."""
    import comfy.sd as comfy_sd  # ComfyUI's module; the argument ``comfy`` is the harness
    from safetensors.torch import load_file
    from . import fixtures
    from .pack import running_pack_module
    identity = running_pack_module("host.model_identity")
    model, _, _ = _load_sd15(comfy)
    lora, _ = comfy_sd.load_lora_for_models(model, None, load_file(str(fixtures.eve_align_lora())), 1.0, 0.0)
    times = []
    for m in (model, model, lora, lora):
        t0 = time.perf_counter()
        identity.model_identity(m)
        times.append(time.perf_counter() - t0)
    n = sum(p.numel() for p in model.model.diffusion_model.parameters())
    return [[f"first call on a loaded model: hash of the UNet's {n / 1e6:.0f} M weights", f"{times[0]:.2f}"],
            ["later calls (every DDIM Inverter / Keyframe Sampler run)", f"{times[1]:.4f}"],
            [f"with a rank-4 LoRA on {len(lora.patches)} weights: first call / later calls",
             f"{times[2]:.2f} / {times[3]:.4f}"]]


PARTS = ("flops", "recon", "time", "memory", "identity", "lengths")


def bench_tokenflow(comfy, repeats: int = 1, size: int = 256, time_frames: int = 4, time_steps: int = 1,
                    lengths=(16, 64, 240), mem_size: int | None = 128, fpc: int = 16, mem_chunks: int = 1,
                    parts=PARTS) -> str:
    """FLOPs/frame (512^2), reconstruction error, wall time/frame and peak RAM; one table each.

    The defaults fit a shared 2-core machine: wall time on 4 frames x 1 step at 256^2, peak RAM
    at 128^2 over the keyframe pass + 1 chunk (every chunk pass is the same computation on
    other frames; a larger size scales every row alike)."""
    threads = f"{os.environ.get('OMP_NUM_THREADS', torch.get_num_threads())} threads, {platform.machine()}"
    tables = []
    if "flops" in parts:
        rows, info = flops_rows(comfy)
        tables.append(print_table(
            f"TokenFlow FLOPs per frame, SD1.5 architecture at 512x512 (one UNet call = {fmt_flops(info['unet_call'])}, "
            "x UNet calls per frame)", ["scheme", "inversion", "edit", "total", "vs official"], rows))
    if "recon" in parts:
        rows, rec = reconstruction_rows()
        tables.append(print_table("Inversion round trip on the sample clip (256x256, 8 frames), trained toy model, "
                                  "relative error", ["scheme", "rel. error"], rows))
    if "time" in parts:
        tables.append(_time_table(size, time_frames, time_steps, fpc, threads))
    if "memory" in parts:
        tables.append(_memory_table(lengths, mem_size or size, fpc, mem_chunks, threads))
    if "identity" in parts:
        tables.append(print_table(f"Model identity of an inversion, full-size random SD1.5 ({threads})",
                                  ["call", "seconds"], identity_rows(comfy)))
    if "lengths" in parts:  # one step by clip length and keyframe attention mode (bench_tokenflow_steps)
        from .bench_tokenflow_steps import steps_table
        tables.append(steps_table(size, fpc=fpc))
    return "\n".join(tables)


def _time_table(size: int, time_frames: int, time_steps: int, fpc: int, threads: str) -> str:
    t = _run_worker("time", time_frames, size, steps=time_steps, fpc=fpc)
    n = time_frames
    return print_table(
        f"Wall time per frame, full-size random SD1.5, {size}x{size}, {n} frames, {t['steps']} steps, cfg 7.5 ({threads})",
        ["run", "s/frame"],
        [["DDIM Inverter (once per clip)", f"{t['invert_s'] / n:.2f}"],
         ["TokenFlow Keyframe Sampler (PnP, propagation, extended attention)", f"{t['tokenflow_s'] / n:.2f}"],
         ["core KSamplerAdvanced ddim, per-frame, same inverted latent", f"{t['core_s'] / n:.2f}"],
         ["ratio TokenFlow / core", f"{t['tokenflow_s'] / t['core_s']:.2f}x"]])


def _memory_table(lengths, msize: int, fpc: int, chunks: int, threads: str) -> str:
    """Rows at each length with the default keyframe_store (auto), and the longest once more with
    the keyframe tokens kept in memory, to show what the offload saves."""
    runs = [(k, "auto") for k in lengths] + [(lengths[-1], "memory")]
    mem = {}
    for k, store in runs:
        mem[k, store] = _run_worker("memory", k, msize, chunks=chunks, fpc=fpc, store=store)
        print(f"[bench tokenflow] memory {k} frames, keyframe_store {store}: {json.dumps(mem[k, store])}", flush=True)
    mib = 1 / 2**20
    rows = [[k, store, f"{m['extra_bytes'] * mib:.0f}", f"{m['store_bytes'] * mib:.0f}", m["chunks_run"]]
            for (k, store), m in mem.items()]
    lo, hi = lengths[0], lengths[-1]
    ratio = mem[hi, "auto"]["extra_bytes"] / max(1, mem[lo, "auto"]["extra_bytes"])
    rows.append([f"{hi} vs {lo} frames", "auto", f"{ratio:.2f}x (bar 1.25x)", "", ""])
    return print_table(
        f"Peak RAM of one Keyframe Sampler PnP step (keyframe pass + {chunks} chunk(s)) above model + latents + "
        f"inversion store, {msize}x{msize}, frames_per_chunk {fpc} ({threads})",
        ["frames", "keyframe_store", "peak extra MiB", "inversion store MiB", "chunks run"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", choices=["time", "memory", "full"],
                    help="full: invert and edit the whole clip (--frames, --steps) and print its time and peak")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--chunks", type=int, default=2)
    ap.add_argument("--fpc", type=int, default=16)
    ap.add_argument("--store", default="auto", choices=["auto", "memory", "disk"], help="the sampler's keyframe_store")
    ap.add_argument("--parts", default="time,memory",
                    help="without --worker: run these tables (time, memory, lengths: they need no in-process ComfyUI)")
    ap.add_argument("--lengths", default="16,64,240", help="frame counts of the memory table")
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(_worker(a.worker, a.frames, a.size, a.steps, a.chunks, a.fpc, a.store)), flush=True)
        return
    parts = a.parts.split(",")
    if not set(parts) <= {"time", "memory", "lengths"}:
        raise SystemExit("--parts: only time, memory and lengths run standalone "
                         "(flops, recon, identity: ./videoedit bench --only tokenflow)")
    bench_tokenflow(None, size=a.size, time_frames=a.frames, time_steps=a.steps, mem_chunks=a.chunks, fpc=a.fpc,
                    mem_size=a.size, lengths=tuple(int(x) for x in a.lengths.split(",")), parts=parts)


if __name__ == "__main__":
    main()

"""Benchmark: one TokenFlow Keyframe Sampler step by clip length and keyframe attention mode —
seconds and FLOPs per frame, against core's per-frame KSamplerAdvanced.

Each row is one worker process (full-size random SD1.5, ``size``x``size``): a 1-frame inversion
and a 1-frame edit warm the model up; then an inversion store of ``frames`` random latents with
the two-step schedule's sigmas (the timing does not depend on the latents' values) and the
first step of a 2-step edit (a PnP step: conv features and q/k injected, the heavier kind; 80% /
50% of a default 20-step edit's steps inject), stopped through ComfyUI's own interrupt once
every chunk of that step has run. The step runs under torch's FlopCounterMode with CPU
attention registered (``measure.count_flops``): its Python overhead per op is small next to a
batched UNet call (the 16-frame row is also timed without the counter, and the table says by
how much they differ). ``--core`` also times core KSamplerAdvanced (ddim, cfg 7.5, the first
of 2 steps, the whole batch per call) on the same start latent: the per-step ratio.

``--profile DIR`` writes a cProfile dump of the sampler step (``sampler.prof``) and a torch
profiler table by op (``ops.txt``), and of the core step (``core.prof``, ``core_ops.txt``).
The load average is recorded before and after each timed step.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from .embedded import REPO_ROOT
from .measure import CPU_ATTENTION_FLOPS, fmt_flops, print_table


def _profiled(fn, out_dir: str | None, name: str):
    """Run ``fn`` (under cProfile and torch.profiler when ``out_dir``); its wall time."""
    if not out_dir:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t
    import cProfile
    import pstats
    from torch.profiler import ProfilerActivity, profile
    os.makedirs(out_dir, exist_ok=True)
    prof = cProfile.Profile()
    with profile(activities=[ProfilerActivity.CPU]) as tprof:
        t = time.perf_counter()
        prof.enable()
        try:
            fn()
        finally:
            prof.disable()
        seconds = time.perf_counter() - t
    prof.dump_stats(os.path.join(out_dir, f"{name}.prof"))
    with open(os.path.join(out_dir, f"{name}_ops.txt"), "w") as f:
        f.write(tprof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
        f.write("\n")
        pstats.Stats(prof, stream=f).sort_stats("cumulative").print_stats(60)
    return seconds


class UNetCallTimes:
    """Forward hooks on the diffusion model timing every UNet call (batch size, the conditioning
    groups, seconds): a step's calls sum to the step, so they say where its time went without
    a profiler's overhead. Uninstalled with ``remove``."""

    def __init__(self, diffusion_model):
        self.calls, self._t = [], 0.0
        self._hooks = [diffusion_model.register_forward_pre_hook(self._pre, with_kwargs=True),
                       diffusion_model.register_forward_hook(self._post, with_kwargs=True)]

    def _pre(self, module, args, kwargs):
        self._t = time.perf_counter()

    def _post(self, module, args, kwargs, out):
        groups = list(kwargs.get("transformer_options", {}).get("cond_or_uncond") or [])
        self.calls.append([int(args[0].shape[0]), groups, time.perf_counter() - self._t])

    def take(self) -> list:
        calls, self.calls = self.calls, []
        return calls

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()


def unet_batch_scan(size: int, batches=(1, 2, 6, 16, 32)) -> dict:
    """Seconds per frame of one plain UNet call (the full-size random SD1.5, one text context)
    by batch size: how much a small batch costs per frame on this machine. Best of 2 after a warm-up."""
    from .bench_tokenflow import worker_session
    model, (_, pos, _), _ = worker_session()  # boots the embedded ComfyUI: comfy importable after it
    import comfy.model_management as mm
    mm.load_models_gpu([model])
    dm, dev = model.model.diffusion_model, mm.get_torch_device()
    out = {}
    with torch.inference_mode():
        for b in batches:
            x = torch.randn(b, 4, size // 8, size // 8, device=dev)
            t, ctx = torch.full((b,), 500.0, device=dev), pos[0][0].to(dev).expand(b, -1, -1)
            dm(x, t, context=ctx)
            times = []
            for _ in range(2):
                start = time.perf_counter()
                dm(x, t, context=ctx)
                times.append(time.perf_counter() - start)
            out[b] = min(times) / b
    return out


def step_worker(frames: int, size: int, mode: str, window: int, fpc: int, count: bool, core: bool,
                profile_dir: str | None = None, repeats: int = 1) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from .bench_tokenflow import run_cancelled_after, worker_session
    from .pack import import_pack, pack_module
    model, (src, pos, neg), nc = worker_session()
    inverter, sampler = nc["VideoEditTokenFlowDDIMInverter"], nc["VideoEditTokenFlowKeyframeSampler"]
    import_pack()
    from videoedit.nodes.tokenflow import keyframe_window, propagation
    g = torch.Generator().manual_seed(0)
    lat = size // 8
    chunks = -(-frames // fpc)

    def edit(inv, n_fpc):
        return sampler.execute(model, pos, neg, inv, 7.5, 8, "random", 0, True, True, 0.8, 0.5, 1.0, n_fpc,
                               keyframe_store="auto", keyframe_attention=mode, keyframe_window=window,
                               window_anchor=True).result[0]

    def first_step(inv):  # the keyframe pass and every chunk of step 0
        run_cancelled_after(lambda: edit(inv, fpc), 1 + chunks)

    # what the first step attends to (the sampler draws its keyframes from the same seed)
    kf = propagation.sample_keyframes(frames, 8, torch.Generator().manual_seed(0), "random")
    resolved = keyframe_window.resolve_mode(mode, frames, window)
    sets = (keyframe_window.attention_sets(kf, window, True) if resolved == "window"
            else [kf] * len(kf))
    out = {"frames": frames, "size": size, "mode": mode, "resolved": resolved, "window": window,
           "keyframes": len(kf), "attended_mean": sum(len(s) for s in sets) / len(sets),
           "threads": torch.get_num_threads()}
    with torch.inference_mode():
        one = {"samples": torch.randn(1, 4, lat, lat, generator=g)}
        inv1, _ = inverter.execute(model, src, one, 2, "ddim_uniform", 0, 1).result
        edit(inv1, 1)  # warm-up
        traj = torch.randn(inv1.trajectory.shape[0], frames, 4, lat, lat, generator=g)
        inv = dataclasses.replace(inv1, trajectory=traj)  # the same model, sigmas and prompt, n frames
        start = {"samples": model.get_model_object("latent_format").process_out(traj[0])}
        engine = pack_module(sampler, "tokenflow.engine_sampler")
        state_cls = engine.TokenFlowState

        def without_shortcut():  # the edit pass projecting q/k/v for every token (before qkv_shortcut)
            engine.TokenFlowState = functools.partial(state_cls, qkv_shortcut=False)
            try:
                first_step(inv)
            finally:
                engine.TokenFlowState = state_cls
        runs = {"sampler": lambda: first_step(inv), "sampler_full_qkv": without_shortcut,
                "core": lambda: nc["KSamplerAdvanced"]().sample(
                    model, "disable", 0, 2, 7.5, "ddim", "ddim_uniform", pos, neg, start, 0, 1, "disable")}
        names = ("sampler", "sampler_full_qkv", "core") if core else ("sampler",)
        timer = UNetCallTimes(model.model.diffusion_model)
        for rep in range(repeats):  # the runs alternate, so all see the same machine
            for name in names:
                load, cpu = os.getloadavg()[0], time.process_time()
                counted = count and name == "sampler" and rep == 0
                # profile an uncounted run (the counter's dispatch would show in the profile)
                profiled = profile_dir if rep == (repeats - 1 if count and repeats > 1 else 0) else None
                if counted:
                    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
                        wall = _profiled(runs[name], None, name)
                    out["flops"] = counter.get_total_flops()
                else:
                    wall = _profiled(runs[name], profiled, name)
                out.setdefault(f"{name}_runs", []).append(
                    {"wall": wall, "cpu": time.process_time() - cpu, "load": [load, os.getloadavg()[0]],
                     "profiled": bool(profiled) and not counted, "unet_calls": timer.take()})
        timer.remove()
    for name in ("sampler", "sampler_full_qkv", "core"):
        if f"{name}_runs" in out:
            out[f"{name}_seconds"] = statistics.median(r["wall"] for r in out[f"{name}_runs"])
            out[f"{name}_cpu"] = statistics.median(r["cpu"] for r in out[f"{name}_runs"])
    return out


def run_step_worker(frames: int, size: int, mode: str, window: int = 48, fpc: int = 16, count: bool = True,
                    core: bool = False, profile_dir: str | None = None, repeats: int = 1) -> dict:
    cmd = [sys.executable, "-m", "harness.bench_tokenflow_steps", "--worker", "--frames", str(frames),
           "--size", str(size), "--mode", mode, "--window", str(window), "--fpc", str(fpc)]
    cmd += ["--count"] if count else []
    cmd += ["--core"] if core else []
    cmd += ["--profile", profile_dir] if profile_dir else []
    cmd += ["--repeats", str(repeats)]
    out = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"bench step worker {frames}/{mode} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# 240 frames with all keyframes is not run (about half an hour per step here): its FLOPs are derived
ROWS = ((16, "auto"), (64, "auto"), (64, "window"), (240, "window"))


def sd15_self_attention_shapes(size: int) -> list[tuple[int, int]]:
    """(tokens, channels) of SD1.5's 16 self-attention layers at ``size``x``size`` (8 heads each):
    5 at 1/8 of the image (320 channels), 5 at 1/16 (640), 5 at 1/32 (1280), 1 in the middle."""
    lat = size // 8
    return ([(lat * lat, 320)] * 5 + [((lat // 2) ** 2, 640)] * 5 + [((lat // 4) ** 2, 1280)] * 5
            + [((lat // 8) ** 2, 1280)])


def keyframe_attention_flops(frames: int, mode: str, size: int, window: int = 48, fpc: int = 16,
                             interval: int = 8, seed: int = 0) -> int:
    """FLOPs of the keyframe pass's extended attention alone (cond and uncond, every SD1.5 layer)
    for the keyframes the sampler draws at its first step, counted on meta tensors. The rest of
    a step does not depend on the mode, so a step's count in one mode gives the other's:
    ``counted - keyframe_attention_flops(this) + keyframe_attention_flops(other)``."""
    from .measure import count_flops
    from .pack import import_pack
    import_pack()
    from videoedit.nodes.tokenflow import keyframe_window, propagation
    kf = propagation.sample_keyframes(frames, interval, torch.Generator().manual_seed(seed), "random")
    groups = keyframe_window.keyframe_groups(kf, keyframe_window.resolve_mode(mode, frames, window), window, True,
                                             fpc)
    total = 0
    for tokens, channels in sd15_self_attention_shapes(size):
        q = torch.empty(len(kf), tokens, channels, device="meta")
        total += count_flops(propagation.extended_attention, q, q, q, 8, groups=groups)[0]
    return 2 * total


def steps_table(size: int = 256, rows=ROWS, window: int = 48, fpc: int = 16, results: dict | None = None,
                repeats: int = 3, profile_dir: str | None = None) -> str:
    """Seconds and FLOPs per frame of one sampler step by clip length and mode (one counted run
    per row); at the first row also ``repeats`` - 1 uncounted runs alternating with core's per-frame
    KSamplerAdvanced (the per-step ratio) and the counter's overhead. ``results`` (from an earlier
    run, keyed like ``rows``) skips rows already measured (the 240-frame all-keyframes step takes
    about half an hour here)."""
    res = dict(results or {})
    first = rows[0]
    for n, mode in rows:
        if (n, mode) not in res:
            lead = (n, mode) == first
            res[n, mode] = run_step_worker(n, size, mode, window, fpc, count=True, core=lead,
                                           repeats=repeats if lead else 1, profile_dir=profile_dir if lead else None)
        print(f"[bench tokenflow steps] {n} frames, {mode}: {json.dumps(res[n, mode])}", flush=True)
    base = res[first]["sampler_runs"][0]["wall"] / first[0]
    table = []
    for n, mode in tuple(rows):  # all keyframes at a length not run: the windowed count, attention swapped
        if mode == "window" and not any(res[r]["resolved"] == "all" for r in rows if r[0] == n):
            w = res[n, mode]
            res[n, "all"] = dict(w, mode="all", resolved="all", attended_mean=float(w["keyframes"]),
                                 flops=w["flops"] - keyframe_attention_flops(n, "window", size, window, fpc)
                                 + keyframe_attention_flops(n, "all", size, window, fpc), derived=True)
            rows = tuple(rows) + ((n, "all"),)
    for n, mode in rows:
        r = res[n, mode]
        if r.get("derived"):
            table.append([n, f"{mode} (FLOPs: the {n}-frame window step's count with its extended attention "
                             f"swapped for all keyframes'; not timed)", f"{r['keyframes']}",
                          f"{r['attended_mean']:.1f}", "", "", fmt_flops(r["flops"] / n), ""])
            continue
        run = r["sampler_runs"][0]
        per = run["wall"] / n
        table.append([n, f"{mode} ({r['resolved']})", f"{r['keyframes']}", f"{r['attended_mean']:.1f}",
                      f"{per:.2f}", f"{per / base:.2f}x", fmt_flops(r["flops"] / n),
                      f"{run['load'][0]:.1f} / {run['load'][1]:.1f}"])
    check = []
    for n in sorted({n for n, _ in rows}):  # the swap against a counted all-keyframes step
        if (n, "window") in res and not res[n, "window"].get("derived") and res[n, "window"]["resolved"] == "window":
            for m in ("all", "auto"):
                if (n, m) in res and not res[n, m].get("derived") and res[n, m]["resolved"] == "all":
                    derived = (res[n, "window"]["flops"] - keyframe_attention_flops(n, "window", size, window, fpc)
                               + keyframe_attention_flops(n, "all", size, window, fpc))
                    check.append(f"{n} frames: derived all-keyframes count / counted = "
                                 f"{derived / res[n, m]['flops']:.6f}")
    lead = res[first]
    for key in ("sampler_runs", "sampler_full_qkv_runs", "core_runs"):  # profiled runs are slower: timed ones
        timed = [u for u in lead.get(key, []) if not u.get("profiled")]
        if key in lead and len(timed) > (1 if key == "sampler_runs" else 0):
            lead = dict(lead, **{key: timed})
    uncounted = lead["sampler_runs"][1:]
    if uncounted and lead.get("core_runs"):
        med = statistics.median
        s_wall, s_cpu = med(u["wall"] for u in uncounted), med(u["cpu"] for u in uncounted)
        c_wall, c_cpu = med(u["wall"] for u in lead["core_runs"]), med(u["cpu"] for u in lead["core_runs"])
        loads = [x for u in uncounted + lead["core_runs"] for x in u["load"]]
        table.append([first[0], f"{first[1]}, without the FLOP counter (median of {len(uncounted)})", "", "",
                      f"{s_wall / first[0]:.2f}", f"counter adds {100 * (base * first[0] / s_wall - 1):+.1f}%",
                      "", f"{min(loads):.1f}-{max(loads):.1f}"])
        if lead.get("sampler_full_qkv_runs"):
            full = lead["sampler_full_qkv_runs"]
            f_wall, f_cpu = med(u["wall"] for u in full), med(u["cpu"] for u in full)
            loads += [x for u in full for x in u["load"]]
            table.append([first[0], f"{first[1]}, q/k/v of every token (qkv_shortcut off; median of {len(full)})",
                          "", "", f"{f_wall / first[0]:.2f}", f"{f_wall / c_wall:.2f}x core (CPU time "
                          f"{f_cpu / c_cpu:.2f}x)", "", f"{min(loads):.1f}-{max(loads):.1f}"])
        table.append([first[0], f"core KSamplerAdvanced, per-frame (median of {len(lead['core_runs'])})", "", "",
                      f"{c_wall / first[0]:.2f}", f"sampler {s_wall / c_wall:.2f}x core (CPU time "
                      f"{s_cpu / c_cpu:.2f}x)", "", f"{min(loads):.1f}-{max(loads):.1f}"])
    for line in check:
        print(f"[bench tokenflow steps] check: {line}", flush=True)
    for key in ("sampler_runs", "core_runs"):  # where the first row's uncounted steps went, call by call
        for i, run in enumerate(u for u in lead.get(key, []) if not u.get("profiled") and u.get("unet_calls")):
            if key == "sampler_runs" and i == 0:
                continue  # the FLOP-counted run
            calls = ", ".join(f"{b} frames {g} {sec:.2f} s ({sec / b:.3f}/frame)" for b, g, sec in run["unet_calls"])
            print(f"[bench tokenflow steps] UNet calls of one {key.split('_')[0]} step ({first[0]} frames, "
                  f"{run['wall']:.1f} s): {calls}", flush=True)
    return print_table(
        f"One Keyframe Sampler step (PnP) by clip length, full-size random SD1.5, {size}x{size}, interval 8, "
        f"keyframe_window {window}, frames_per_chunk {fpc}, cfg 7.5 ({lead['threads']} threads)",
        ["frames", "keyframe_attention", "keyframes", "attended per keyframe", "s/frame/step", "vs first row",
         "FLOPs/frame/step", "load avg before / after"], table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", action="store_true", help="run one row in this process and print it as JSON")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--mode", default="auto", choices=["auto", "all", "window"])
    ap.add_argument("--window", type=int, default=48)
    ap.add_argument("--fpc", type=int, default=16)
    ap.add_argument("--count", action="store_true", help="count FLOPs (FlopCounterMode, CPU attention registered)")
    ap.add_argument("--core", action="store_true", help="also time core KSamplerAdvanced on the same start")
    ap.add_argument("--profile", help="write cProfile dumps and torch profiler tables to this folder "
                                      "(the table: of its first row)")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs (sampler and core alternating; median)")
    ap.add_argument("--rows", help="table rows as FRAMES:MODE,... (default: the bench's)")
    ap.add_argument("--results", help="JSON lines of rows measured earlier ([bench tokenflow steps] lines)")
    ap.add_argument("--unet-batches", help="instead: seconds per frame of one plain UNet call at these batch "
                                           "sizes (e.g. 1,2,6,16,32), in this process")
    a = ap.parse_args()
    if a.unet_batches:
        scan = unet_batch_scan(a.size, tuple(int(b) for b in a.unet_batches.split(",")))
        print_table(f"Plain UNet call, full-size random SD1.5, {a.size}x{a.size}, by batch size "
                    f"({torch.get_num_threads()} threads)", ["batch", "s per frame"],
                    [[b, f"{sec:.3f}"] for b, sec in scan.items()])
        return
    if a.worker:
        print(json.dumps(step_worker(a.frames, a.size, a.mode, a.window, a.fpc, a.count, a.core, a.profile,
                                     a.repeats)), flush=True)
        return
    rows = tuple((int(f), m) for f, m in (r.split(":") for r in a.rows.split(","))) if a.rows else ROWS
    earlier = {}
    if a.results:
        for line in open(a.results):
            if line.startswith("[bench tokenflow steps]") and ": {" in line:
                r = json.loads(line.split(": ", 1)[1])
                earlier[r["frames"], r["mode"]] = r
    steps_table(a.size, rows, a.window, a.fpc, earlier, a.repeats, a.profile)


if __name__ == "__main__":
    main()

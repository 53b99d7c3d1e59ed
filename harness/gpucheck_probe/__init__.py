"""gpucheck's probe: a custom-node folder that harness.gpucheck links into the custom_nodes of the
ComfyUI it checks (and the test server links too). It is not part of the pack and is never
installed for users.

Inside the server process it adds what a client cannot see from outside:
- ``GET /videoedit_gpucheck/state``: peaks since the last reset: torch's allocator
  (``max_memory_allocated`` / ``max_memory_reserved``), the device's used memory sampled every
  20 ms from ``torch.cuda.mem_get_info`` (it also sees what bypasses torch's allocator, e.g.
  comfy-aimdo's dynamic-VRAM weights), the process's peak and current RSS (Linux VmHWM, VmRSS); whether dynamic
  VRAM is active (``comfy.memory_management.aimdo_enabled``; None where ComfyUI has none), the
  ModelPatcher class in use, how many models are loaded and whether queue flags (a /free) are
  still waiting for the worker.
- ``POST /videoedit_gpucheck/reset``: start new peaks (torch's counters, VmHWM via
  /proc/self/clear_refs, the sampler).
- node ``GPUCheckImageStats``: finiteness and blankness of an IMAGE (image_stats.py), as a UI
  output, so NaN is caught before a video writer turns it into black pixels.

Routes are registered only when the module runs inside a started ComfyUI server (``server`` already
imported with an instance); importing it elsewhere (the tests) has no side effect.
"""
from __future__ import annotations

import os
import sys
import threading

from .image_stats import image_stats

ROUTE = "/videoedit_gpucheck"
SAMPLE_SECONDS = 0.02


class GPUCheckImageStats:
    DESCRIPTION = ("gpucheck's output check: records whether an IMAGE batch is finite (no NaN/inf) and whether "
                   "every frame is flat, as a UI output. A harness probe, not part of ComfyUI-VideoEdit.")
    CATEGORY = "gpucheck"
    FUNCTION = "measure"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE", {"tooltip": "The frames to check (before they are quantised)."})}}

    def measure(self, images):
        return {"ui": {"gpucheck_stats": [image_stats(images)]}}


NODE_CLASS_MAPPINGS = {"GPUCheckImageStats": GPUCheckImageStats}
NODE_DISPLAY_NAME_MAPPINGS = {"GPUCheckImageStats": "gpucheck: image stats"}


class _DeviceSampler:
    """Highest device memory in use (total - free, every process on the device) since reset."""

    def __init__(self, device):
        self.device = device
        self.peak = 0
        self._lock = threading.Lock()
        self._thread = None

    def _used(self) -> int:
        import torch
        free, total = torch.cuda.mem_get_info(self.device)
        return int(total - free)

    def reset(self) -> None:
        with self._lock:
            self.peak = self._used()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gpucheck-vram-sampler", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        import time
        while True:
            used = self._used()
            with self._lock:
                self.peak = max(self.peak, used)
            time.sleep(SAMPLE_SECONDS)


_sampler: _DeviceSampler | None = None


def _cuda_device():
    import comfy.model_management as mm
    import torch
    dev = mm.get_torch_device()
    return dev if isinstance(dev, torch.device) and dev.type == "cuda" else None


def _host_rss(field: str) -> int | None:
    """VmHWM (peak) or VmRSS (now) of this process, in bytes (Linux; None elsewhere)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _dynamic_vram():
    """(active, ModelPatcher class name); active is None where this ComfyUI has no dynamic VRAM."""
    import comfy.model_patcher as mp
    try:
        import comfy.memory_management as memory
    except ImportError:
        memory = None
    active = getattr(memory, "aimdo_enabled", None) if memory is not None else None
    patcher = getattr(mp, "CoreModelPatcher", mp.ModelPatcher)
    return (None if active is None else bool(active)), patcher.__name__


def state(prompt_queue=None) -> dict:
    import comfy.model_management as mm
    import torch
    dev = _cuda_device()
    active, patcher = _dynamic_vram()
    out = {
        "pid": os.getpid(),
        "device": str(mm.get_torch_device()),
        "cuda": dev is not None,
        "torch_version": torch.__version__,
        "dynamic_vram": active,
        "model_patcher": patcher,
        "loaded_models": len(getattr(mm, "current_loaded_models", [])),
        "pending_flags": bool(getattr(prompt_queue, "flags", None)),
        "host_peak_rss": _host_rss("VmHWM"),
        "host_rss": _host_rss("VmRSS"),
        "torch_peak_allocated": None, "torch_peak_reserved": None, "device_used_peak": None,
    }
    if dev is not None:
        out["torch_peak_allocated"] = int(torch.cuda.max_memory_allocated(dev))
        out["torch_peak_reserved"] = int(torch.cuda.max_memory_reserved(dev))
        out["device_used_peak"] = _sampler.peak if _sampler is not None else None
        out["device_name"] = torch.cuda.get_device_name(dev)
    return out


def reset() -> None:
    global _sampler
    import torch
    dev = _cuda_device()
    if dev is not None:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        if _sampler is None:
            _sampler = _DeviceSampler(dev)
        _sampler.reset()
    try:  # Linux: "5" resets the peak resident set size (VmHWM) to the current one
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        pass


def _register_routes(prompt_server) -> None:
    from aiohttp import web

    @prompt_server.routes.get(f"{ROUTE}/state")
    async def _state(request):
        return web.json_response(state(getattr(prompt_server, "prompt_queue", None)))

    @prompt_server.routes.post(f"{ROUTE}/reset")
    async def _reset(request):
        reset()
        return web.json_response(state(getattr(prompt_server, "prompt_queue", None)))


_server_module = sys.modules.get("server")
_instance = getattr(getattr(_server_module, "PromptServer", None), "instance", None)
if _instance is not None:
    _register_routes(_instance)

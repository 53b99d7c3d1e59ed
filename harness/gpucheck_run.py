"""One shipped workflow on a ComfyUI server, timed, memory-measured and checked: the runner behind
``./videoedit gpucheck`` (harness/gpucheck.py) and tests/test_workflows.py, so CI runs this code
on every template at the CPU size.

    check = CheckServer(server, base)              # base: where the server's files live, or None
    run = run_workflow(check, path, clip, mode="cpu", size=64)
    run.ok, run.seconds, run.memory, run.checks    # run.result: the server's RunResult

What a run does to the template (nothing is written back):
- every LoadVideo reads ``clip`` (a file in the server's input folder);
- every trainer (a node with ``steps``, ``output_name`` and ``resume`` inputs) does one step:
  ``steps`` (and ``v_steps``) 1, ``batch_size`` 1, ``resolution`` = ``size``, ``resume`` off, and
  saves under ``output_name`` = gpucheck_<workflow>_<mode>, never over a user's file (over its own
  file of an earlier check: ``overwrite`` on);
- ``input_overrides`` sets an input on every node that has it, ``overrides`` are the runner's
  NODE.INPUT=VALUE strings (harness.workflow_api.apply_overrides);
- each IMAGE that reaches an output node or a node making a VIDEO also feeds the probe's
  GPUCheckImageStats node (harness/gpucheck_probe), which reports NaN/inf and flat frames before
  the video writer quantises them. Loader file names come from the workflow itself.

Measurements: the wall time from queueing to the end; with the probe, the peaks it records
in the server process between its reset and the end (torch allocator, device use sampled every
20 ms, process peak RSS); without it (a server gpucheck did not start), device use sampled
every 0.5 s from /system_stats, which is coarse and sees every process on the GPU.
"""
from __future__ import annotations

import copy
import json
import tempfile
import threading
import time
import urllib.error
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .gpucheck_probe import ROUTE as PROBE_ROUTE
from .gpucheck_probe.image_stats import image_stats
from .sample_clip import read_video
from .server import ComfyServer, ComfyServerError, RunResult
from .workflow_api import apply_overrides, load_workflow, to_api

PROBE_NODE = "GPUCheckImageStats"
TRAINER_INPUTS = frozenset({"steps", "output_name", "resume"})
SETTLE_TIMEOUT = 600.0
UNLOAD_WAIT = 10.0
SAMPLE_SECONDS = 0.5


@dataclass
class OutputCheck:
    what: str                  # e.g. "IMAGE 12 VAEDecode -> CreateVideo", "video ...mp4", "weights ...safetensors"
    finite: bool | None        # None: nothing could be read
    blank: bool = False        # every frame flat (NaN/inf written as 8-bit look like this)
    detail: dict = field(default_factory=dict)
    # a decoded video's blankness is the only NaN signal when no probe looked at the frames before
    # they were quantised; with one, a blank video is what a random-weight decoder can make
    blank_fails: bool = True

    @property
    def good(self) -> bool:
        return self.finite is True and not (self.blank and self.blank_fails)


@dataclass
class WorkflowRun:
    workflow: str
    mode: str
    ok: bool = False                  # the server ran it to the end
    seconds: float | None = None
    error: str | None = None
    memory: dict = field(default_factory=dict)
    dynamic_vram: bool | None = None  # as the probe saw it; None: no such thing here, or no probe
    checks: list[OutputCheck] = field(default_factory=list)
    # not in the JSON: what the tests look at
    result: RunResult | None = None
    prompt: dict = field(default_factory=dict)
    videos: list = field(default_factory=list)   # [(frames [F, H, W, 3] in 0..1, fps)]

    @property
    def outputs_good(self) -> bool:
        return self.ok and bool(self.checks) and all(c.good for c in self.checks)

    def to_json(self) -> dict:
        d = asdict(self)
        for k in ("result", "prompt", "videos"):
            d.pop(k)
        d["outputs_good"] = self.outputs_good
        return d


class CheckServer:
    """A ComfyUI server that gpucheck runs workflows on and measures."""

    def __init__(self, server: ComfyServer, base: Path | None = None):
        self.server = server
        self.base = Path(base) if base is not None else None
        self.object_info = server.object_info()
        self.probe = PROBE_NODE in self.object_info and self.probe_state() is not None

    def probe_state(self) -> dict | None:
        try:
            return self.server.get_json(f"{PROBE_ROUTE}/state")
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    def system_stats(self) -> dict:
        return self.server.get_json("/system_stats")

    def settle(self) -> None:
        """Unload every model and drop the node cache (core's /free), as after a restart, and wait
        until the worker has done it, so each workflow starts cold and its peaks are its own."""
        self.server.free()
        if not self.probe:
            time.sleep(1.0)  # the worker takes the flags at once when idle; nothing tells when it is done
            return
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while self.probe_state()["pending_flags"]:  # the worker takes them when it is idle
            if time.monotonic() > deadline:
                raise ComfyServerError(f"the server's worker did not take the /free within {SETTLE_TIMEOUT:.0f} s")
            time.sleep(0.1)
        # then unloads; a ComfyUI that keeps some model registered must not stall the check, so
        # this wait is bounded and not an error
        deadline = time.monotonic() + UNLOAD_WAIT
        while self.probe_state()["loaded_models"] and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)  # the worker's gc.collect / empty_cache right after the unload

    def start_measuring(self):
        """Reset the peaks; returns a function that stops measuring and returns them."""
        if self.probe:
            at_start = json.loads(self.server._request(f"{PROBE_ROUTE}/reset", data=b"{}"))

            def stop() -> dict:
                st = self.probe_state()
                # the RSS the process already had (ComfyUI itself, memory glibc kept) is in the peak
                return {"source": "probe", "host_rss_at_start": at_start.get("host_rss"), **{k: st.get(k) for k in (
                    "torch_peak_allocated", "torch_peak_reserved", "device_used_peak", "host_peak_rss")}}
            return stop
        return _StatsSampler(self).start()


class _StatsSampler:
    """Peak device use from /system_stats, polled from outside (no probe in that server)."""

    def __init__(self, check: CheckServer):
        self.check = check
        self.peak_used = self.peak_torch = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpucheck-stats-sampler", daemon=True)

    def _sample(self) -> None:
        dev = (self.check.system_stats().get("devices") or [{}])[0]
        if dev.get("type") != "cuda":
            return
        used = dev["vram_total"] - dev["vram_free"]
        torch_used = dev["torch_vram_total"] - dev["torch_vram_free"]
        self.peak_used = max(self.peak_used or 0, used)
        self.peak_torch = max(self.peak_torch or 0, torch_used)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            try:
                self._sample()
            except (OSError, ValueError, KeyError):
                pass

    def start(self):
        self._sample()
        self._thread.start()

        def stop() -> dict:
            self._stop.set()
            self._thread.join()
            return {"source": f"/system_stats every {SAMPLE_SECONDS} s", "torch_peak_allocated": self.peak_torch,
                    "torch_peak_reserved": None, "device_used_peak": self.peak_used, "host_peak_rss": None}
        return stop


# ------------------------------------------------------------------------ the prompt

def _input_names(node_def: dict) -> set[str]:
    inputs = node_def.get("input") or {}
    return {n for section in ("required", "optional") for n in (inputs.get(section) or {})}


def trainer_ids(prompt: dict, object_info: dict) -> list[str]:
    return [nid for nid, n in prompt.items()
            if TRAINER_INPUTS <= _input_names(object_info.get(n["class_type"], {}))]


def trainer_output_name(workflow: str, mode: str) -> str:
    return f"gpucheck_{workflow}_{mode}".replace("-", "_")


def add_image_stats(prompt: dict, object_info: dict) -> dict[str, str]:
    """Feed every IMAGE that reaches an output node, or a node that makes a VIDEO, into a
    GPUCheckImageStats node too; returns {new node id: what it looks at}."""
    sources: dict[tuple[str, int], str] = {}
    for nid, node in prompt.items():
        ndef = object_info.get(node["class_type"], {})
        if not (ndef.get("output_node") or "VIDEO" in (ndef.get("output") or [])):
            continue
        for value in node["inputs"].values():
            if not (isinstance(value, list) and len(value) == 2 and str(value[0]) in prompt):
                continue
            src = prompt[str(value[0])]
            outputs = object_info.get(src["class_type"], {}).get("output") or []
            if value[1] < len(outputs) and outputs[value[1]] == "IMAGE":
                sources.setdefault((str(value[0]), value[1]),
                                   f"IMAGE {value[0]} {src['class_type']}[{value[1]}] -> {node['class_type']}")
    first = max((int(k) for k in prompt if k.isdigit()), default=0) + 1000
    added = {}
    for i, ((src, slot), what) in enumerate(sorted(sources.items())):
        sid = str(first + i)
        prompt[sid] = {"class_type": PROBE_NODE, "inputs": {"images": [src, slot]}, "_meta": {"title": "gpucheck stats"}}
        added[sid] = what
    return added


def prepare_prompt(workflow: dict, object_info: dict, clip: str, *, name: str, mode: str, size: int | None = None,
                   overrides=(), input_overrides: dict | None = None, stats: bool = True):
    """The API prompt gpucheck runs (see the module docstring); returns (prompt, stats nodes, trainers)."""
    prompt = to_api(workflow, object_info)
    loaders = [nid for nid, n in prompt.items() if n["class_type"] == "LoadVideo"]
    if not loaders:
        raise ValueError(f"{name}: the workflow loads no video (no LoadVideo node)")
    for nid in loaders:
        prompt[nid]["inputs"]["file"] = clip
    trainers = trainer_ids(prompt, object_info)
    for nid in trainers:
        names = _input_names(object_info[prompt[nid]["class_type"]])
        inputs = prompt[nid]["inputs"]
        inputs.update(steps=1, resume=False, output_name=trainer_output_name(name, mode))
        # overwrite: the file is gpucheck's own (gpucheck_<workflow>_<mode>), from an earlier check
        for key, value in (("v_steps", 1), ("batch_size", 1), ("resolution", size), ("overwrite", True)):
            if key in names and value is not None:
                inputs[key] = value
    for key, value in (input_overrides or {}).items():
        for node in prompt.values():
            if key in node["inputs"]:
                node["inputs"][key] = copy.deepcopy(value)
    prompt = apply_overrides(prompt, list(overrides), object_info)
    added = add_image_stats(prompt, object_info) if stats else {}
    return prompt, added, trainers


# ------------------------------------------------------------------------ the checks

def _video_check(server: ComfyServer, video: dict, expect: tuple | None, blank_fails: bool):
    with tempfile.TemporaryDirectory(prefix="gpucheck-") as tmp:
        path = Path(tmp) / "out.mp4"
        path.write_bytes(server.view(**video))
        frames, fps = read_video(path)
    stats = image_stats(frames)
    what = f"video {video.get('subfolder', '')}/{video['filename']}".replace(" /", " ")
    shape_ok = expect is None or tuple(frames.shape[:3]) == tuple(expect)
    stats.update(fps=fps, expected_shape=list(expect) if expect else None)
    check = OutputCheck(what, finite=stats["finite"] and shape_ok, blank=stats["blank"], detail=stats,
                        blank_fails=blank_fails)
    if not shape_ok:
        check.detail["problem"] = f"shape {list(frames.shape[:3])}, expected {list(expect)}"
    return check, (frames, fps)


def _weights_checks(base: Path, output_name: str, since: float) -> list[OutputCheck]:
    """Every safetensors file a trainer wrote under ``output_name`` in this run, every tensor finite."""
    from safetensors import safe_open
    import torch
    found = [p for p in sorted(base.rglob("*.safetensors"))
             if (p.stem == output_name or p.parent.name == output_name) and p.stat().st_mtime >= since - 1]
    if not found:
        return [OutputCheck(f"weights {output_name}", finite=None,
                            detail={"problem": f"the trainer saved no {output_name}*.safetensors under {base}"})]
    checks = []
    for p in found:
        bad, n = [], 0
        with safe_open(str(p), framework="pt") as f:
            for key in f.keys():
                t = f.get_tensor(key)
                n += 1
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    bad.append(key)
        checks.append(OutputCheck(f"weights {p.relative_to(base)}", finite=not bad,
                                  detail={"tensors": n, "nonfinite_tensors": bad[:10]}))
    return checks


def run_workflow(check: CheckServer, path: Path, clip: str, *, mode: str, size: int | None = None,
                 expect_shape: tuple | None = None, overrides=(), input_overrides: dict | None = None,
                 timeout: float = 600, progress=None) -> WorkflowRun:
    """Run one workflow from a cold server and return what was measured and checked.

    ``expect_shape``: (frames, height, width) every saved video must have. Server errors are
    recorded in the result (``ok`` False, ``error``), not raised; bad arguments are raised.
    ``progress``: called with the prompt, returns the websocket-message callback (e.g.
    harness.runner's progress printer)."""
    path = Path(path)
    run = WorkflowRun(path.stem, mode)
    prompt, stats_nodes, trainers = prepare_prompt(
        load_workflow(path), check.object_info, clip, name=path.stem, mode=mode, size=size,
        overrides=overrides, input_overrides=input_overrides, stats=check.probe)
    run.prompt = prompt
    try:
        check.settle()
        stop = check.start_measuring()
        started = time.time()
        t0 = time.monotonic()
        try:
            run.result = check.server.run(prompt, timeout=timeout, on_message=progress(prompt) if progress else None)
            run.ok = True
        finally:
            run.seconds = round(time.monotonic() - t0, 2)
            if check.server.proc is None or check.server.proc.poll() is None:
                try:
                    run.memory = stop()
                except OSError as e:
                    run.memory = {"problem": f"peaks not read: {e}"}
    except (ComfyServerError, OSError) as e:  # OSError: the server stopped answering HTTP
        run.ok = False
        run.error = f"{type(e).__name__}: {e}" if isinstance(e, OSError) else str(e)
        if check.server.proc is None or check.server.proc.poll() is None:
            try:
                check.server.interrupt()  # a prompt past its timeout must not hold up the next workflow
            except OSError:
                pass
        return run
    if check.probe:
        run.dynamic_vram = check.probe_state()["dynamic_vram"]
    outputs = run.result.outputs
    for sid, what in stats_nodes.items():
        reported = (outputs.get(sid) or {}).get("gpucheck_stats") or []
        if not reported:
            run.checks.append(OutputCheck(what, finite=None, detail={"problem": "the stats node reported nothing"}))
        for stats in reported:
            run.checks.append(OutputCheck(what, finite=stats["finite"], blank=stats["blank"], detail=stats))
    for video in run.result.videos():
        vcheck, decoded = _video_check(check.server, video, expect_shape, blank_fails=not stats_nodes)
        run.checks.append(vcheck)
        run.videos.append(decoded)
    if trainers and check.base is not None:
        for nid in trainers:
            run.checks += _weights_checks(check.base, prompt[nid]["inputs"]["output_name"], started)
    return run

"""./videoedit gpucheck: every shipped workflow, and one step of each trainer, on a real ComfyUI:
seconds, peak memory and whether the outputs are finite, as a markdown table on stdout and in
out/gpucheck.md + out/gpucheck.json (or --json PATH).

    ./videoedit gpucheck                              the embedded ComfyUI (0.3.75) in this venv
    ./videoedit gpucheck --comfyui ~/ComfyUI [--python ~/ComfyUI/venv/bin/python]
                                                      your checkout, started with its own python
    ./videoedit gpucheck --server http://127.0.0.1:8188   a server that is already running
    options: --only NAME (repeatable), --size N, --frames N, --device auto|cpu|cuda,
             --vram auto|on|off|both, --precision fp16|default, --set INPUT=VALUE, --base DIR;
             anything else is passed to the ComfyUI it starts

On CUDA (the target's torch sees a GPU): a 512x512 clip, fp16 through ComfyUI's own flags
(--fp16-unet --fp16-vae --fp16-text-enc), and, where that ComfyUI has the switch (read from its
``main.py --help``: --disable-dynamic-vram), each workflow twice: dynamic VRAM as ComfyUI
starts it by default, and with --disable-dynamic-vram. Whether it was really on is read from
the server process (the probe), not assumed. On CPU: a 64x64 clip at fp32, one mode; this is
what CI runs (tests/test_workflows.py drives harness.gpucheck_run the same way).

gpucheck starts the server itself (one per mode) on a base directory of its own with the pack,
the probe (harness/gpucheck_probe) and the random-weight fixtures linked, so it measures inside
the server process. --server cannot do that unless the probe is linked into that server's
custom_nodes: it then samples /system_stats, runs in whatever mode the server was started in,
unloads the server's models between workflows (/free) and writes gpucheck_* training outputs
into its model folders.
"""
from __future__ import annotations

import argparse
import datetime
import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import embedded
from .embedded import REPO_ROOT
from .gpucheck_run import CheckServer, WorkflowRun, run_workflow
from .pack import import_pack
from .server import ComfyServer, ComfyServerError

import_pack()
from videoedit.nodes.core.atomic_file import atomic_write_bytes  # noqa: E402

WORKFLOWS_DIR = REPO_ROOT / "example_workflows"
PROBE_LINK_NAME = "videoedit-gpucheck-probe"
PROBE_DIR = Path(__file__).resolve().parent / "gpucheck_probe"
DEFAULT_BASE = REPO_ROOT / ".comfy" / "gpucheck-base"
DEFAULT_JSON = REPO_ROOT / "out" / "gpucheck.json"
SIZES = {"cuda": 512, "cpu": 64}
FRAMES = 8
FP16_FLAGS = ("--fp16-unet", "--fp16-vae", "--fp16-text-enc")
DYNAMIC_OFF = "--disable-dynamic-vram"
GiB = 1024 ** 3


@dataclass
class Mode:
    key: str                  # row label: cpu, dynamic-on, dynamic-off, static, as-running
    args: list[str]           # ComfyUI flags that select it
    wants_dynamic: bool | None = None


@dataclass
class Target:
    """The ComfyUI gpucheck runs: a checkout started with a python, or a running server (url)."""
    comfyui: Path | None = None
    python: str | None = None
    url: str | None = None
    flags: set[str] = field(default_factory=set)
    device: str = "cpu"
    versions: dict = field(default_factory=dict)


# ------------------------------------------------------------------- what the target supports

def parse_flags(help_text: str) -> set[str]:
    """Every --option named in argparse help or in cli_args.py source."""
    return set(re.findall(r"(?<![\w-])(--[A-Za-z0-9][\w-]*)", help_text))


def comfy_flags(python: str, comfyui: Path) -> set[str]:
    """The command-line flags this ComfyUI accepts: its own ``main.py --help`` (cli_args parses
    before torch is imported, so it is quick), else the text of comfy/cli_args.py."""
    try:
        r = subprocess.run([python, "main.py", "--help"], cwd=comfyui, capture_output=True, text=True, timeout=120)
        if r.returncode == 0 and "--port" in r.stdout:
            return parse_flags(r.stdout)
    except (OSError, subprocess.TimeoutExpired):
        pass
    cli_args = comfyui / "comfy" / "cli_args.py"
    if cli_args.is_file():
        return parse_flags(cli_args.read_text(errors="replace"))
    raise SystemExit(f"{comfyui}: cannot read ComfyUI's flags (`{python} main.py --help` failed and there is "
                     "no comfy/cli_args.py); is this a ComfyUI checkout, and is --python its interpreter?")


_ENV_PROBE = ("import json, importlib.metadata as m, torch\n"
              "def v(n):\n    try: return m.version(n)\n    except m.PackageNotFoundError: return None\n"
              "print(json.dumps({'cuda': torch.cuda.is_available(), 'torch': torch.__version__,"
              " 'frontend': v('comfyui-frontend-package')}))")


def python_env(python: str) -> dict:
    """torch's version and CUDA availability, and the frontend package, as the target's python sees them."""
    r = subprocess.run([python, "-c", _ENV_PROBE], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise SystemExit(f"{python} cannot import torch: {r.stderr.strip()[-500:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def comfyui_version(comfyui: Path) -> str | None:
    f = comfyui / "comfyui_version.py"
    m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", f.read_text()) if f.is_file() else None
    return m.group(1) if m else None


def vram_modes(flags: set[str], device: str, want: str = "auto") -> tuple[list[Mode], str]:
    """The runs per workflow and a sentence saying why."""
    if device == "cpu":
        return [Mode("cpu", [])], "CPU: no VRAM, dynamic VRAM does not apply (ComfyUI turns it off with --cpu)"
    if DYNAMIC_OFF not in flags:
        if want in ("on", "both"):
            raise SystemExit(f"--vram {want}: this ComfyUI has no dynamic VRAM (no {DYNAMIC_OFF} flag)")
        return [Mode("static", [])], (f"this ComfyUI has no dynamic VRAM (no {DYNAMIC_OFF} flag in its --help): "
                                      "one mode, its estimate-based model loading")
    on, off = Mode("dynamic-on", [], True), Mode("dynamic-off", [DYNAMIC_OFF], False)
    chosen = {"auto": [on, off], "both": [on, off], "on": [on], "off": [off]}[want]
    return chosen, (f"dynamic VRAM: 'on' is ComfyUI's default start (nothing passed), 'off' passes {DYNAMIC_OFF}; "
                    "the row says whether the server really ran with it")


def precision_args(flags: set[str], device: str, precision: str) -> tuple[list[str], str]:
    if device == "cpu" or precision == "default":
        return [], "ComfyUI's default dtypes" + (" (fp32 on CPU)" if device == "cpu" else "")
    missing = [f for f in FP16_FLAGS if f not in flags]
    if missing:
        raise SystemExit(f"--precision fp16: this ComfyUI lacks {', '.join(missing)}; use --precision default")
    return list(FP16_FLAGS), "fp16 UNet, VAE and text encoder (" + " ".join(FP16_FLAGS) + ")"


def find_python(comfyui: Path) -> str:
    """The interpreter a ComfyUI checkout runs with: its venv if it has one, else this one."""
    for cand in (comfyui / "venv" / "bin" / "python", comfyui / ".venv" / "bin" / "python",
                 comfyui / "venv" / "Scripts" / "python.exe", comfyui.parent / "python_embeded" / "python.exe"):
        if cand.is_file():
            return str(cand)
    return sys.executable


def parse_input(text: str) -> tuple[str, object]:
    """"INPUT=VALUE" -> (INPUT, VALUE); VALUE is JSON if it parses, else the text."""
    name, sep, raw = text.partition("=")
    if not sep or not name.strip() or "." in name:
        raise argparse.ArgumentTypeError(f"'{text}': expected INPUT=VALUE, e.g. frames_per_chunk=4")
    try:
        return name.strip(), json.loads(raw)
    except ValueError:
        return name.strip(), raw


def select_workflows(only: list[str]) -> list[Path]:
    shipped = sorted(WORKFLOWS_DIR.glob("*.json"))
    if not only:
        return shipped
    by_name = {p.stem: p for p in shipped}
    unknown = [n for n in only if Path(n).stem not in by_name]
    if unknown:
        raise SystemExit(f"--only {', '.join(unknown)}: no such workflow (one of: {', '.join(by_name)})")
    return [by_name[Path(n).stem] for n in only]


# ------------------------------------------------------------------------------- the clip

def write_clip(path: Path, size: int, frames: int) -> Path:
    """The sample clip (harness.sample_clip: the photo panned by (2, 1) px per frame) at size x size.
    The photo is 512 px, so a window that cannot pan inside it is cut at half size and upscaled."""
    import torch
    from .sample_clip import panned_frames, write_mp4
    src = size
    while src + 2 * (frames - 1) > 512:
        src //= 2
    if src < 8:
        raise SystemExit(f"--size {size} with --frames {frames}: the pan does not fit the 512 px photo")
    clip, _ = panned_frames(frames, src, shift=(2, 1))
    if src != size:
        clip = torch.nn.functional.interpolate(clip.permute(0, 3, 1, 2), size=(size, size), mode="bilinear",
                                               align_corners=False).permute(0, 2, 3, 1).clamp(0, 1)
    return write_mp4(clip, path, fps=8)


def install_probe(base: Path) -> Path:
    """Link gpucheck's probe into ``base``'s custom_nodes (the server loads it at start)."""
    link = Path(base) / "custom_nodes" / PROBE_LINK_NAME
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and link.resolve() != PROBE_DIR:
        link.unlink()
    if not link.exists():
        link.symlink_to(PROBE_DIR, target_is_directory=True)
    return link


# ------------------------------------------------------------------------------- the table

def _gib(v) -> str:
    return "-" if v is None else f"{v / GiB:.2f}"


def verdict(run: WorkflowRun) -> str:
    if not run.ok:
        first = (run.error or "failed").strip().splitlines()[0]
        return "FAILED: " + (first[:120] + "..." if len(first) > 120 else first)
    bad = [c for c in run.checks if not c.good]
    if not run.checks:
        return "NOT CHECKED: no output was reported"
    if not bad:
        return "finite"
    parts = []
    for c in bad:
        why = ("NaN/inf" if c.finite is False else "blank" if c.blank else
               c.detail.get("problem", "unreadable"))
        parts.append(f"{why}: {c.what}")
    return "; ".join(parts)


def dynamic_label(run: WorkflowRun, mode: Mode) -> str:
    if run.dynamic_vram is None:
        return mode.key
    got = "on" if run.dynamic_vram else "off"
    if mode.wants_dynamic is not None and mode.wants_dynamic != run.dynamic_vram:
        return f"{mode.key} (ran {got}!)"
    return mode.key if mode.key.startswith("dynamic") else f"{mode.key} (dynamic {got})"


def format_table(rows: list[tuple[WorkflowRun, Mode]]) -> str:
    head = ("| workflow | VRAM mode | seconds | peak VRAM, torch allocated (GiB) | peak VRAM, device used (GiB) "
            "| peak RSS (GiB) | outputs |")
    lines = [head, "|" + "---|" * 7]
    for run, mode in rows:
        m = run.memory
        secs = "-" if run.seconds is None else f"{run.seconds:.1f}"
        lines.append(f"| {run.workflow} | {dynamic_label(run, mode)} | {secs} | {_gib(m.get('torch_peak_allocated'))} "
                     f"| {_gib(m.get('device_used_peak'))} | {_gib(m.get('host_peak_rss'))} | {verdict(run)} |")
    return "\n".join(lines)


COLUMN_NOTES = """\
Columns: seconds from queueing to the end of the run, cold (models unloaded and node cache cleared
before each workflow, so loading from disk is included); peak VRAM, torch allocated: torch's
max_memory_allocated in the server process (weights comfy-aimdo holds for dynamic VRAM are not in it);
peak VRAM, device used: total minus free on the device, sampled every 20 ms (every process on the GPU,
the CUDA context included); peak RSS: the server process's peak resident memory (Linux VmHWM), which
includes what it already held at the start (ComfyUI itself, freed memory glibc kept: host_rss_at_start);
outputs: every IMAGE reaching an output or a video checked for NaN/inf and flat frames before it is
written, every saved video decoded (size and frame count; all-flat fails only where no probe saw the
frames before they were written), every trained weight file read back and checked finite."""


def report(header: dict, rows: list[tuple[WorkflowRun, Mode]]) -> str:
    lines = [f"# gpucheck {header['date']}", ""]
    for key in ("command", "comfyui", "frontend", "torch", "device", "clip", "precision", "modes"):
        if header.get(key):
            lines.append(f"- {key}: {header[key]}")
    if header.get("memory_source"):
        lines.append(f"- memory: {header['memory_source']}")
    return "\n".join(lines + ["", format_table(rows), "", COLUMN_NOTES, ""])


# ------------------------------------------------------------------------------- running

def _print(msg: str) -> None:
    print(msg, flush=True)


def _server_versions(check: CheckServer) -> dict:
    stats = check.system_stats()
    system, dev = stats.get("system", {}), (stats.get("devices") or [{}])[0]
    out = {"comfyui": system.get("comfyui_version"), "torch": system.get("pytorch_version"),
           "device": dev.get("name"), "frontend_required": system.get("required_frontend_version")}
    if check.probe:
        st = check.probe_state()
        out["device"] = st.get("device_name") or out["device"]
        out["model_patcher"] = st.get("model_patcher")
    return out


def run_mode(target: Target, mode: Mode, base: Path, clip: str, workflows: list[Path], args, extra: list[str],
             header: dict) -> list[tuple[WorkflowRun, Mode]]:
    from .runner import _progress_printer
    rows = []
    server = None

    def start():
        srv = ComfyServer(base, extra_args=[*mode.args, *extra], python=target.python, comfyui=target.comfyui,
                          cpu=target.device == "cpu", startup_timeout=600,
                          log_path=base / "user" / f"gpucheck-{mode.key}.log")
        cmd = embedded.server_command(base, srv.port, srv.extra_args, srv.python, srv.comfyui, srv.cpu)
        _print(f"[{mode.key}] starting ComfyUI: {shlex.join(cmd)}")
        return srv.start()

    try:
        server = ComfyServer.attach(target.url) if target.url else start()
        check = CheckServer(server, None if target.url else base)
        header.setdefault("servers", {})[mode.key] = _server_versions(check)
        header["memory_source"] = ("measured in the server process (gpucheck probe)" if check.probe else
                                   "sampled from /system_stats every 0.5 s (no gpucheck probe in that server)")
        for i, path in enumerate(workflows, 1):
            _print(f"[{mode.key}] {i}/{len(workflows)} {path.stem}")
            try:
                run = run_workflow(check, path, clip, mode=mode.key, size=args.size,
                                   expect_shape=(args.frames, args.size, args.size), input_overrides=args.inputs,
                                   timeout=args.timeout, progress=None if args.quiet else _progress_printer)
            except OSError as e:  # reading its outputs failed: the server stopped answering
                run = WorkflowRun(path.stem, mode.key, error=f"{type(e).__name__} reading the results: {e}")
            rows.append((run, mode))
            mem = run.memory
            _print(f"[{mode.key}] {path.stem}: {verdict(run)}; {run.seconds} s, peak VRAM torch "
                   f"{_gib(mem.get('torch_peak_allocated'))} / device {_gib(mem.get('device_used_peak'))} GiB, "
                   f"peak RSS {_gib(mem.get('host_peak_rss'))} GiB")
            if server.proc is not None and server.proc.poll() is not None:
                _print(f"[{mode.key}] the server died (code {server.proc.returncode}); log tail:\n{server.log_tail(30)}")
                server.stop()
                if i < len(workflows):
                    server = start()
                    check = CheckServer(server, base)
    except ComfyServerError as e:
        _print(f"[{mode.key}] {e}")
        done = {r.workflow for r, _ in rows}
        rows += [(WorkflowRun(p.stem, mode.key, error=f"not run: {str(e).splitlines()[0]}"), mode)
                 for p in workflows if p.stem not in done]
    finally:
        if server is not None and not target.url:
            server.stop()
    return rows


def resolve_target(args) -> Target:
    if args.server:
        if args.comfyui or args.python:
            raise SystemExit("--server talks to a running ComfyUI; --comfyui/--python start one: pick one")
        return Target(url=args.server.rstrip("/"))
    comfyui = Path(args.comfyui).expanduser().resolve() if args.comfyui else embedded.find_comfyui()
    if not (comfyui / "main.py").is_file():
        raise SystemExit(f"--comfyui {comfyui}: not a ComfyUI checkout (no main.py)")
    python = args.python or (find_python(comfyui) if args.comfyui else sys.executable)
    env = python_env(python)
    device = args.device if args.device != "auto" else ("cuda" if env["cuda"] else "cpu")
    if device == "cuda" and not env["cuda"]:
        raise SystemExit(f"--device cuda: torch {env['torch']} in {python} sees no CUDA device")
    if not env["cuda"] and shutil.which("nvidia-smi"):
        _print(f"WARNING: this machine has nvidia-smi but torch {env['torch']} in {python} sees no CUDA device "
               "(a driver older than that torch's CUDA build?); checking on the CPU")
    return Target(comfyui, python, None, comfy_flags(python, comfyui), device,
                  {"comfyui": comfyui_version(comfyui), "torch": env["torch"], "frontend": env["frontend"]})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="./videoedit gpucheck", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfyui", help="a ComfyUI checkout to start (default: the embedded one)")
    ap.add_argument("--python", help="the interpreter for --comfyui (default: its venv/.venv, else this one)")
    ap.add_argument("--server", help="a running ComfyUI, http://HOST:PORT (measured from outside)")
    ap.add_argument("--only", action="append", default=[], metavar="WORKFLOW", help="run only this workflow (repeatable)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--size", type=int, help="clip width = height (default 512 on CUDA, 64 on CPU)")
    ap.add_argument("--frames", type=int, default=FRAMES, help=f"clip frames (default {FRAMES})")
    ap.add_argument("--vram", choices=("auto", "on", "off", "both"), default="auto",
                    help="dynamic VRAM modes to run where the ComfyUI has them (auto = both)")
    ap.add_argument("--precision", choices=("fp16", "default"), default="fp16", help="on CUDA (CPU runs fp32)")
    ap.add_argument("--set", dest="inputs", action="append", default=[], metavar="INPUT=VALUE", type=parse_input,
                    help="set this input on every node that has it, in every workflow (VALUE: JSON or text)")
    ap.add_argument("--base", type=Path, default=DEFAULT_BASE, help=f"ComfyUI base directory (default {DEFAULT_BASE})")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help="results (a .md table is written next to it)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per workflow")
    ap.add_argument("--quiet", action="store_true", help="no per-node progress lines")
    args, extra = ap.parse_known_args(argv)
    args.inputs = dict(args.inputs)
    if extra and args.server:
        ap.error(f"ComfyUI flags ({' '.join(extra)}) cannot be passed to a running --server")
    workflows = select_workflows(args.only)
    target = resolve_target(args)
    header = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": shlex.join(["./videoedit", "gpucheck", *(sys.argv[1:] if argv is None else argv)])}

    if target.url:
        probe_server = ComfyServer.attach(target.url)
        dev = (probe_server.get_json("/system_stats").get("devices") or [{}])[0]
        target.device = "cuda" if dev.get("type") == "cuda" else "cpu"
        modes, why = [Mode("as-running", [])], "the server's own (gpucheck cannot restart a --server)"
        precision, precision_note = [], "the server's own"
    else:
        modes, why = vram_modes(target.flags, target.device, args.vram)
        precision, precision_note = precision_args(target.flags, target.device, args.precision)
    args.size = args.size or SIZES[target.device]
    if args.size % 8:
        ap.error(f"--size {args.size}: must be a multiple of 8 (latent size)")
    header.update(precision=precision_note, modes=why, clip=f"{args.size}x{args.size}, {args.frames} frames")

    clip_name = f"gpucheck_{args.size}px_{args.frames}f.mp4"
    if target.url:
        import tempfile
        base = None
        with tempfile.TemporaryDirectory(prefix="gpucheck-") as tmp:
            clip = probe_server.upload_input(write_clip(Path(tmp) / clip_name, args.size, args.frames), clip_name)
    else:
        from . import fixtures
        base = embedded.prepare_base_dir(args.base)
        install_probe(base)
        _print(f"gpucheck: linking the random-weight fixtures into {base / 'models'} (generated once, cached)")
        fixtures.install_all(base)
        write_clip(base / "input" / clip_name, args.size, args.frames)
        clip = clip_name
    _print(f"gpucheck: {len(workflows)} workflow(s) x {len(modes)} mode(s) on {target.device}, "
           f"clip {header['clip']}, {precision_note}; {why}")

    rows = []
    for mode in modes:
        rows += run_mode(target, mode, base, clip, workflows, args, [*precision, *extra], header)
    server = next(iter(header.get("servers", {}).values()), {})
    header.update(comfyui=f"{server.get('comfyui') or target.versions.get('comfyui')} "
                          f"({'server ' + target.url if target.url else target.comfyui})",
                  torch=server.get("torch") or target.versions.get("torch"),
                  device=target.device if server.get("device") in (None, "cpu") else
                  f"{target.device}: {server.get('device')}",
                  frontend=target.versions.get("frontend") or server.get("frontend_required"))
    text = report(header, rows)
    _print("\n" + text)
    payload = {"header": header, "rows": [dict(r.to_json(), mode_label=dynamic_label(r, m)) for r, m in rows]}
    atomic_write_bytes(json.dumps(payload, indent=1).encode(), args.json)
    atomic_write_bytes(text.encode(), args.json.with_suffix(".md"))
    _print(f"wrote {args.json} and {args.json.with_suffix('.md')}")
    return 0 if rows and all(r.outputs_good for r, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

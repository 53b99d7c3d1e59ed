"""Run ComfyUI with this pack: interactively, or one workflow headless.

    python -m harness.runner serve [--port N] [--base DIR] [ComfyUI args...]
    python -m harness.runner serve --headless WORKFLOW --video IN --out OUT [--set NODE.INPUT=VALUE ...]

The base directory (``--base``, else $VIDEOEDIT_BASE, else .comfy/base) gets ComfyUI's
layout and this pack linked into custom_nodes. If no TAESD files are found there (or in
$VIDEOEDIT_EXTRA_MODEL_PATHS, an extra_model_paths.yaml passed to ComfyUI), random-weight
TAESD fixtures are linked so the pipeline can be tried; their output is noise.

Headless: WORKFLOW is a path or the name of a file in example_workflows/ (with or without .json).
IN is copied into the base's input folder, every LoadVideo is pointed at it, the
overrides are applied, and the first video the workflow saves is written to OUT.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

from . import embedded
from .pack import import_pack
from .embedded import REPO_ROOT

import_pack()
from videoedit.nodes.core.atomic_file import atomic_write_bytes  # noqa: E402

WORKFLOWS_DIR = REPO_ROOT / "example_workflows"
TAESD_PREFIXES = ("taesd", "taef1")


def base_dir(arg: str | None) -> Path:
    return Path(arg or os.environ.get("VIDEOEDIT_BASE") or embedded.DEFAULT_BASE).resolve()


def _extra_model_dirs(config: Path, kind: str) -> list[Path]:
    """The folders an extra_model_paths.yaml lists for ``kind`` (as ComfyUI reads them)."""
    import yaml
    with open(config, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    dirs = []
    for section in data.values():
        if not isinstance(section, dict):
            continue
        base = Path(os.path.expandvars(os.path.expanduser(str(section.get("base_path", "")))))
        if not base.is_absolute():
            base = config.parent / base
        for line in str(section.get(kind) or "").splitlines():
            if line.strip():
                p = Path(os.path.expandvars(os.path.expanduser(line.strip())))
                dirs.append(p if p.is_absolute() else base / p)
    return dirs


def _taesd_files_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if p.name.startswith(TAESD_PREFIXES) and p.suffix in (".safetensors", ".pth")]


def ensure_taesd(base: Path, extra_config: Path | None) -> None:
    """Link the random TAESD fixtures if the user has no TAESD; warn when they are in use."""
    from . import fixtures
    own = base / "models" / "vae_approx"
    found = _taesd_files_in(own)
    if extra_config is not None:
        for d in _extra_model_dirs(extra_config, "vae_approx"):
            found += _taesd_files_in(d)
    if not found:
        fixtures.install_taesd(base)
        found = _taesd_files_in(own)
    cache = fixtures.CACHE.resolve()
    random = [p.name for p in found if p.is_symlink() and cache in p.resolve().parents]
    if random:
        print(f"WARNING: {', '.join(sorted(random))} in {own} are RANDOM weights (test fixtures) for trying "
              "the pipeline: their output is noise. Put the real files from https://github.com/madebyollin/taesd "
              "in that folder (replacing the links) for real results.", file=sys.stderr)


def comfy_extra_args(extra: list[str]) -> tuple[list[str], Path | None]:
    cfg = os.environ.get("VIDEOEDIT_EXTRA_MODEL_PATHS")
    if not cfg:
        return list(extra), None
    path = Path(cfg).expanduser().resolve()
    if not path.is_file():
        raise SystemExit(f"VIDEOEDIT_EXTRA_MODEL_PATHS={cfg}: no such file")
    return ["--extra-model-paths-config", str(path), *extra], path


def find_workflow(name: str) -> Path:
    for cand in (Path(name), WORKFLOWS_DIR / name, WORKFLOWS_DIR / f"{name}.json"):
        if cand.is_file():
            return cand
    shipped = ", ".join(sorted(p.stem for p in WORKFLOWS_DIR.glob("*.json")))
    raise SystemExit(f"workflow '{name}' not found (a path, or one of: {shipped})")


def _progress_printer(prompt: dict):
    start = time.monotonic()

    def show(event: str, data: dict) -> None:
        node = data.get("node")
        label = f"{node} {prompt.get(str(node), {}).get('class_type', '')}".strip() if node else ""
        t = f"[{time.monotonic() - start:7.1f}s]"
        if event == "executing" and node:
            print(f"{t} running {label}", flush=True)
        elif event == "progress":
            print(f"{t}   {label}: {data.get('value')}/{data.get('max')}", flush=True)
        elif event == "execution_cached" and data.get("nodes"):
            print(f"{t} cached: {', '.join(map(str, data['nodes']))}", flush=True)
        elif event == "execution_success":
            print(f"{t} done", flush=True)
    return show


def run_headless(base: Path, workflow: str, video: Path, out: Path, overrides: list[str],
                 extra_args: list[str], port: int | None = None) -> Path:
    from .server import ComfyServer, ComfyServerError
    from .workflow_api import WorkflowError, apply_overrides, load_workflow, to_api

    wf_path = find_workflow(workflow)
    video = Path(video)
    if not video.is_file():
        raise SystemExit(f"--video {video}: no such file")
    input_name = f"videoedit_headless_{uuid.uuid4().hex[:8]}{video.suffix.lower() or '.mp4'}"
    input_path = base / "input" / input_name
    shutil.copyfile(video, input_path)
    try:
        with ComfyServer(base, port=port, extra_args=extra_args,
                         log_path=base / "user" / "videoedit_headless.log") as srv:
            print(f"ComfyUI at {srv.url} (log: {srv.log_path})", flush=True)
            info = srv.object_info()
            try:
                prompt = to_api(load_workflow(wf_path), info)
            except WorkflowError as e:
                raise SystemExit(f"{wf_path}: {e}")
            loaders = [nid for nid, n in prompt.items() if n["class_type"] == "LoadVideo"]
            if not loaders:
                print(f"warning: {wf_path.name} has no LoadVideo node; --video is not used", file=sys.stderr)
            for nid in loaders:
                prompt[nid]["inputs"]["file"] = input_name
            try:
                prompt = apply_overrides(prompt, overrides, info)
            except ValueError as e:
                raise SystemExit(str(e))
            try:
                result = srv.run(prompt, on_message=_progress_printer(prompt))
            except ComfyServerError as e:
                raise SystemExit(f"workflow {wf_path.name} failed: {e}")
            videos = result.videos()
            if not videos:
                raise SystemExit(f"workflow {wf_path.name} ran but saved no video (outputs: {result.outputs})")
            atomic_write_bytes(srv.view(**videos[0]), Path(out))
    finally:
        input_path.unlink(missing_ok=True)
    print(f"wrote {out}", flush=True)
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.runner",
                                 description="Run ComfyUI with ComfyUI-VideoEdit on 127.0.0.1.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("serve", help="start ComfyUI (foreground), or run one workflow with --headless")
    sp.add_argument("--port", type=int, default=None, help="port (default 8188; headless: a free one)")
    sp.add_argument("--base", default=None, help="ComfyUI base directory (default $VIDEOEDIT_BASE or .comfy/base)")
    sp.add_argument("--headless", metavar="WORKFLOW", help="run this workflow (path or name in example_workflows/) and exit")
    sp.add_argument("--video", type=Path, help="headless: input video for every LoadVideo")
    sp.add_argument("--out", type=Path, help="headless: where to write the first saved video")
    sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE.INPUT=VALUE",
                    help="headless: set an input (NODE: id, title or class; VALUE: JSON or text); repeatable")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["serve"]:
        ap.parse_args(argv)  # prints usage / help and exits
        return 2
    args, extra = sp.parse_known_args(argv[1:])  # the rest goes to ComfyUI
    base = embedded.prepare_base_dir(base_dir(args.base))
    extra, extra_cfg = comfy_extra_args(extra)
    ensure_taesd(base, extra_cfg)

    if args.headless:
        if args.video is None or args.out is None:
            ap.error("--headless needs --video IN and --out OUT")
        run_headless(base, args.headless, args.video, args.out, args.overrides, extra, args.port)
        return 0
    if args.video or args.out or args.overrides:
        ap.error("--video/--out/--set only apply with --headless")
    port = args.port or 8188
    cmd = embedded.server_command(base, port, extra)
    print(f"ComfyUI-VideoEdit: http://127.0.0.1:{port}  (base {base}; Ctrl-C stops)", flush=True)
    os.execv(cmd[0], cmd)  # the server replaces this process: Ctrl-C goes straight to it
    return 0


if __name__ == "__main__":
    sys.exit(main())

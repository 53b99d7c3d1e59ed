"""Measure an edit the way the papers do: warp error and CLIP score, as TokenFlow's Table 1 prints them.

    python -m harness.eval EDITED --source SOURCE [--prompt TEXT] [options]
    python -m harness.eval --compare WORKFLOW --with per-frame --video CLIP [--set NODE.INPUT=VALUE ...] [options]

The first scores an edited clip against the clip it was edited from. The second runs a shipped
TokenFlow workflow on CLIP as it is and once per ``--with`` variant (per-frame: the same workflow
with TokenFlow propagation and extended attention off, i.e. per-frame PnP; even-keyframes: the
paper's fixed-keyframe ablation), one ComfyUI server for all (the inversion is computed once and
cached), and scores each result plus the unedited source. Both print the table, write
``results.json``, ``warp_error.png`` (per-frame-pair warp error over time) and, for --compare, each
variant's video into ``--out``, atomically.

The numbers come from the pack's own nodes (Warp Error, CLIP Score) run in the workflow, on the
decoded frames before video encoding. Flow: torchvision's RAFT from the server's models/optical_flow
or the torch hub cache, or ``--pan DX DY`` for a clip with known motion (the sample clip). CLIP
score: ``--clip-vision`` (a file in models/clip_vision) with the workflow checkpoint's text
encoder, ``--checkpoint`` or ``--text-encoder``; refused text/vision pairs are reported as skipped.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import uuid
from pathlib import Path

from . import embedded
from .eval_chart import warp_error_chart
from .pack import import_pack
from .runner import _progress_printer, base_dir, comfy_extra_args, find_workflow

import_pack()
from videoedit.nodes.core.atomic_file import atomic_write_bytes  # noqa: E402
from videoedit.nodes.eval import raft  # noqa: E402

SAMPLER = "VideoEditTokenFlowKeyframeSampler"
VARIANTS = {  # --with NAME: the sampler inputs it overrides, and the row's label
    "per-frame": ({"propagation": False, "extended_attention": False},
                  "per-frame PnP (no propagation, no extended attention)"),
    "even-keyframes": ({"keyframes": "even"}, "TokenFlow, fixed keyframes (ablation)"),
}
WARP, CLIP = "VideoEditWarpError", "VideoEditClipScore"
NONE_FOUND = "(no RAFT weights found)"   # engine_flow.NONE_FOUND, as the server lists it
DEFINITION = ("warp error: Lai et al. 2018 as TokenFlow Sec. 5.2 measures it: edited frame t+1 warped back to t "
              "along the source clip's optical flow, mean squared RGB (0..1) difference per channel over pixels "
              "that pass the forward-backward / motion-boundary / in-frame checks, averaged over frame pairs. CLIP "
              "score: mean cosine similarity of each frame's CLIP image embedding with the prompt's text embedding "
              "(TokenFlow Table 1). CLIPFrame: mean cosine similarity between all pairs of frames (TGVE).")


# ------------------------------------------------------------------------ prompt building

def _options(info: dict, node: str, name: str) -> list[str]:
    spec = (info[node]["input"].get("required") or {}).get(name) or info[node]["input"]["optional"][name]
    return list(spec[0]) if isinstance(spec[0], list) else list(spec[1].get("options") or [])


def _check_file(info: dict, node: str, name: str, value: str, folder: str) -> None:
    choices = _options(info, node, name)
    if value not in choices:
        raise SystemExit(f"'{value}' is not in the server's models/{folder} (has: {', '.join(choices) or 'nothing'})")


def flow_inputs(args, info: dict, base: Path) -> dict:
    if args.pan is not None:
        return {"flow": "known pan", "raft_weights": _options(info, WARP, "raft_weights")[0],
                "pan_dx": args.pan[0], "pan_dy": args.pan[1]}
    choices = _options(info, WARP, "raft_weights")
    if choices == [NONE_FOUND]:
        raise SystemExit(f"no RAFT weights for the warp error: {raft.where_to_put(base / 'models' / 'optical_flow')}; "
                         "or pass --pan DX DY for a clip whose view moves by a known shift per frame")
    weights = args.raft_weights or choices[0]
    if weights not in choices:
        raise SystemExit(f"--raft-weights {weights}: the server has {', '.join(choices)}")
    return {"flow": "RAFT", "raft_weights": weights, "pan_dx": 0, "pan_dy": 0}


def clip_inputs(args, info: dict, default_clip) -> tuple[dict, list | None, str | None]:
    """Loader nodes to add, the CLIP vision and text references, or a reason why no CLIP score is taken."""
    if not args.clip_vision:
        return {}, None, ("not measured: pass --clip-vision FILE (models/clip_vision), e.g. "
                          "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors with an SD 2.x text encoder")
    _check_file(info, "CLIPVisionLoader", "clip_name", args.clip_vision, "clip_vision")
    nodes = {"eval_clip_vision": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": args.clip_vision}}}
    if args.text_encoder:
        _check_file(info, "CLIPLoader", "clip_name", args.text_encoder, "text_encoders")
        nodes["eval_text_encoder"] = {"class_type": "CLIPLoader",
                                      "inputs": {"clip_name": args.text_encoder, "type": "stable_diffusion"}}
        clip = ["eval_text_encoder", 0]
    elif args.checkpoint:
        _check_file(info, "CheckpointLoaderSimple", "ckpt_name", args.checkpoint, "checkpoints")
        nodes["eval_checkpoint"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": args.checkpoint}}
        clip = ["eval_checkpoint", 1]
    elif default_clip is not None:
        clip = default_clip
    else:
        raise SystemExit("--clip-vision needs a text encoder: --checkpoint NAME (its CLIP) or --text-encoder NAME")
    return nodes, [["eval_clip_vision", 0], clip], None


def eval_nodes(tag: str, edited: list, source: list, flow: dict, clip_refs, prompt_text: str, args) -> dict:
    nodes = {f"eval_warp_{tag}": {"class_type": WARP, "inputs": {
        "edited": edited, "source": source, **flow, "pairs_per_chunk": args.pairs_per_chunk}}}
    if clip_refs is not None:
        nodes[f"eval_clip_{tag}"] = {"class_type": CLIP, "inputs": {
            "images": edited, "clip_vision": clip_refs[0], "clip": clip_refs[1], "prompt": prompt_text,
            "frames_per_chunk": args.frames_per_chunk}}
    return nodes


def _upstream(prompt: dict, ref) -> str | None:
    return str(ref[0]) if isinstance(ref, list) and len(ref) == 2 and str(ref[0]) in prompt else None


def template_refs(prompt: dict, name: str) -> tuple[list, list]:
    """(edited frames, source frames) of a workflow: the images CreateVideo turns into the saved video,
    and the images GetVideoComponents takes out of LoadVideo."""
    edited = [n["inputs"]["images"] for n in prompt.values() if n["class_type"] == "CreateVideo"
              and isinstance(n["inputs"].get("images"), list)]
    source = [[nid, 0] for nid, n in prompt.items() if n["class_type"] == "GetVideoComponents"
              and prompt.get(_upstream(prompt, n["inputs"].get("video")) or "", {}).get("class_type") == "LoadVideo"]
    if len(edited) != 1 or len(source) != 1:
        raise SystemExit(f"{name}: expected one CreateVideo (the edited frames) and one GetVideoComponents of a "
                         f"LoadVideo (the source frames); found {len(edited)} and {len(source)}")
    return edited[0], source[0]


def edit_prompt_text(prompt: dict, sampler_ids: list[str]) -> tuple[str | None, list | None]:
    """The text and CLIP reference of the CLIPTextEncode feeding the sampler's positive input."""
    for sid in sampler_ids:
        nid, seen = _upstream(prompt, prompt[sid]["inputs"].get("positive")), set()
        while nid is not None and nid not in seen:
            seen.add(nid)
            node = prompt[nid]
            if isinstance(node["inputs"].get("text"), str):
                return node["inputs"]["text"], node["inputs"].get("clip")
            nid = _upstream(prompt, node["inputs"].get("positive") or node["inputs"].get("conditioning"))
    return None, None


# ------------------------------------------------------------------------------ running

class Session:
    """One server for all runs; a CLIP refusal is recorded once and the CLIP nodes dropped."""

    def __init__(self, srv, timeout: float):
        self.srv, self.timeout = srv, timeout
        self.clip_skipped: str | None = None

    def run(self, prompt: dict):
        from .server import ComfyServerError
        if self.clip_skipped:
            prompt = {k: v for k, v in prompt.items() if v["class_type"] != CLIP}
        try:
            return self.srv.run(prompt, timeout=self.timeout, on_message=_progress_printer(prompt))
        except ComfyServerError as e:
            refusal = re.search(rf"\({CLIP}\) failed: \w+: (.*)", str(e))
            if refusal is None or self.clip_skipped:
                raise SystemExit(f"the evaluation run failed: {e}")
            self.clip_skipped = refusal.group(1).strip()
            print(f"CLIP score skipped: {self.clip_skipped}", file=sys.stderr, flush=True)
            return self.run(prompt)   # everything upstream is cached: this only reruns what did not finish


def row(result, tag: str, label: str) -> dict:
    out = result.outputs
    warp = out[f"eval_warp_{tag}"]["videoedit_warp_error"][0]
    clip = (out.get(f"eval_clip_{tag}") or {}).get("videoedit_clip_score", [None])[0]
    return {"method": label, "warp_error": warp["warp_error"], "warp_error_per_pair": warp["per_pair"],
            "valid_fraction": warp["valid_fraction"], "flow": warp["flow"],
            "clip_score": clip and clip["clip_score"], "clip_frame": clip and clip["clip_frame"],
            "clip_score_per_frame": clip and clip["per_frame"], "clip_model": clip and clip["clip_model"]}


def table(rows: list[dict]) -> str:
    width = max(len(r["method"]) for r in rows) + 2
    head = f"{'method':<{width}}{'warp error (x1e-3)':>20}{'CLIP score':>12}{'CLIPFrame':>11}"
    lines = [head, "-" * len(head)]
    for r in rows:
        clip = f"{r['clip_score']:.4f}" if r["clip_score"] is not None else "-"
        frame = f"{r['clip_frame']:.4f}" if r["clip_frame"] is not None else "-"
        lines.append(f"{r['method']:<{width}}{r['warp_error'] * 1e3:>20.3f}{clip:>12}{frame:>11}")
    return "\n".join(lines)


def write_results(out: Path, report: dict, title: str) -> None:
    atomic_write_bytes((json.dumps(report, indent=2) + "\n").encode(), out / "results.json")
    warp_error_chart([(r["method"], r["warp_error_per_pair"]) for r in report["rows"]], out / "warp_error.png", title)


def _copy_input(base: Path, video: Path, created: list[Path]) -> str:
    if not video.is_file():
        raise SystemExit(f"{video}: no such file")
    name = f"videoedit_eval_{uuid.uuid4().hex[:8]}{video.suffix.lower() or '.mp4'}"
    shutil.copyfile(video, base / "input" / name)
    created.append(base / "input" / name)
    return name


def evaluate(args, srv, base: Path, created: list[Path]) -> dict:
    """EDITED against SOURCE (and SOURCE against itself, the floor)."""
    info = srv.object_info()
    prompt = {}
    for tag, video in (("edited", args.edited), ("source", args.source)):
        prompt[f"load_{tag}"] = {"class_type": "LoadVideo", "inputs": {"file": _copy_input(base, Path(video), created)}}
        prompt[f"frames_{tag}"] = {"class_type": "GetVideoComponents", "inputs": {"video": [f"load_{tag}", 0]}}
    flow = flow_inputs(args, info, base)
    loaders, clip_refs, skipped = clip_inputs(args, info, None)
    if clip_refs is not None and not args.prompt:
        raise SystemExit("--clip-vision needs --prompt: the edit prompt the frames are scored against")
    prompt.update(loaders)
    for tag in ("edited", "source"):
        prompt.update(eval_nodes(tag, ["frames_edited", 0] if tag == "edited" else ["frames_source", 0],
                                 ["frames_source", 0], flow, clip_refs, args.prompt or "", args))
    session = Session(srv, args.timeout)
    result = session.run(prompt)
    rows = [row(result, "source", "source clip (no edit)"), row(result, "edited", Path(args.edited).name)]
    return {"edited": str(args.edited), "source": str(args.source), "prompt": args.prompt, "rows": rows,
            "clip_skipped": session.clip_skipped or skipped}


def compare(args, srv, base: Path, created: list[Path]) -> dict:
    """The workflow as shipped and each --with variant, on one source clip."""
    from .workflow_api import WorkflowError, apply_overrides, load_workflow, to_api
    info = srv.object_info()
    wf_path = find_workflow(args.compare)
    try:
        prompt = apply_overrides(to_api(load_workflow(wf_path), info), args.overrides, info)
    except (WorkflowError, ValueError) as e:
        raise SystemExit(f"{wf_path.name}: {e}")
    input_name = _copy_input(base, Path(args.video), created)
    for node in prompt.values():
        if node["class_type"] == "LoadVideo":
            node["inputs"]["file"] = input_name
    samplers = [nid for nid, n in prompt.items() if n["class_type"] == SAMPLER]
    if args.variants and not samplers:
        raise SystemExit(f"{wf_path.name} has no TokenFlow Keyframe Sampler; --with {args.variants[0]} switches its "
                         "inputs (use a tokenflow_* workflow)")
    edited, source = template_refs(prompt, wf_path.name)
    text, template_clip = edit_prompt_text(prompt, samplers)
    prompt_text = args.prompt or text
    flow = flow_inputs(args, info, base)
    loaders, clip_refs, skipped = clip_inputs(args, info, template_clip)
    if clip_refs is not None and not prompt_text:
        raise SystemExit(f"{wf_path.name}: no edit prompt found upstream of the sampler; pass --prompt")
    session = Session(srv, args.timeout)
    runs = [("tokenflow", f"TokenFlow ({wf_path.stem})", {})] + [
        (name.replace("-", "_"), VARIANTS[name][1], VARIANTS[name][0]) for name in args.variants]
    rows, videos = [], {}
    for i, (tag, label, switches) in enumerate(runs):
        run_prompt = json.loads(json.dumps(prompt))
        for sid in samplers:
            run_prompt[sid]["inputs"].update(switches)
        run_prompt.update(loaders)
        run_prompt.update(eval_nodes(tag, edited, source, flow, clip_refs, prompt_text or "", args))
        if i == 0:
            run_prompt.update(eval_nodes("source", source, source, flow, clip_refs, prompt_text or "", args))
        print(f"--- {label}", flush=True)
        result = session.run(run_prompt)
        if i == 0:
            rows.append(row(result, "source", "source clip (no edit)"))
        rows.append(row(result, tag, label))
        saved = result.videos()
        if saved:
            videos[tag] = f"{tag}.mp4"
            atomic_write_bytes(srv.view(**saved[0]), Path(args.out) / videos[tag])
    return {"workflow": wf_path.name, "video": str(args.video), "overrides": args.overrides,
            "variants": {name: VARIANTS[name][0] for name in args.variants}, "prompt": prompt_text,
            "rows": rows, "videos": videos, "clip_skipped": session.clip_skipped or skipped}


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    ap = argparse.ArgumentParser(prog="./videoedit eval", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("edited", nargs="?", help="the edited video (with --source)")
    ap.add_argument("--source", help="the video EDITED was made from (same frames)")
    ap.add_argument("--compare", metavar="WORKFLOW", help="run this workflow (path or name in example_workflows/) "
                                                          "as shipped and with each --with variant")
    ap.add_argument("--with", dest="variants", action="append", default=[], metavar="VARIANT",
                    help=f"compare: a variant to run too ({', '.join(VARIANTS)}); repeatable")
    ap.add_argument("--video", help="compare: the source clip, for every LoadVideo")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE.INPUT=VALUE",
                    help="compare: set a workflow input for every run (as serve --headless); repeatable")
    ap.add_argument("--prompt", help="the edit prompt for the CLIP score (compare: default the workflow's)")
    ap.add_argument("--pan", type=int, nargs=2, metavar=("DX", "DY"),
                    help="the source's view moves by (DX, DY) pixels per frame: use that exact flow, not RAFT")
    ap.add_argument("--raft-weights", help="a file from models/optical_flow or 'torch hub: NAME' (default: the first found)")
    ap.add_argument("--clip-vision", help="a CLIP vision file in models/clip_vision (turns the CLIP score on)")
    ap.add_argument("--checkpoint", help="the checkpoint whose text encoder scores the prompt")
    ap.add_argument("--text-encoder", help="a text encoder file in models/text_encoders instead")
    ap.add_argument("--pairs-per-chunk", type=int, default=4, help="frame pairs per warp-error chunk")
    ap.add_argument("--frames-per-chunk", type=int, default=16, help="frames per CLIP chunk")
    ap.add_argument("--out", type=Path, help="results folder (default: ./eval_<name>)")
    ap.add_argument("--base", help="ComfyUI base directory (default $VIDEOEDIT_BASE or .comfy/base)")
    ap.add_argument("--port", type=int, help="server port (default: a free one)")
    ap.add_argument("--timeout", type=float, default=6 * 3600, help="seconds allowed per workflow run")
    args, extra = ap.parse_known_args(argv)
    if args.compare:
        if args.edited or args.source or not args.video:
            ap.error("--compare WORKFLOW takes --video CLIP (and no EDITED/--source)")
    elif not (args.edited and args.source):
        ap.error("give EDITED --source SOURCE, or --compare WORKFLOW --with per-frame --video CLIP")
    elif args.variants or args.video or args.overrides:
        ap.error("--with/--video/--set only apply with --compare")
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        ap.error(f"--with {unknown[0]}: known variants are {', '.join(VARIANTS)}")
    name = Path(args.compare).stem if args.compare else Path(args.edited).stem
    args.out = Path(args.out or f"eval_{name}").resolve()
    return args, extra


def main(argv: list[str] | None = None) -> int:
    from .server import ComfyServer, ComfyServerError
    args, extra = parse_args(list(sys.argv[1:] if argv is None else argv))
    base = embedded.prepare_base_dir(base_dir(args.base))
    extra, _ = comfy_extra_args(extra)
    created: list[Path] = []
    try:
        with ComfyServer(base, port=args.port, extra_args=extra, log_path=base / "user" / "videoedit_eval.log") as srv:
            print(f"ComfyUI at {srv.url} (log: {srv.log_path})", flush=True)
            report = compare(args, srv, base, created) if args.compare else evaluate(args, srv, base, created)
    except ComfyServerError as e:
        raise SystemExit(str(e))
    finally:
        for path in created:
            path.unlink(missing_ok=True)
    report["definition"] = DEFINITION
    title = (f"{report.get('workflow') or Path(args.edited).name} on {Path(args.video or args.source).name}: "
             "warp error per frame pair")
    write_results(args.out, report, title)
    print("\n" + table(report["rows"]))
    if report["clip_skipped"]:
        print(f"\nCLIP score: {report['clip_skipped']}")
    print(f"\nwrote {args.out / 'results.json'} and {args.out / 'warp_error.png'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What a batch runs: its clips, its jobs (one per clip, or one per per-clip row) and their prompts.

Clips (``--videos``): folders (their video files, sorted, not recursive), video files, and list
files (any other file: one path per line, relative to the list's folder; ``#`` starts a comment).

Per-clip rows (``--per-clip FILE.jsonl|.csv``): every row is one job for one clip, so several
rows for a clip (several prompts, seeds...) make several jobs. ``clip`` names the clip (its file
name, or a path relative to the rows file); ``name`` (optional) names the job's output
``<clip stem>.<name>.<ext>``; every other key/column is ``NODE.INPUT`` (NODE: id, title or class,
as ``--set``), applied after ``--set``. JSONL values are typed JSON; a CSV cell is read like a
``--set`` value (JSON if it parses, else text) and an empty cell leaves the input alone. A clip
with no row gets one job with the workflow's own values, written as ``<clip stem>.<ext>``; a row
without ``name`` is named by a hash of its overrides (stable when rows are reordered).

TokenFlow invert-once: a DDIM Inverter whose only used output is ``inversion`` is split off into
an *invert job* (the inverter's upstream nodes + TokenFlow Save Inversion); the edit jobs load
its file with TokenFlow Load Inversion instead. Jobs whose inverter upstream is identical (same
clip, model, source prompt, steps...) share one invert job, whatever their edit prompts.
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .server import VIDEO_EXTENSIONS
from .workflow_api import apply_overrides

INVERTER = "VideoEditTokenFlowDDIMInverter"
SAVE_INVERSION = "VideoEditTokenFlowSaveInversion"
LOAD_INVERSION = "VideoEditTokenFlowLoadInversion"
# video loaders whose input names a file in ComfyUI's input folder (core, VideoHelperSuite)
VIDEO_LOADERS = {"LoadVideo": "file", "VHS_LoadVideo": "video"}
UPLOAD_SUBFOLDER = "videoedit_batch"  # in each server's input folder (clips) and output/tokenflow (inversions)
RESERVED_KEYS = ("clip", "name")


class PlanError(ValueError):
    """The clips, rows or workflow cannot make a batch; the message names the file, row and fix."""


@dataclass
class Clip:
    path: Path
    sha256: str

    @property
    def upload_name(self) -> str:
        """The clip's file name on every server: by content, so a clip is uploaded once per server
        (once in all, with a shared input folder) and two clips never overwrite each other."""
        return f"{self.sha256[:20]}{self.path.suffix.lower()}"


@dataclass
class Job:
    id: str                      # edit: the output file's stem; invert: "invert:<stem>.<key>"
    kind: str                    # "edit" or "invert"
    clip: Clip
    prompt: dict                 # API prompt, the clip already named by its upload name
    fingerprint: str             # what the result depends on: a rerun redoes the job if it changed
    overrides: list[str] = field(default_factory=list)
    needs: dict[str, str] = field(default_factory=dict)  # LoadInversion node id -> invert job id
    save_node: str | None = None  # invert jobs: the Save Inversion node whose output names the file


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _digest(obj) -> str:
    return hashlib.sha256(_canonical(obj).encode()).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------ clips
def find_clips(sources: list[Path]) -> list[Path]:
    """The clip files named by ``--videos`` (folders, video files, list files), in order, once each."""
    found: list[Path] = []
    for src in sources:
        src = Path(src)
        if src.is_dir():
            found += sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
        elif src.is_file() and src.suffix.lower() in VIDEO_EXTENSIONS:
            found.append(src)
        elif src.is_file():
            for n, line in enumerate(src.read_text(encoding="utf-8").splitlines(), 1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                p = Path(line).expanduser()
                p = p if p.is_absolute() else src.parent / p
                if not p.is_file():
                    raise PlanError(f"--videos {src} line {n}: {line}: no such file")
                found.append(p)
        else:
            raise PlanError(f"--videos {src}: no such folder or file")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise PlanError(f"--videos {' '.join(map(str, sources))}: no video files "
                        f"({', '.join(VIDEO_EXTENSIONS)})")
    by_stem: dict[str, Path] = {}
    for p in unique:
        if p.stem in by_stem:
            raise PlanError(f"clips {by_stem[p.stem]} and {p} would both write outputs named {p.stem}.*; "
                            "rename one or run them in separate batches")
        by_stem[p.stem] = p
    return unique


# ------------------------------------------------------------------------------ per-clip rows
@dataclass
class Row:
    where: str               # "rows.csv line 3", for messages
    clip: Path
    name: str | None
    overrides: list[str]


def _safe_name(name: str, where: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._")
    if not safe:
        raise PlanError(f"{where}: name '{name}' has no usable characters (letters, digits, . _ -)")
    return safe


def read_rows(path: Path, clips: list[Path]) -> list[Row]:
    """The rows of a .jsonl or .csv per-clip file, their clips matched against ``clips``."""
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"--per-clip {path}: no such file")
    by_name: dict[str, list[Path]] = {}
    for c in clips:
        by_name.setdefault(c.name, []).append(c)
    raw: list[tuple[str, dict, bool]] = []  # (where, record, values are typed JSON)
    if path.suffix.lower() == ".jsonl":
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as e:
                raise PlanError(f"{path.name} line {n}: not JSON ({e})") from None
            if not isinstance(rec, dict):
                raise PlanError(f"{path.name} line {n}: expected an object like "
                                '{"clip": "shot01.mp4", "NODE.INPUT": value}')
            raw.append((f"{path.name} line {n}", rec, True))
    elif path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            for rec in reader:
                rec = {k.strip(): v for k, v in rec.items() if k is not None and v is not None and v.strip() != ""}
                raw.append((f"{path.name} line {reader.line_num}", rec, False))
    else:
        raise PlanError(f"--per-clip {path}: expected a .jsonl or .csv file")

    rows = []
    for where, rec, typed in raw:
        clip_ref = rec.get("clip")
        if not clip_ref:
            raise PlanError(f"{where}: no 'clip' (the clip's file name, e.g. \"shot01.mp4\")")
        clip_ref = str(clip_ref)
        if "/" in clip_ref or "\\" in clip_ref:
            want = (path.parent / clip_ref).resolve()
            matches = [c for c in clips if c == want]
        else:
            matches = by_name.get(clip_ref, [])
        if len(matches) != 1:
            why = "is not among the --videos clips" if not matches else "matches several clips; give its path"
            raise PlanError(f"{where}: clip '{clip_ref}' {why}")
        overrides = []
        for key, value in rec.items():
            if key in RESERVED_KEYS:
                continue
            if "." not in key:
                raise PlanError(f"{where}: key '{key}' is not NODE.INPUT (e.g. \"edit prompt.text\" or "
                                "\"KSampler.seed\"); the other keys are 'clip' and 'name'")
            overrides.append(f"{key}={json.dumps(value) if typed else value}")
        name = rec.get("name")
        rows.append(Row(where, matches[0], None if name in (None, "") else _safe_name(name, where), overrides))
    return rows


# ------------------------------------------------------------------------------ prompts
def _is_link(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int)


def upstream(prompt: dict, roots) -> set[str]:
    """The nodes ``roots`` depend on, themselves included."""
    seen, todo = set(), list(roots)
    while todo:
        nid = todo.pop()
        if nid in seen or nid not in prompt:
            continue
        seen.add(nid)
        todo += [v[0] for v in prompt[nid]["inputs"].values() if _is_link(v)]
    return seen


def _prune(prompt: dict, object_info: dict) -> dict:
    """Only the nodes some output node needs (what ComfyUI would execute)."""
    outputs = [nid for nid, n in prompt.items() if (object_info.get(n["class_type"]) or {}).get("output_node")]
    keep = upstream(prompt, outputs)
    return {nid: n for nid, n in prompt.items() if nid in keep}


def _new_id(prompt: dict) -> str:
    return str(max((int(k) for k in prompt if k.isdigit()), default=0) + 1)


def point_loaders(prompt: dict, upload_name: str) -> dict:
    """Every video loader reads the clip (its name in the server's input folder)."""
    loaders = [nid for nid, n in prompt.items() if n["class_type"] in VIDEO_LOADERS]
    if not loaders:
        raise PlanError(f"the workflow has no video loader ({', '.join(VIDEO_LOADERS)}): every clip would "
                        "give the same result")
    for nid in loaders:
        prompt[nid]["inputs"][VIDEO_LOADERS[prompt[nid]["class_type"]]] = f"{UPLOAD_SUBFOLDER}/{upload_name}"
    return prompt


def split_inversions(prompt: dict, object_info: dict):
    """Split a TokenFlow prompt for invert-once: ``(edit_prompt, {inverter id: invert_prompt},
    {load node id: inverter id}, {inverter id: save node id})``; inverters whose noised latent is
    used stay in the edit prompt (no file can stand in for that output)."""
    inverters = [nid for nid, n in prompt.items() if n["class_type"] == INVERTER]
    edit = {nid: dict(n, inputs=dict(n["inputs"])) for nid, n in prompt.items()}
    invert_prompts, loads, saves = {}, {}, {}
    for inv in inverters:
        users = [(nid, k, v) for nid, n in prompt.items() for k, v in n["inputs"].items()
                 if _is_link(v) and v[0] == inv]
        if any(v[1] != 0 for _, _, v in users) or not users:
            continue
        sub = {nid: prompt[nid] for nid in upstream(prompt, [inv])}
        save = _new_id(sub)
        sub[save] = {"class_type": SAVE_INVERSION, "inputs": {"inversion": [inv, 0], "filename_prefix": ""},
                     "_meta": {"title": "TokenFlow Save Inversion (batch)"}}
        load = _new_id(edit)
        edit[load] = {"class_type": LOAD_INVERSION, "inputs": {"name": ""},
                      "_meta": {"title": "TokenFlow Load Inversion (batch)"}}
        for nid, k, _ in users:
            edit[nid]["inputs"][k] = [load, 0]
        del edit[inv]
        invert_prompts[inv], loads[load], saves[inv] = sub, inv, save
    return _prune(edit, object_info), invert_prompts, loads, saves


def _fingerprint(prompt: dict) -> str:
    return _digest({nid: {"class_type": n["class_type"], "inputs": n["inputs"]} for nid, n in prompt.items()})


def plan_jobs(workflow_prompt: dict, object_info: dict, clips: list[Clip], global_overrides: list[str],
              rows: list[Row], invert_once: bool = True) -> list[Job]:
    """Invert jobs first (they unlock the edits), then edit jobs in clip and row order."""
    by_clip: dict[Path, list[Row]] = {}
    for r in rows:
        by_clip.setdefault(r.clip, []).append(r)
    inverts: dict[str, Job] = {}
    edits: list[Job] = []
    ids: dict[str, str] = {}
    for clip in clips:
        for row in by_clip.get(clip.path) or [None]:
            where = row.where if row else f"clip {clip.path.name}"
            try:
                prompt = apply_overrides(workflow_prompt, list(global_overrides) + (row.overrides if row else []),
                                         object_info)
            except ValueError as e:
                raise PlanError(f"{where}: {e}") from None
            point_loaders(prompt, clip.upload_name)
            fingerprint = _fingerprint(prompt)
            suffix = "" if row is None else "." + (row.name or _digest(sorted(row.overrides))[:8])
            job_id = clip.path.stem + suffix
            if job_id in ids:
                if ids[job_id] == fingerprint:
                    continue  # the same job twice: one output
                raise PlanError(f"{where}: job '{job_id}' is already defined with other values; give the "
                                "rows different names")
            ids[job_id] = fingerprint
            job = Job(job_id, "edit", clip, prompt, fingerprint, row.overrides if row else [])
            if invert_once:
                edit_prompt, invert_prompts, loads, saves = split_inversions(prompt, object_info)
                by_inverter = {}
                for inv, sub in invert_prompts.items():
                    key = _fingerprint(sub)
                    inv_id = f"invert:{clip.path.stem}.{key[:12]}"
                    sub[saves[inv]]["inputs"]["filename_prefix"] = f"{UPLOAD_SUBFOLDER}/{clip.path.stem}-{key[:12]}"
                    inverts.setdefault(inv_id, Job(inv_id, "invert", clip, sub, key, save_node=saves[inv]))
                    by_inverter[inv] = inv_id
                job.prompt = edit_prompt
                job.needs = {load: by_inverter[inv] for load, inv in loads.items()}
            edits.append(job)
    return list(inverts.values()) + edits

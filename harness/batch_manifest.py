"""The batch manifest: ``<out>/manifest.json``, rewritten atomically after every change.

It is what makes a rerun resume: a job is skipped when its entry is ``done`` with the same
fingerprint (the job's prompt, the clip's content included) and, for an edit, its output file is
still there; ``failed`` and interrupted (``running``) jobs run again. Layout::

    {"format": "videoedit.batch/1", "workflow": ..., "updated": ISO time,
     "clips": {abs path: {"size", "mtime_ns", "sha256"}},        # so a rerun does not rehash
     "jobs": {job id: {"kind": "edit"|"invert", "clip": abs path, "fingerprint", "state",
                       "overrides": [NODE.INPUT=VALUE...], "needs": [invert job ids],
                       "output": file name in <out> (edit) | name under the servers' output folder (invert),
                       "size": bytes (invert), "holders": [server URLs that have the file] (invert),
                       "error": the last failure's message,
                       "attempts": [{"server", "prompt_id", "started", "seconds", "result", "error"}]}}}

``result`` is ``done``, ``failed`` (the job's own error, e.g. a node exception) or ``server lost``
(the server died or stopped answering; the job went back to the queue).
"""
from __future__ import annotations

import fcntl
import json
import time
from pathlib import Path

from .pack import import_pack

import_pack()
from videoedit.nodes.core.atomic_file import atomic_write_bytes  # noqa: E402

FORMAT = "videoedit.batch/1"
NAME = "manifest.json"
LOCK_NAME = ".batch.lock"
INVERSIONS = "inversions"  # <out>/inversions: local copies of inversions moved between servers


class BatchLocked(RuntimeError):
    """Another batch is writing to the same --out folder."""


class Manifest:
    def __init__(self, out_dir: Path, workflow: str):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / NAME
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.out_dir / LOCK_NAME, "w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise BatchLocked(f"--out {self.out_dir}: another batch is running on this folder; wait for it "
                              "or use another --out") from None
        data = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except ValueError as e:
                raise ValueError(f"{self.path}: not JSON ({e}); move it away to start the batch afresh") from None
            if data.get("format") != FORMAT:
                raise ValueError(f"{self.path}: not a batch manifest (format {data.get('format')!r})")
        self.data = {"format": FORMAT, "workflow": workflow, "clips": data.get("clips", {}),
                     "jobs": data.get("jobs", {})}

    @property
    def jobs(self) -> dict[str, dict]:
        return self.data["jobs"]

    def close(self) -> None:
        self._lock_file.close()

    def save(self) -> None:
        self.data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        atomic_write_bytes(json.dumps(self.data, indent=1, ensure_ascii=False).encode(), self.path)

    # ------------------------------------------------------------------ clips
    def clip_sha256(self, path: Path, compute) -> str:
        """The clip's hash from the manifest if size and mtime are unchanged, else ``compute(path)``."""
        st = path.stat()
        known = self.data["clips"].get(str(path))
        if known and known["size"] == st.st_size and known["mtime_ns"] == st.st_mtime_ns:
            return known["sha256"]
        sha = compute(path)
        self.data["clips"][str(path)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha}
        return sha

    # ------------------------------------------------------------------ jobs
    def is_finished(self, job) -> bool:
        e = self.jobs.get(job.id)
        if not e or e.get("state") != "done" or e.get("fingerprint") != job.fingerprint:
            return False
        return job.kind != "edit" or (self.out_dir / e.get("output", "")).is_file()

    def enter(self, job) -> dict:
        """The job's entry, reset to pending unless it is finished with this fingerprint."""
        e = self.jobs.get(job.id)
        if e is None or e.get("fingerprint") != job.fingerprint:
            old_output = (e or {}).get("output")
            e = self.jobs[job.id] = {"kind": job.kind, "clip": str(job.clip.path), "attempts": []}
            if old_output and job.kind == "edit":
                e["replaces"] = old_output  # removed once the new output is written (other extension)
        e.update(fingerprint=job.fingerprint, overrides=job.overrides, needs=sorted(set(job.needs.values())))
        if not self.is_finished(job):
            e["state"] = "pending"
            e.pop("error", None)
        return e

    def attempt(self, job_id: str, server: str) -> dict:
        """A new attempt of the job on ``server``; the caller fills prompt_id and ends it."""
        a = {"server": server, "prompt_id": None, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.jobs[job_id]["attempts"].append(a)
        self.jobs[job_id]["state"] = "running"
        return a

    def finish_output(self, job_id: str, output: str) -> None:
        """Record an edit's output; a file it replaces (older settings, other extension) is removed."""
        e = self.jobs[job_id]
        old = e.pop("replaces", None)
        if old and old != output:
            (self.out_dir / old).unlink(missing_ok=True)
        e["output"] = output

    def remove_temp_files(self, job_ids) -> None:
        """Temp files left by a batch that was killed while writing (atomic_path names them
        ``.<name>.<random>``): only those of this batch's outputs and manifest."""
        prefixes = tuple(f".{name}." for name in [NAME, *job_ids])
        for folder in (self.out_dir, self.out_dir / INVERSIONS):
            if folder.is_dir():
                for p in folder.iterdir():
                    if p.is_file() and (p.name.startswith(prefixes) or folder.name == INVERSIONS and
                                        p.name.startswith(".")):
                        p.unlink(missing_ok=True)

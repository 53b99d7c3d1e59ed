"""Run one workflow over many clips on one or several ComfyUI servers.

    python -m harness.batch WORKFLOW --videos DIR|LIST|FILE ... --out DIR [--server URL ...]
        [--set NODE.INPUT=VALUE ...] [--per-clip FILE.jsonl|.csv] [--no-invert-once] ...

Jobs and their prompts come from harness.batch_plan, the resumable record from
harness.batch_manifest, the per-server work from harness.batch_worker. Each server is any ComfyUI
with this pack, known only by its URL (without ``--server`` the embedded one is started, as
``serve --headless`` does). One worker thread per server takes the next ready job (invert jobs
first; then jobs whose inversion is already on that server), uploads the clip (``/upload/image``, by content hash, skipped when the server has it
already, e.g. a shared input folder), queues the prompt, follows it on the websocket and streams
the first saved video to ``<out>/<job>.<ext>`` atomically.

A server that dies or stops answering (refused, reset, timeout, websocket dropped) loses its job
back to the queue for any server; the worker probes it with backoff and takes jobs again when it
answers. A job lost ``--max-lost`` times (it may be what kills the server, e.g. out of memory) is
failed; a job that fails on its own (a node error, a refused prompt) is failed at once with the
server's message. The batch gives up when every server has been down ``--give-up-after`` seconds.
"""
from __future__ import annotations

import argparse
import math
import shutil
import sys
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

from .batch_manifest import BatchLocked, Manifest
from .batch_plan import Clip, Job, PlanError, find_clips, plan_jobs, read_rows, sha256_file
from .batch_worker import InversionUnavailable, Worker, first_line
from .server import ComfyServer


class Batch:
    def __init__(self, jobs: list[Job], manifest: Manifest, servers: list[ComfyServer], *, job_timeout=None,
                 max_lost: int = 3, give_up_after: float = 600.0, observer=None, stream=None):
        self.jobs = {j.id: j for j in jobs}
        self.order = {j.id: i for i, j in enumerate(jobs)}
        # --max-lost counts this run's losses: a rerun gives every job a fresh chance
        self.earlier_attempts = {j.id: len(manifest.jobs[j.id]["attempts"]) for j in jobs}
        self.manifest, self.out_dir = manifest, manifest.out_dir
        self.job_timeout = math.inf if job_timeout is None else job_timeout
        self.max_lost, self.give_up_after, self.observer = max_lost, give_up_after, observer
        self.required_classes = {n["class_type"] for j in jobs for n in j.prompt.values()}
        self.client_id = f"videoedit-batch-{uuid.uuid4().hex[:12]}"
        self.cond = threading.Condition()
        self._stop = threading.Event()
        self.stop_reason: str | None = None
        self._file_locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self.workers = [Worker(self, s, f"s{i + 1}") for i, s in enumerate(servers)]
        self.stream = stream or sys.stdout
        self._tty = self.stream.isatty()
        self._last_line, self._last_print = "", 0.0
        self._print_lock = threading.Lock()

    # ------------------------------------------------------------------ shared state
    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def wait_stop(self, seconds: float) -> bool:
        return self._stop.wait(seconds)

    def stop(self, reason: str) -> None:
        with self.cond:
            self.stop_reason = self.stop_reason or reason
            self._stop.set()
            self.cond.notify_all()

    def file_lock(self, name: str) -> threading.Lock:
        with self.cond:
            return self._file_locks[name]

    def client(self, url: str) -> ComfyServer:
        return next((w.server for w in self.workers if w.server.url == url), None) or ComfyServer.attach(url)

    def state(self, job_id: str) -> str:
        return self.manifest.jobs[job_id]["state"]

    def lost_count(self, job_id: str) -> int:
        attempts = self.manifest.jobs[job_id]["attempts"][self.earlier_attempts[job_id]:]
        return sum(a.get("result") == "server lost" for a in attempts)

    def nothing_left(self) -> bool:
        with self.cond:
            return all(self.state(i) in ("done", "failed") for i in self.jobs)

    def next_job(self, worker: Worker) -> Job | None:
        """The next ready job for ``worker`` (marked running), or None when nothing is left to do."""
        with self.cond:
            while not self.stopped:
                pending = [j for j in self.jobs.values() if self.state(j.id) == "pending"]
                if not pending and not any(self.state(i) == "running" for i in self.jobs):
                    return None
                ready = [j for j in pending if all(self.state(n) == "done" for n in j.needs.values())]
                if ready:
                    url = worker.server.url

                    def preference(j: Job):
                        here = all(url in self.manifest.jobs[n].get("holders", []) for n in j.needs.values())
                        return (j.kind == "invert", here, -self.order[j.id])
                    job = max(ready, key=preference)
                    self.manifest.jobs[job.id]["state"] = "running"
                    return job
                self.cond.wait(1.0)
        return None

    def begin(self, job: Job, worker: Worker) -> dict:
        with self.cond:
            attempt = self.manifest.attempt(job.id, worker.server.url)
            self.manifest.save()
        self.notify("started", job, worker, {})
        return attempt

    def end(self, job: Job, worker: Worker, attempt: dict, t0: float, outcome: str, error: str | None = None,
            result: dict | None = None) -> None:
        """Record an attempt's outcome: done, failed (the job's own error) or server lost (back to
        the queue, failed after max_lost). A stopped batch leaves its job pending."""
        with self.cond:
            e = self.manifest.jobs[job.id]
            if outcome != "done" and self.stopped:
                outcome, error = "interrupted", None
            attempt.update(seconds=round(time.monotonic() - t0, 2), result=outcome)
            if error:
                attempt["error"] = error
            if outcome == "done":
                e["state"] = "done"
                e.pop("error", None)
                if job.kind == "edit":
                    self.manifest.finish_output(job.id, result["output"])
                else:
                    e.update(result)
                msg = f"done {job.id}" + (f" -> {result['output']}" if job.kind == "edit" else "")
            elif outcome == "server lost" and self.lost_count(job.id) < self.max_lost:
                e["state"] = "pending"
                msg = f"{worker.label} {worker.server.url} lost ({error}); {job.id} goes back to the queue"
            elif outcome == "interrupted":
                e["state"] = "pending"
                msg = None
            else:
                if outcome == "server lost":
                    error = (f"its server was lost {self.max_lost} times while running it (last: {error}); "
                             "a job that takes its server down (out of memory?) is not retried in this run")
                self._fail(job.id, error)
                msg = f"FAILED {job.id} on {worker.label}: {first_line(error)}"
            self.manifest.save()
            self.cond.notify_all()
        if msg:
            self.log(msg)
        self.notify(outcome, job, worker, {"error": error})

    def notify(self, event: str, job: Job, worker: Worker, data: dict) -> None:
        if self.observer is not None:
            self.observer(event, job.id, worker, data)

    def _fail(self, job_id: str, error: str) -> None:
        """Fail a job and every pending job that needs it (under the lock)."""
        self.manifest.jobs[job_id].update(state="failed", error=error)
        for j in self.jobs.values():
            if job_id in j.needs.values() and self.state(j.id) == "pending":
                self.manifest.jobs[j.id].update(state="failed", error=f"its inversion {job_id} failed: {error}")

    def reinvert(self, job: Job, attempt: dict, t0: float, e: InversionUnavailable) -> None:
        """An edit's inversion file is gone: invert again (the edit waits for it)."""
        with self.cond:
            attempt.update(seconds=round(time.monotonic() - t0, 2), result="inversion unavailable", error=str(e))
            self.manifest.jobs[job.id]["state"] = "pending"
            inv = self.manifest.jobs[e.inv_id]
            if inv["state"] == "done" and inv.get("output") == e.name:  # not already redone by another worker
                inv.update(state="pending", holders=[])
            self.manifest.save()
            self.cond.notify_all()
        self.log(f"{e}; inverting {job.clip.path.name} again")

    def add_holder(self, inv_id: str, url: str) -> None:
        with self.cond:
            holders = self.manifest.jobs[inv_id].setdefault("holders", [])
            if url not in holders:
                holders.append(url)
                self.manifest.save()

    # ------------------------------------------------------------------ the progress line
    def counts(self) -> dict[str, int]:
        out = defaultdict(int)
        for i in self.jobs:
            out[self.state(i)] += 1
        return out

    def line(self) -> str:
        c = self.counts()
        head = f"batch {c['done']}/{len(self.jobs)} done" + (f", {c['failed']} failed" if c["failed"] else "")
        return " | ".join([head] + [f"{w.label} {w.state}" for w in self.workers])

    def log(self, msg: str) -> None:
        with self._print_lock:
            if self._tty:
                self.stream.write("\r\x1b[K")
            self.stream.write(msg + "\n")
            self._last_line = ""
            self.stream.flush()

    def tick(self) -> None:
        """Redraw the progress line (in place on a terminal; a log line every 10 s otherwise)."""
        line = self.line()
        with self._print_lock:
            now = time.monotonic()
            if self._tty:
                width = shutil.get_terminal_size((120, 20)).columns - 1
                self.stream.write("\r\x1b[K" + line[:width])
            elif line != self._last_line and now - self._last_print >= 10:
                self.stream.write(line + "\n")
                self._last_print = now
            else:
                return
            self._last_line = line
            self.stream.flush()

    # ------------------------------------------------------------------ run
    def run(self) -> dict[str, int]:
        for w in self.workers:
            w.thread.start()
        try:
            while any(w.thread.is_alive() for w in self.workers):
                time.sleep(0.25)
                self.tick()
                self._give_up_if_all_down()
        except KeyboardInterrupt:
            self.stop("interrupted (Ctrl-C)")
            for w in self.workers:
                if w.prompt_id:
                    w.cancel_quietly(w.prompt_id)
            for w in self.workers:
                w.thread.join(timeout=10)
        finally:
            with self.cond:
                for i in self.jobs:
                    if self.state(i) == "running":  # a worker still out there: its job runs again next time
                        self.manifest.jobs[i]["state"] = "pending"
                        for a in self.manifest.jobs[i]["attempts"]:
                            a.setdefault("result", "interrupted")
                self.manifest.save()
            self.log(self.line())
        return dict(self.counts())

    def _give_up_if_all_down(self) -> None:
        usable = [w for w in self.workers if w.usable and w.thread.is_alive()]
        if usable and all(w.down_since is not None for w in usable):
            down_for = time.monotonic() - max(w.down_since for w in usable)
            if down_for > self.give_up_after:
                self.stop(f"no server answered for {self.give_up_after:.0f} s")


# ---------------------------------------------------------------------------------- command line
def connect_servers(urls: list[str], base_arg: str | None, port: int | None, extra: list[str]):
    """(servers, the embedded server to stop or None): the given URLs, else the embedded ComfyUI."""
    if urls:
        try:
            servers = {s.url: s for s in map(ComfyServer.attach, urls)}  # one worker per server
            return list(servers.values()), None
        except ValueError as e:
            raise SystemExit(f"--server: {e}")
    from . import embedded, runner
    base = embedded.prepare_base_dir(runner.base_dir(base_arg))
    extra, extra_cfg = runner.comfy_extra_args(extra)
    runner.ensure_taesd(base, extra_cfg)
    srv = ComfyServer(base, port=port, extra_args=extra, log_path=base / "user" / "videoedit_batch.log").start()
    print(f"embedded ComfyUI at {srv.url} (log: {srv.log_path})", flush=True)
    return [srv], srv


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="./videoedit batch", description=(
        "Run a workflow on many clips across one or several ComfyUI servers; rerun to resume."))
    ap.add_argument("workflow", help="a workflow file, or the name of one in example_workflows/")
    ap.add_argument("--videos", nargs="+", required=True, type=Path, metavar="DIR|LIST|FILE",
                    help="folders of clips, clip files, or text files listing clips (one per line)")
    ap.add_argument("--out", required=True, type=Path, help="folder for the outputs and manifest.json")
    ap.add_argument("--server", action="append", default=[], metavar="URL",
                    help="a running ComfyUI with this pack (repeat for several); default: start the embedded one")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE.INPUT=VALUE",
                    help="set an input for every job (NODE: id, title or class; VALUE: JSON or text)")
    ap.add_argument("--per-clip", type=Path, metavar="FILE.jsonl|.csv",
                    help="one job per row: clip, optional name, NODE.INPUT values")
    ap.add_argument("--no-invert-once", action="store_true",
                    help="TokenFlow: invert in every job instead of once per clip")
    ap.add_argument("--job-timeout", type=float, default=None, metavar="S",
                    help="fail a job that runs longer (default: no limit)")
    ap.add_argument("--max-lost", type=int, default=3,
                    help="fail a job after its server was lost this many times (default 3)")
    ap.add_argument("--give-up-after", type=float, default=600, metavar="S",
                    help="stop when no server has answered for this long (default 600)")
    ap.add_argument("--base", default=None, help="embedded server: ComfyUI base directory")
    ap.add_argument("--port", type=int, default=None, help="embedded server: port (default: a free one)")
    args, extra = ap.parse_known_args(argv)
    if extra and args.server:
        ap.error(f"unknown arguments {' '.join(extra)} (ComfyUI arguments only apply to the embedded server)")
    return args, extra


def main(argv: list[str] | None = None, observer=None) -> int:
    from . import runner
    from .workflow_api import WorkflowError, load_workflow, to_api
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    wf_path = runner.find_workflow(args.workflow)
    try:
        clip_paths = find_clips(args.videos)
        rows = read_rows(args.per_clip, clip_paths) if args.per_clip else []
        manifest = Manifest(args.out, wf_path.name)
    except (PlanError, BatchLocked, ValueError) as e:
        raise SystemExit(str(e))
    embedded_srv = None
    try:  # the manifest's lock is released and an embedded server stopped, however this ends
        servers, embedded_srv = connect_servers(args.server, args.base, args.port, extra)
        info = next((s.object_info() for s in servers if s.alive()), None)
        if info is None:
            raise SystemExit(f"no server answers: {', '.join(s.url for s in servers)}")
        try:
            prompt = to_api(load_workflow(wf_path), info)
            clips = [Clip(p, manifest.clip_sha256(p, sha256_file)) for p in clip_paths]
            jobs = plan_jobs(prompt, info, clips, args.overrides, rows, invert_once=not args.no_invert_once)
        except (WorkflowError, PlanError) as e:
            raise SystemExit(f"{wf_path.name}: {e}")
        for j in jobs:
            manifest.enter(j)
        manifest.remove_temp_files([j.id for j in jobs if j.kind == "edit"])
        manifest.save()
        todo = [j for j in jobs if j.kind == "edit" and not manifest.is_finished(j)]
        needed = {n for j in todo for n in j.needs.values()}
        jobs = [j for j in jobs if j.kind == "edit" or j.id in needed]  # no inversion for finished clips
        skipped = sum(j.kind == "edit" for j in jobs) - len(todo)
        n_inv = sum(j.kind == "invert" for j in jobs)
        print(f"{len(clips)} clips, {len(jobs) - n_inv} edit jobs" + (f" + {n_inv} inversions" if n_inv else "")
              + f"; {skipped} finished earlier (skipped), {len(todo)} to run on "
              + ", ".join(f"s{i + 1} {s.url}" for i, s in enumerate(servers)), flush=True)
        batch = Batch(jobs, manifest, servers, job_timeout=args.job_timeout, max_lost=args.max_lost,
                      give_up_after=args.give_up_after, observer=observer)
        counts = batch.run() if todo else batch.counts()
    finally:
        if embedded_srv is not None:
            embedded_srv.stop()
        manifest.close()
    left = len(jobs) - counts.get("done", 0) - counts.get("failed", 0)
    print(f"{counts.get('done', 0)} done, {counts.get('failed', 0)} failed"
          + (f", {left} not run ({batch.stop_reason or 'no usable server'}); rerun to resume" if left else "")
          + f"; manifest: {manifest.path}", flush=True)
    return 0 if counts.get("done", 0) == len(jobs) else 1


if __name__ == "__main__":
    sys.exit(main())

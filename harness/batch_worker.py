"""One batch worker per server: it takes ready jobs from the batch (harness.batch), gets the clip
and any TokenFlow inversion onto its server, runs the prompt and fetches the result.

Failures are sorted into two kinds (``is_lost``): the server went away (refused, reset, timeout,
websocket dropped, a proxy's 502-504), after which the job may run anywhere and the worker probes
its server with backoff until it answers; and the job failed there on its own (a node error, a
refused prompt, no saved video), which is recorded with the server's message.

Inversions (invert-once): an edit job's inversion file is used where it is (its server made it,
got a copy earlier, or shares the output folder, as a HEAD /view of the same name and size shows);
otherwise it is fetched once from a server that has it into ``<out>/inversions/`` and uploaded
(``/upload/image`` with type=output) under the same name, where TokenFlow Load Inversion finds it.
"""
from __future__ import annotations

import asyncio
import copy
import http.client
import threading
import time
import urllib.error
from pathlib import Path

import aiohttp

from .batch_manifest import INVERSIONS
from .batch_plan import UPLOAD_SUBFOLDER, Clip, Job
from .server import PROXY_DOWN_CODES, ComfyServer, ServerLost

LOST_ERRORS = (ServerLost, ConnectionError, TimeoutError, http.client.HTTPException, asyncio.TimeoutError,
               aiohttp.ClientConnectionError, aiohttp.WSServerHandshakeError)
PROBE_MAX_S = 10.0  # a dead server costs one GET per probe; a revived one waits at most this long


def is_lost(e: BaseException) -> bool:
    """The server went away (the job may run elsewhere), as opposed to the job failing there."""
    if isinstance(e, urllib.error.HTTPError):
        return e.code in PROXY_DOWN_CODES
    if isinstance(e, urllib.error.URLError):
        return True  # refused, unreachable host, DNS, timeout while connecting
    return isinstance(e, LOST_ERRORS)


def first_line(e: BaseException | str) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0].removesuffix("; log tail:")[:300]


class JobFailed(Exception):
    """The job ran but did not give what a batch needs (e.g. no saved video)."""


class InversionUnavailable(Exception):
    """No server that had an edit job's inversion file answers, and there is no local copy."""

    def __init__(self, inv_id: str, name: str, message: str):
        super().__init__(message)
        self.inv_id, self.name = inv_id, name


class Worker:
    def __init__(self, batch, server: ComfyServer, label: str):
        self.batch, self.server, self.label = batch, server, label
        self.state = "starting"
        self.down_since: float | None = time.monotonic()
        self.prompt_id: str | None = None
        self.usable = True
        self.thread = threading.Thread(target=self.loop, name=f"batch-{label}", daemon=True)

    # ------------------------------------------------------------------ lifecycle
    def loop(self) -> None:
        while True:  # up, and serving the workflow's nodes
            if not self.wait_until_back():
                return
            try:
                if not self.check_nodes():
                    return
                break
            except Exception as e:  # noqa: BLE001
                if not is_lost(e):
                    raise
        while (job := self.batch.next_job(self)) is not None:
            attempt, t0 = self.batch.begin(job, self), time.monotonic()
            try:
                result = self.execute(job, attempt)
            except InversionUnavailable as e:
                self.batch.reinvert(job, attempt, t0, e)
            except Exception as e:  # noqa: BLE001 - every failure is recorded in the manifest
                lost = is_lost(e)
                self.batch.end(job, self, attempt, t0, "server lost" if lost else "failed", first_line(e)
                               if lost else str(e).strip() or type(e).__name__)
                if lost and not self.wait_until_back():
                    return
                if not lost and self.prompt_id:
                    self.cancel_quietly(self.prompt_id)  # e.g. past --job-timeout: it must not run on
            else:
                self.batch.end(job, self, attempt, t0, "done", result=result)
            finally:
                self.prompt_id = None
        self.state = "finished" if self.usable else self.state

    def wait_until_back(self) -> bool:
        """Probe with backoff until the server answers; False if the batch stopped meanwhile."""
        delay = 1.0
        lost_prompt = self.prompt_id
        while not self.batch.stopped and not self.batch.nothing_left():
            if self.server.alive():
                if self.down_since is not None and self.state != "starting":
                    self.batch.log(f"{self.label} {self.server.url} answers again")
                self.down_since, self.state = None, "idle"
                if lost_prompt:  # the connection dropped but the server lived: do not let it run on
                    self.cancel_quietly(lost_prompt)
                return True
            if self.down_since is None:
                self.down_since = time.monotonic()
            self.state = f"down (next try in {delay:.0f}s)"
            if self.batch.wait_stop(delay):
                break
            delay = min(delay * 2, PROBE_MAX_S)
        return False

    def cancel_quietly(self, prompt_id: str) -> None:
        try:
            self.server.cancel(prompt_id)
        except Exception:  # noqa: BLE001 - best effort: the job is already recorded
            pass

    def check_nodes(self) -> bool:
        missing = sorted(self.batch.required_classes - set(self.server.object_info()))
        if missing:
            self.usable, self.state = False, "unusable"
            self.batch.log(f"{self.label} {self.server.url} is not used: it lacks {', '.join(missing)} "
                           "(install this pack and the workflow's custom nodes there)")
        return not missing

    # ------------------------------------------------------------------ one job
    def execute(self, job: Job, attempt: dict) -> dict:
        srv = self.server
        self.state = f"{job.id}: clip"
        self.ensure_clip(job.clip)
        prompt = copy.deepcopy(job.prompt)
        for load, inv_id in job.needs.items():
            self.state = f"{job.id}: inversion"
            prompt[load]["inputs"]["name"] = self.ensure_inversion(inv_id)
        self.state = f"{job.id}: queued"

        def on_message(event: str, data: dict) -> None:
            if event == "queued":
                self.prompt_id = attempt["prompt_id"] = data["prompt_id"]
            elif event == "executing" and data.get("node"):
                self.state = f"{job.id}: {prompt.get(str(data['node']), {}).get('class_type', data['node'])}"
            elif event == "progress":
                self.state = f"{self.state.split(' [')[0]} [{data.get('value')}/{data.get('max')}]"
            self.batch.notify(event, job, self, data)

        result = srv.run(prompt, timeout=self.batch.job_timeout, on_message=on_message,
                         client_id=self.batch.client_id)
        self.state = f"{job.id}: download"
        if job.kind == "invert":
            texts = (result.outputs.get(job.save_node) or {}).get("text") or []
            if not texts:
                raise JobFailed(f"Save Inversion reported no file name (outputs: {result.outputs})")
            subfolder, filename = texts[0].rsplit("/", 1)
            return {"output": texts[0], "size": srv.file_size(filename, subfolder, "output"), "holders": [srv.url]}
        videos = result.videos()
        if not videos:
            raise JobFailed(f"the workflow ran but saved no video (outputs: {result.outputs})")
        name = f"{job.id}{Path(videos[0]['filename']).suffix.lower()}"
        srv.download(self.batch.out_dir / name, **videos[0])
        return {"output": name}

    def ensure_clip(self, clip: Clip) -> None:
        size = clip.path.stat().st_size
        with self.batch.file_lock(clip.upload_name):
            if self.server.file_size(clip.upload_name, UPLOAD_SUBFOLDER, "input") != size:
                self.server.upload(clip.path, clip.upload_name, UPLOAD_SUBFOLDER, "input")

    def ensure_inversion(self, inv_id: str) -> str:
        """The inversion's name on this server, copied here (through <out>/inversions) if needed."""
        with self.batch.cond:
            e = self.batch.manifest.jobs[inv_id]
            name, size, holders = e["output"], e["size"], list(e.get("holders", []))
        subfolder, filename = name.rsplit("/", 1)
        with self.batch.file_lock(name):
            if self.server.file_size(filename, subfolder, "output") != size:
                local = self.batch.out_dir / INVERSIONS / filename
                if not (local.is_file() and local.stat().st_size == size):
                    for url in holders:
                        if url == self.server.url:
                            continue
                        try:
                            self.batch.client(url).download(local, filename, subfolder, "output")
                            break
                        except Exception as ex:  # noqa: BLE001 - that holder is down or lost the file
                            self.batch.log(f"{self.label}: could not fetch {name} from {url}: {first_line(ex)}")
                    else:
                        raise InversionUnavailable(inv_id, name, f"{name}: no server that had it answers and "
                                                   f"no copy is in {local.parent}")
                self.server.upload(local, filename, subfolder, "output")
        self.batch.add_holder(inv_id, self.server.url)
        return name

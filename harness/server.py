"""The real ComfyUI server as a subprocess on loopback, and a small client for it.

    with ComfyServer(base) as srv:           # base prepared with embedded.prepare_base_dir
        info = srv.object_info()
        result = srv.run(api_prompt)          # queue, follow the websocket, fetch history
        data = srv.view(**result.outputs_of_type(".mp4")[0])

The server runs ``embedded.server_command(base, port)`` on a free 127.0.0.1 port; its log
goes to a file whose tail is quoted whenever it dies or a run fails. It is always stopped
on exit (terminate, then kill).

``ComfyServer.attach(url)`` is the same client for a ComfyUI someone else started (any host);
nothing is started or stopped then. A server that dies, drops the websocket or answers 502-504
raises ``ServerLost`` (the prompt may run again elsewhere); a prompt that fails on its own merits
raises plain ``ComfyServerError``.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .embedded import REPO_ROOT, server_command
from .pack import import_pack

import_pack()
from videoedit.nodes.core.atomic_file import atomic_path  # noqa: E402

LOOPBACK = "127.0.0.1"
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif")
# websocket events collected by wait(); anything else (status, previews) is ignored
EVENTS = ("execution_start", "execution_cached", "progress", "executing", "executed",
          "execution_error", "execution_interrupted", "execution_success", "progress_state")


class ComfyServerError(RuntimeError):
    """The server died, refused a prompt, or a prompt failed; the message says why."""


class ServerLost(ComfyServerError):
    """The server died, closed the connection or is unreachable behind a proxy (502-504) while a
    prompt was in flight: the prompt did not fail on its own merits."""


PROXY_DOWN_CODES = (502, 503, 504)  # a reverse proxy's answers while the ComfyUI behind it is down


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class RunResult:
    prompt_id: str
    history: dict                      # the /history/{id} entry
    messages: list = field(default_factory=list)   # [(event, data)] from the websocket

    @property
    def outputs(self) -> dict:
        return self.history.get("outputs", {})

    def events(self, name: str) -> list[dict]:
        return [d for e, d in self.messages if e == name]

    def files(self) -> list[dict]:
        """Every file output ({filename, subfolder, type}) of every node, in node order."""
        found = []
        for node_out in self.outputs.values():
            for value in node_out.values():
                if isinstance(value, list):
                    found.extend(v for v in value if isinstance(v, dict) and "filename" in v)
        return found

    def videos(self) -> list[dict]:
        return [f for f in self.files() if f["filename"].lower().endswith(VIDEO_EXTENSIONS)]


class ComfyServer:
    """Start/stop the real server; talk to it over HTTP and the websocket."""

    def __init__(self, base: Path | None, port: int | None = None, extra_args: list[str] | None = None,
                 startup_timeout: float = 120.0, log_path: Path | None = None, env: dict | None = None,
                 python: str | None = None, comfyui: Path | None = None, cpu: bool = True,
                 host: str = LOOPBACK):
        self.base = Path(base).resolve() if base is not None else None  # None: a server we did not start
        self.host = host
        self.port = port or free_port()
        self.python, self.comfyui, self.cpu = python, comfyui, cpu  # what start() runs (embedded.server_command)
        self.extra_args = list(extra_args or [])
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path) if log_path else None
        self.env = env
        self.proc: subprocess.Popen | None = None
        self._log = None
        self._own_log = False  # a temporary log we made is removed on stop
        self.remote_url: str | None = None  # set by attach(): a server this object did not start

    @classmethod
    def attach(cls, url: str) -> "ComfyServer":
        """A client for a ComfyUI already running at ``url`` (http[s]://HOST:PORT, any machine).
        Do not start() it; stop() leaves it running."""
        parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"server URL '{url}': expected http://HOST:PORT (e.g. http://10.0.0.5:8188)")
        srv = cls(None, port=parts.port or (443 if parts.scheme == "https" else 80), host=parts.hostname)
        srv.remote_url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        return srv

    # ----------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        return self.remote_url or f"http://{self.host}:{self.port}"

    def start(self) -> "ComfyServer":
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="comfyui-server-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
            self._own_log = True
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        cmd = server_command(self.base, self.port, self.extra_args, python=self.python or sys.executable,
                             comfyui=self.comfyui, cpu=self.cpu)
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=str(REPO_ROOT), env=env)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise ComfyServerError(
                    f"ComfyUI server exited with code {self.proc.returncode} while starting; log tail:\n"
                    f"{self.log_tail()}")
            try:
                self._get("/system_stats", timeout=2)
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() > deadline:
                raise ComfyServerError(
                    f"ComfyUI server not ready on {self.url} after {self.startup_timeout:.0f} s; log tail:\n"
                    f"{self.log_tail()}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._own_log and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        if self.remote_url:
            return f"(the log of {self.remote_url} is on that machine)"
        try:
            if self._log is not None:
                self._log.flush()
            text = self.log_path.read_text(errors="replace")
        except (OSError, AttributeError):
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # ---------------------------------------------------------------------- HTTP
    def _request(self, path: str, data: bytes | None = None, timeout: float = 30):
        req = urllib.request.Request(self.url + path, data=data,
                                     headers={"Content-Type": "application/json"} if data is not None else {})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read()

    def _get(self, path: str, timeout: float = 30):
        return self._request(path, timeout=timeout)

    def get_json(self, path: str):
        return json.loads(self._get(path))

    def alive(self, timeout: float = 5) -> bool:
        """Whether the server answers GET /system_stats now."""
        try:
            self._get("/system_stats", timeout=timeout)
            return True
        except (OSError, ValueError, http.client.HTTPException):  # refused, reset, timeout, garbled
            return False

    def object_info(self) -> dict:
        return self.get_json("/object_info")

    def queue_prompt(self, prompt: dict, client_id: str) -> str:
        body = json.dumps({"prompt": prompt, "client_id": client_id}).encode()
        try:
            resp = json.loads(self._request("/prompt", data=body))
        except urllib.error.HTTPError as e:
            if e.code in PROXY_DOWN_CODES:
                raise ServerLost(f"{self.url} answered {e.code} {e.reason} to /prompt") from None
            detail = e.read().decode(errors="replace")
            try:
                detail = _format_prompt_error(json.loads(detail))
            except ValueError:
                pass
            raise ComfyServerError(f"server refused the prompt: {detail}") from None
        if resp.get("node_errors"):
            raise ComfyServerError(f"server refused the prompt: {_format_prompt_error(resp)}")
        return resp["prompt_id"]

    def free(self) -> None:
        """Core's POST /free: unload every model and clear the node-output cache (what the Manager's
        "Free model and node cache" button does). The worker does it between prompts."""
        self._request("/free", data=json.dumps({"unload_models": True, "free_memory": True}).encode())

    def interrupt(self) -> None:
        """Core's POST /interrupt: stop the prompt that is running (nodes stop at their next
        interruption check)."""
        self._request("/interrupt", data=b"{}")

    def upload_input(self, path: Path, name: str) -> str:
        """Put a file into the server's input folder (core's POST /upload/image, which takes any
        file, as the canvas's video upload does); returns the name the server stored it under."""
        boundary = uuid.uuid4().hex
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\ntrue\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"type\"\r\n\r\ninput\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode()
        body = head + Path(path).read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        req = urllib.request.Request(self.url + "/upload/image", data=body,
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(req, timeout=120) as r:
            resp = json.loads(r.read())
        return resp["name"] if not resp.get("subfolder") else f"{resp['subfolder']}/{resp['name']}"

    def history(self, prompt_id: str) -> dict | None:
        return self.get_json(f"/history/{urllib.parse.quote(prompt_id)}").get(prompt_id)

    def view(self, filename: str, subfolder: str = "", type: str = "output", **_) -> bytes:
        q = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": type})
        return self._get(f"/view?{q}", timeout=120)

    def download(self, dest: Path, filename: str, subfolder: str = "", type: str = "output", **_) -> int:
        """Stream a file from /view into ``dest`` atomically (a broken transfer leaves no file);
        returns its size. For files too large to hold in memory (inversions, long videos)."""
        q = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": type})
        with urllib.request.urlopen(self.url + f"/view?{q}", timeout=120) as r, atomic_path(dest) as tmp:
            with open(tmp, "wb") as f:
                size = 0
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    size += len(chunk)
            expected = r.headers.get("Content-Length")
            if expected is not None and int(expected) != size:
                raise ServerLost(f"{self.url}: /view of {subfolder}/{filename} ended after {size} of {expected} bytes")
        return size

    def file_size(self, filename: str, subfolder: str = "", type: str = "input") -> int | None:
        """The size of a file in the server's input/output/temp folder (HEAD /view), None if absent."""
        q = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": type})
        req = urllib.request.Request(self.url + f"/view?{q}", method="HEAD")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                length = r.headers.get("Content-Length")
                return int(length) if length is not None else None
        except urllib.error.HTTPError as e:
            if e.code in PROXY_DOWN_CODES:
                raise ServerLost(f"{self.url} answered {e.code} {e.reason} to HEAD /view") from None
            if e.code in (400, 403, 404):
                return None
            raise

    def upload(self, path: Path, filename: str, subfolder: str = "", type: str = "input") -> dict:
        """POST /upload/image (ComfyUI takes any file there: videos, safetensors), streamed from
        ``path``, overwriting a file of that name; returns the server's {name, subfolder, type}."""
        path = Path(path)
        boundary = uuid.uuid4().hex
        fields = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
                         for k, v in (("type", type), ("subfolder", subfolder), ("overwrite", "true")))
        head = (fields + f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
                f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n').encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        size = path.stat().st_size

        def body():
            yield head
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    yield chunk
            yield tail
        req = urllib.request.Request(self.url + "/upload/image", data=body(), method="POST", headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(len(head) + size + len(tail))})
        try:
            with urllib.request.urlopen(req, timeout=300) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            if e.code in PROXY_DOWN_CODES:
                raise ServerLost(f"{self.url} answered {e.code} {e.reason} to /upload/image") from None
            raise ComfyServerError(f"{self.url} refused the upload of {filename} to {type}/{subfolder}: "
                                   f"{e.code} {e.reason}") from None

    def cancel(self, prompt_id: str) -> None:
        """Take ``prompt_id`` off the queue, or interrupt it if it is running (targeted: another
        user's prompt on a shared server is left alone)."""
        self._request("/queue", data=json.dumps({"delete": [prompt_id]}).encode(), timeout=10)
        self._request("/interrupt", data=json.dumps({"prompt_id": prompt_id}).encode(), timeout=10)

    # ----------------------------------------------------------------- websocket
    def wait(self, prompt_id: str, client_id: str, timeout: float = 600, on_message=None) -> list:
        """Follow the websocket until ``prompt_id`` is done; return its [(event, data)].

        Connecting after queueing can miss early events, so while no message arrives the
        history is polled too; prefer ``run`` (which connects first).
        """
        return asyncio.run(self._follow(None, prompt_id, client_id, timeout, on_message))[1]

    def run(self, prompt: dict, timeout: float = 600, on_message=None, client_id: str | None = None) -> RunResult:
        """Queue ``prompt``, follow it to the end, raise ComfyServerError if it failed (ServerLost
        if the server went away). ``on_message`` also gets ("queued", {"prompt_id": ...})."""
        client_id = client_id or uuid.uuid4().hex
        prompt_id, messages = asyncio.run(self._follow(prompt, None, client_id, timeout, on_message))
        hist = self.history(prompt_id)
        if hist is None:
            raise ComfyServerError(f"prompt {prompt_id} finished but has no history entry")
        errors = [d for e, d in messages if e == "execution_error"]
        status = hist.get("status", {})
        if errors or status.get("status_str") == "error":
            if not errors:
                errors = [d for e, d in status.get("messages", []) if e == "execution_error"]
            raise ComfyServerError(_format_execution_error(errors[0] if errors else {}) +
                                   f"\nserver log tail:\n{self.log_tail(20)}")
        if any(e == "execution_interrupted" for e, _ in messages):
            raise ComfyServerError(f"prompt {prompt_id} was interrupted")
        return RunResult(prompt_id, hist, messages)

    async def _follow(self, prompt, prompt_id, client_id, timeout, on_message):
        import aiohttp
        messages = []
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            ws_url = "ws" + self.url[len("http"):] + f"/ws?clientId={client_id}"
            async with session.ws_connect(ws_url, max_msg_size=0) as ws:
                if prompt is not None:
                    prompt_id = await asyncio.to_thread(self.queue_prompt, prompt, client_id)
                    if on_message is not None:
                        on_message("queued", {"prompt_id": prompt_id})
                while True:
                    if time.monotonic() > deadline:
                        raise ComfyServerError(f"prompt {prompt_id} not done after {timeout:.0f} s")
                    if self.proc is not None and self.proc.poll() is not None:
                        raise ServerLost(f"ComfyUI server died (code {self.proc.returncode}); log tail:\n"
                                         f"{self.log_tail()}")
                    try:
                        msg = await ws.receive(timeout=2.0)
                    except asyncio.TimeoutError:
                        try:
                            if await asyncio.to_thread(self.history, prompt_id) is not None:
                                return prompt_id, messages  # finished while we were not listening
                        except OSError:  # a server starved of CPU answers late; the deadline still holds
                            pass
                        continue
                    if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
                        raise ServerLost(f"websocket closed while waiting for {prompt_id}; log tail:\n"
                                         f"{self.log_tail()}")
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue  # binary preview images
                    data = json.loads(msg.data)
                    event, payload = data.get("type"), data.get("data") or {}
                    if event not in EVENTS:
                        continue
                    if payload.get("prompt_id") not in (None, prompt_id):
                        continue
                    messages.append((event, payload))
                    if on_message is not None:
                        on_message(event, payload)
                    if event in ("execution_error", "execution_interrupted", "execution_success") or (
                            event == "executing" and payload.get("node") is None):
                        # the history entry is written just after these messages are sent
                        while await asyncio.to_thread(self.history, prompt_id) is None:
                            if time.monotonic() > deadline:
                                raise ComfyServerError(f"prompt {prompt_id} finished but has no history entry")
                            await asyncio.sleep(0.05)
                        return prompt_id, messages


def _format_prompt_error(resp: dict) -> str:
    parts = []
    err = resp.get("error")
    if isinstance(err, dict):
        parts.append(f"{err.get('message', '')} {err.get('details', '')}".strip())
    elif err:
        parts.append(str(err))
    for node_id, ne in (resp.get("node_errors") or {}).items():
        for e in ne.get("errors", []):
            parts.append(f"node {node_id} ({ne.get('class_type')}): {e.get('message')}: {e.get('details')}")
    return "; ".join(p for p in parts if p) or json.dumps(resp)


def _format_execution_error(err: dict) -> str:
    tb = "".join(err.get("traceback") or [])
    return (f"node {err.get('node_id')} ({err.get('node_type')}) failed: "
            f"{err.get('exception_type', 'error')}: {err.get('exception_message', '(no message)')}"
            + (f"\n{tb}" if tb else ""))

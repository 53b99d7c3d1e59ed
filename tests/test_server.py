"""The real ComfyUI server (harness.server): our nodes and templates as the canvas sees them,
errors carried back with the server's own message, and the server's lifecycle."""
from __future__ import annotations

import json
import socket
import uuid
from pathlib import Path

import pytest

from harness.server import ComfyServer, ComfyServerError

ROOT = Path(__file__).resolve().parent.parent
OUR_NODES = ("VideoEditTAESDEncode", "VideoEditTAESDDecode")


def test_server_listens_on_loopback_only(comfy_server):
    assert comfy_server.url.startswith("http://127.0.0.1:")
    stats = comfy_server.get_json("/system_stats")
    argv = stats["system"]["argv"]
    assert argv[argv.index("--listen") + 1] == "127.0.0.1"


def test_object_info_lists_our_nodes(object_info):
    for node_id in OUR_NODES:
        assert node_id in object_info, f"{node_id} missing: the pack did not load in the real server"
        info = object_info[node_id]
        assert info["category"].startswith("video edit/"), info["category"]
        assert info["python_module"].startswith("custom_nodes."), info["python_module"]
    enc = object_info["VideoEditTAESDEncode"]
    assert enc["input_order"]["required"] == ["images", "variant", "frames_per_chunk"]
    assert enc["output"] == ["LATENT"]
    assert object_info["VideoEditTAESDDecode"]["output"] == ["IMAGE"]


def test_workflow_templates_serve_our_workflows(comfy_server):
    listing = comfy_server.get_json("/api/workflow_templates")
    shipped = sorted(p.stem for p in (ROOT / "example_workflows").glob("*.json"))
    assert shipped, "example_workflows/ holds no template"
    assert sorted(listing.get("ComfyUI-VideoEdit", [])) == shipped, listing
    for name in shipped:
        served = comfy_server.get_json(f"/api/workflow_templates/ComfyUI-VideoEdit/{name}.json")
        assert served == json.loads((ROOT / "example_workflows" / f"{name}.json").read_text())


def test_invalid_prompt_is_refused_with_the_servers_message(comfy_server):
    prompt = {"1": {"class_type": "LoadVideo", "inputs": {"file": "no_such_clip.mp4"}},
              "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
              "3": {"class_type": "CreateVideo", "inputs": {"images": ["2", 0], "fps": 8.0}},
              "4": {"class_type": "SaveVideo", "inputs": {"video": ["3", 0], "filename_prefix": "x",
                                                          "format": "auto", "codec": "auto"}}}
    with pytest.raises(ComfyServerError, match="refused.*no_such_clip.mp4"):
        comfy_server.run(prompt, timeout=60)


def test_execution_error_carries_the_node_exception(comfy_server, sample_clip):
    # taesd3 files are not installed: our node's FileNotFoundError must come back verbatim
    prompt = {"1": {"class_type": "LoadVideo", "inputs": {"file": sample_clip.name}},
              "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
              "3": {"class_type": "VideoEditTAESDEncode",
                    "inputs": {"images": ["2", 0], "variant": "taesd3", "frames_per_chunk": 4}},
              "4": {"class_type": "VideoEditTAESDDecode",
                    "inputs": {"samples": ["3", 0], "variant": "taesd3", "frames_per_chunk": 4}},
              "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}}}
    with pytest.raises(ComfyServerError) as e:
        comfy_server.run(prompt, timeout=120)
    msg = str(e.value)
    assert "VideoEditTAESDEncode" in msg and "taesd3_encoder.safetensors" in msg and "vae_approx" in msg


def test_queue_then_wait_and_history(comfy_server, sample_clip):
    """The lower-level calls: queue_prompt, wait (connects late, polls history), history, view."""
    prompt = {"1": {"class_type": "LoadVideo", "inputs": {"file": sample_clip.name}},
              "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
              "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0],
                                                          "filename_prefix": f"videoedit/test_{uuid.uuid4().hex[:6]}"}}}
    client_id = uuid.uuid4().hex
    prompt_id = comfy_server.queue_prompt(prompt, client_id)
    comfy_server.wait(prompt_id, client_id, timeout=120)
    hist = comfy_server.history(prompt_id)
    assert hist["status"]["status_str"] == "success"
    images = hist["outputs"]["3"]["images"]
    assert len(images) == sample_clip.num_frames
    png = comfy_server.view(**images[0])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def _free_loopback_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_start_failure_reports_log_tail(tmp_path):
    from harness import embedded
    base = embedded.prepare_base_dir(tmp_path / "base")
    srv = ComfyServer(base, extra_args=["--no-such-comfy-flag"], startup_timeout=60)
    with pytest.raises(ComfyServerError, match="(?s)exited with code.*unrecognized arguments: --no-such-comfy-flag"):
        srv.start()
    assert srv.proc.poll() is not None


def test_server_is_stopped_on_exit(tmp_path):
    from harness import embedded
    base = embedded.prepare_base_dir(tmp_path / "base")
    port = _free_loopback_port()
    with ComfyServer(base, port=port) as srv:
        assert srv.get_json("/system_stats")["system"]["python_version"]
        proc = srv.proc
    assert proc.poll() is not None
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()

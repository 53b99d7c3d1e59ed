"""Latent previews on the real canvas: a server started with ``--preview-method latent2rgb``
(core's Latent2RGB previewer: the fixtures' random TAESD decoder paints black, latent2rgb shows
the latents' colours) runs the shipped TokenFlow SDEdit template on
the sample clip (64x64, 8 frames) at its fewest steps, queued from the canvas (Debian Chromium +
Playwright, the pinned frontend, classic canvas). The page must receive the DDIM Inverter's and
the Keyframe Sampler's previews over the websocket (``b_preview_with_metadata``, one per chunk
per step: the sampler runs in chunks of 4 here), each a strip of three frames, and the frontend
must show them on those nodes (its ``nodePreviewImages``). The screenshot of the sampler showing
its preview goes to out/screenshots/ (docs/screens/ holds the README's copy).

Random weights: the pictures are the fixtures' noise, so this shows previews arriving and shown,
not what an edit looks like. Full-size SD1.5 fixture on the CPU: marked slow.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from test_browser import SCREENSHOTS, _load, _open_canvas, _wait_queue_empty, browser  # noqa: F401 (fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "example_workflows" / "tokenflow_sdedit_edit.json"
SAMPLE_NAME = "videoedit_sample.mp4"

RECORD_PREVIEWS = """() => {
    // every preview the server sends (the frontend asks for them with metadata: the node they
    // belong to), its type and picture size; and which nodes the frontend shows a preview on,
    // polled while the prompt runs
    window.__previews = []; window.__shown = {};
    window.app.api.addEventListener('b_preview_with_metadata', ({detail}) => {
        const rec = {node: String(detail.displayNodeId), type: detail.blob.type, bytes: detail.blob.size};
        window.__previews.push(rec);
        const url = URL.createObjectURL(detail.blob), img = new Image();
        img.onload = () => { rec.width = img.naturalWidth; rec.height = img.naturalHeight; URL.revokeObjectURL(url); };
        img.src = url;
        const reader = new FileReader();
        reader.onload = () => { window.__lastPreview = reader.result; };
        reader.readAsDataURL(detail.blob);
    });
    window.__poll = setInterval(() => {
        for (const [id, urls] of Object.entries(window.app.nodePreviewImages ?? {}))
            if (urls?.length) window.__shown[id] = (window.__shown[id] ?? 0) + 1;
    }, 50);
}"""


FRAME_NODE = """(id) => {
    // the node at scale 1 near the top left of the canvas, room below it for its preview; the
    // page area to photograph
    const c = window.app.canvas, n = c.graph.getNodeById(id);
    c.ds.scale = 1; c.ds.offset[0] = 300 - n.pos[0]; c.ds.offset[1] = 104 - n.pos[1];
    c.setDirty(true, true);
    const r = c.canvas.getBoundingClientRect();
    return {x: r.left + 260, y: r.top + 66, width: n.size[0] + 80, height: Math.min(r.height - 76, 780)};
}"""


@pytest.fixture(scope="module")
def preview_server(tmp_path_factory):
    """A real server with every fixture, the sample clip, and latent2rgb previews on."""
    from harness import embedded, fixtures
    from harness.sample_clip import panned_frames, write_mp4
    from harness.server import ComfyServer
    base = embedded.prepare_base_dir(ROOT / ".comfy" / "previews-base")
    fixtures.install_all(base)
    frames, _ = panned_frames(8, 64, shift=(2, 1))
    write_mp4(frames, base / "input" / SAMPLE_NAME, fps=8)
    with ComfyServer(base, extra_args=["--preview-method", "latent2rgb"],
                     log_path=base / "user" / "previews-server.log") as srv:
        yield srv


def test_sampler_previews_arrive_on_the_canvas(browser, preview_server):  # noqa: F811
    started = time.monotonic()
    page = _open_canvas(browser, preview_server, vue_nodes=False)
    wf = json.loads(TEMPLATE.read_text())
    inverter = next(n["id"] for n in wf["nodes"] if n["type"] == "VideoEditTokenFlowDDIMInverter")
    sampler = next(n["id"] for n in wf["nodes"] if n["type"] == "VideoEditTokenFlowKeyframeSampler")
    _load(page, wf)
    # the fewest steps: 2 inversion steps without refinement; denoise 0.6 leaves the sampler 1 step,
    # in two chunks of 4 frames (a preview per chunk)
    page.evaluate("""([inv, smp]) => {
        const set = (id, name, v) => { const w = window.app.graph.getNodeById(id).widgets.find(w => w.name === name);
                                        w.value = v; };
        set(inv, 'steps', 2); set(inv, 'refine_iters', 0); set(smp, 'frames_per_chunk', 4);
    }""", [inverter, sampler])
    page.evaluate(RECORD_PREVIEWS)
    page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
    try:
        page.wait_for_function("(id) => (window.app.nodePreviewImages?.[String(id)]?.length ?? 0) > 0",
                               arg=sampler, timeout=900_000)
        clip = page.evaluate(FRAME_NODE, sampler)
        page.wait_for_timeout(400)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "tokenflow_sampler_preview.png"), clip=clip)
    finally:
        _wait_queue_empty(preview_server, timeout=900)
    page.wait_for_timeout(500)  # the last pictures' sizes
    history = preview_server.get_json("/history")
    assert history and all(h["status"]["status_str"] == "success" for h in history.values()), history
    got = page.evaluate("() => ({previews: window.__previews, shown: window.__shown})")
    import base64
    (SCREENSHOTS / "tokenflow_last_preview.jpg").write_bytes(
        base64.b64decode(page.evaluate("() => window.__lastPreview").split(",", 1)[1]))
    print(f"previews test: {time.monotonic() - started:.0f} s from opening the canvas to the prompt's end")
    by_node = {}
    for rec in got["previews"]:
        by_node.setdefault(rec["node"], []).append(rec)
    # the inverter: 2 steps of one chunk; the sampler: 1 step of two chunks, each holding a shown frame
    assert len(by_node.get(str(inverter), [])) == 2, got["previews"]
    assert len(by_node.get(str(sampler), [])) == 2, got["previews"]
    for rec in by_node[str(inverter)] + by_node[str(sampler)]:
        assert rec["type"] == "image/jpeg" and rec["bytes"] > 0
        # three frames side by side (first, middle, last; latent2rgb: 8x8 each), which the server
        # scales to fit --preview-size (512)
        assert rec["width"] == 512 and abs(rec["width"] / rec["height"] - 3) < 0.02, rec
    assert got["shown"].get(str(sampler)) and got["shown"].get(str(inverter)), got["shown"]
    assert not page.page_errors, page.page_errors
    page.close()

"""The shipped templates as an artist meets them in the real canvas (headless Debian Chromium
driven by Playwright, the frontend the test server serves):
- with the random-weight stand-ins linked under the real file names (harness.fixtures.install_all),
  every template loads without a missing-models dialog, and every model widget shows a file the
  server lists;
- with those files gone from the server's model folders, the missing-models dialog lists exactly
  the template's public files, each as "<folder> / <file>" with its download URL (files the
  pack's trainers write have no download and are not listed);
- the template browser lists the pack's templates and fetches each one's thumbnail
  (example_workflows/<name>.jpg, what the frontend shows for custom-node templates).
Along the way it renders the thumbnails (the graph as the canvas draws it) into out/thumbnails
and the README's screenshots into out/screenshots/templates; VIDEOEDIT_UPDATE_THUMBNAILS=1
writes the thumbnails into example_workflows/. What it cannot show: that the URLs are live (no
network here), or the newer frontends' Errors panel (it drives the frontend of the embedded
ComfyUI, 1.32.9; tests/test_templates.py checks the entries that panel reads).
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from test_browser import SCREENSHOTS, browser, canvases, frontend_servers  # noqa: F401  module-scoped fixtures on the session server

from harness.model_catalog import TRAINED

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))
IDS = [p.stem for p in WORKFLOWS]
THUMBNAILS = ROOT / "out" / "thumbnails"
README_SHOTS = SCREENSHOTS / "templates"
README_GRAPHS = ("taesd_video_roundtrip", "tokenflow_pnp_edit", "eve_plug_and_play_edit", "movie_ip2p_teacher_edit")
THUMBNAIL_SIZE = 480
PACK = "ComfyUI-VideoEdit"  # the pack's folder name in custom_nodes (harness.embedded.PACK_LINK_NAME)

DIALOG_ROWS = """() => [...document.querySelectorAll('.comfy-missing-models li')].map(li => {
    const span = li.querySelector('span[title]');
    return {text: span?.textContent.trim(), url: span?.getAttribute('title')};
})"""

# bounding box of every node and group on the screen, in CSS pixels
GRAPH_BOX = """() => {
  const c = window.app.canvas, ds = c.ds, r = c.canvas.getBoundingClientRect();
  const g = window.app.graph, boxes = [];
  for (const n of (g._nodes ?? g.nodes)) {
    const t = LiteGraph.NODE_TITLE_HEIGHT;
    boxes.push([n.pos[0], n.pos[1] - t, n.pos[0] + n.size[0], n.pos[1] + n.size[1]]);
  }
  for (const gr of (g._groups ?? g.groups ?? [])) {
    const b = gr._bounding ?? gr.bounding; boxes.push([b[0], b[1], b[0] + b[2], b[1] + b[3]]);
  }
  const x0 = Math.min(...boxes.map(b => b[0])), y0 = Math.min(...boxes.map(b => b[1]));
  const x1 = Math.max(...boxes.map(b => b[2])), y1 = Math.max(...boxes.map(b => b[3]));
  const s = ds.scale, o = ds.offset;
  return [r.left + (x0 + o[0]) * s, r.top + (y0 + o[1]) * s, r.left + (x1 + o[0]) * s, r.top + (y1 + o[1]) * s];
}"""


def _command(pg, cmd: str) -> None:
    pg.evaluate("async (cmd) => { await window.app.extensionManager.command.execute(cmd); }", cmd)


def _setting(pg, key: str, value) -> None:
    pg.evaluate("async ([k, v]) => { await window.app.extensionManager.setting.set(k, v); }", [key, value])


def _reload(pg) -> None:
    """Reload the frontend (fresh model-folder caches). It reopens the last workflow, which brings
    its own missing-models dialog when files are gone: close that first."""
    pg.reload(wait_until="load")
    pg.wait_for_function("() => window.app?.graph && 'VideoEditTAESDEncode' in LiteGraph.registered_node_types",
                         timeout=120_000)
    pg.wait_for_function("() => (window.app.graph.nodes ?? window.app.graph._nodes).length > 0", timeout=30_000)
    pg.wait_for_timeout(1000)  # its dialog opens after the graph is configured
    if _dialog_open(pg):
        _close_dialog(pg)


def _load(pg, wf: dict, name: str) -> None:
    pg.evaluate("async ([wf, name]) => { await window.app.loadGraphData(wf, true, true, name); }", [wf, name])
    pg.wait_for_timeout(300)  # the dialog is a Vue component: one render after loadGraphData resolves


def _dialog_open(pg) -> bool:
    return pg.evaluate("() => !!document.querySelector('.comfy-missing-models')")


def _close_dialog(pg) -> None:
    pg.keyboard.press("Escape")
    pg.wait_for_function("() => !document.querySelector('.comfy-missing-models')", timeout=10_000)


def _expected_rows(wf: dict) -> set[tuple[str, str]]:
    """The public files the template names, as the dialog shows them ("folder / file", url)."""
    rows = {(f"{m['directory']} / {m['name']}", m["url"]) for m in wf.get("models", [])}
    for node in wf["nodes"]:
        values = {v for v in node.get("widgets_values") or [] if isinstance(v, str)}
        rows |= {(f"{m['directory']} / {m['name']}", m["url"])
                 for m in node.get("properties", {}).get("models", []) if m["name"] in values}
    return rows


def _thumbnail(pg, path: Path) -> bytes:
    """The whole graph as the canvas draws it, padded to a square in the canvas colour, JPEG."""
    from PIL import Image
    _command(pg, "Comfy.Canvas.FitView")
    pg.evaluate("() => window.app.canvas.setDirty(true, true)")
    pg.wait_for_timeout(400)
    x0, y0, x1, y1 = pg.evaluate(GRAPH_BOX)
    vw, vh = pg.viewport_size["width"], pg.viewport_size["height"]
    pad = 12
    clip = {"x": max(0, x0 - pad), "y": max(0, y0 - pad)}
    clip["width"] = min(vw, x1 + pad) - clip["x"]
    clip["height"] = min(vh, y1 + pad) - clip["y"]
    shot = Image.open(io.BytesIO(pg.screenshot(clip=clip))).convert("RGB")
    side = max(shot.size)
    square = Image.new("RGB", (side, side), shot.getpixel((1, 1)))
    square.paste(shot, ((side - shot.width) // 2, (side - shot.height) // 2))
    out = io.BytesIO()
    square.resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.LANCZOS).save(out, "JPEG", quality=82, optimize=True)
    return out.getvalue()


@pytest.fixture(scope="module")
def canvas(canvases):  # noqa: F811
    """The embedded frontend's page (legacy canvas) with the first-run banner dismissed
    (screenshots show the canvas)."""
    page = canvases("embedded")
    page.evaluate("() => localStorage.setItem('vueNodesBannerDismissed', 'true')")
    _reload(page)
    return page


def test_templates_load_without_missing_models_when_the_files_are_there(canvas, sample_clip):
    """Fixtures linked under the real names: no dialog, and every model widget's value is one the
    server lists (the combo's options). Renders the thumbnails and README screenshots."""
    THUMBNAILS.mkdir(parents=True, exist_ok=True)
    README_SHOTS.mkdir(parents=True, exist_ok=True)
    update = os.environ.get("VIDEOEDIT_UPDATE_THUMBNAILS") == "1"
    lod = canvas.evaluate("() => window.app.extensionManager.setting.get('LiteGraph.Canvas.MinFontSizeForLOD')")
    _setting(canvas, "LiteGraph.Canvas.MinFontSizeForLOD", 0)  # thumbnails: draw text and widgets at any zoom
    try:
        for path in WORKFLOWS:
            wf = json.loads(path.read_text())
            canvas.set_viewport_size({"width": 1600, "height": 900})
            _load(canvas, wf, path.stem)
            assert not _dialog_open(canvas), f"{path.name}: missing-models dialog although every file is linked"
            unlisted = canvas.evaluate("""() => window.app.graph.nodes.flatMap(n => (n.widgets ?? [])
                .filter(w => w.type === 'combo' && typeof w.value === 'string'
                             && /\\.(safetensors|ckpt|pt|pth)$|^taesd$/.test(w.value))
                .filter(w => !(typeof w.options.values === 'function' ? w.options.values() : w.options.values)
                             .includes(w.value))
                .map(w => `${n.type}.${w.name}=${w.value}`))""")
            assert not unlisted, f"{path.name}: the server does not list {unlisted}"
            if path.stem in README_GRAPHS:
                canvas.evaluate("() => window.app.canvas.setDirty(true, true)")
                canvas.wait_for_timeout(300)
                canvas.screenshot(path=str(README_SHOTS / f"{path.stem}.png"))
            canvas.set_viewport_size({"width": 1600, "height": 1000})
            _command(canvas, "Workspace.ToggleFocusMode")
            try:
                jpg = _thumbnail(canvas, path)
            finally:
                _command(canvas, "Workspace.ToggleFocusMode")
            (THUMBNAILS / f"{path.stem}.jpg").write_bytes(jpg)
            if update:
                path.with_suffix(".jpg").write_bytes(jpg)
    finally:
        _setting(canvas, "LiteGraph.Canvas.MinFontSizeForLOD", lod)
        canvas.set_viewport_size({"width": 1600, "height": 900})


def _hide_model_files(base: Path) -> list[tuple[Path, Path]]:
    """Move every linked stand-in out of the server's model folders; returns (from, to) pairs."""
    from harness import fixtures
    hidden = base / "hidden-models"
    moved = []
    for name in fixtures.stand_ins():
        src = base / "models" / fixtures.folder_of(name) / name
        if src.is_symlink():
            dst = hidden / src.parent.name / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
            moved.append((src, dst))
    return moved


def test_missing_models_dialog_lists_the_real_files(canvas, comfy_server):
    moved = _hide_model_files(comfy_server.base)
    assert moved
    listed = set()
    try:
        _reload(canvas)  # the frontend caches folder listings per page
        for path in WORKFLOWS:
            wf = json.loads(path.read_text())
            expected = _expected_rows(wf)
            assert not _dialog_open(canvas)
            _load(canvas, wf, path.stem)
            if not expected:  # e.g. a template whose only model files are trained ones
                assert not _dialog_open(canvas), path.name
                continue
            canvas.wait_for_selector(".comfy-missing-models li", timeout=10_000)
            rows = {(r["text"], r["url"]) for r in canvas.evaluate(DIALOG_ROWS)}
            assert rows == expected, f"{path.name}: dialog lists {sorted(rows)}, template names {sorted(expected)}"
            listed |= rows
            if path.stem == "eve_plug_and_play_edit":
                canvas.screenshot(path=str(README_SHOTS / "missing_models_dialog.png"))
            _close_dialog(canvas)
        assert not any(t in text for text, _ in listed for t in TRAINED)  # nothing to download for those
    finally:
        for src, dst in moved:
            os.replace(dst, src)
        _reload(canvas)


def test_template_browser_fetches_every_thumbnail(canvas):
    fetched = {}
    prefix = f"/api/workflow_templates/{PACK}/"

    def on_response(resp):
        if prefix in resp.url and resp.url.endswith(".jpg"):
            fetched[resp.url.rsplit("/", 1)[-1]] = (resp.status, resp.headers.get("content-type", ""))
    canvas.on("response", on_response)
    try:
        listed = canvas.evaluate("async () => (await (await fetch('/api/workflow_templates')).json())")
        assert sorted(listed[PACK]) == IDS
        _command(canvas, "Comfy.BrowseTemplates")
        canvas.get_by_role("button").filter(has_text=PACK).first.click()  # nav: Extensions / <pack>
        for name in IDS:  # cards load their images lazily: bring each into view
            canvas.get_by_text(name, exact=True).first.scroll_into_view_if_needed()
            canvas.wait_for_timeout(200)
        canvas.wait_for_timeout(1000)
        canvas.get_by_text(IDS[0], exact=True).first.scroll_into_view_if_needed()
        canvas.wait_for_timeout(500)
        canvas.screenshot(path=str(README_SHOTS / "template_browser.png"))
        assert {f"{n}.jpg" for n in IDS} <= set(fetched), sorted(set(f"{n}.jpg" for n in IDS) - set(fetched))
        assert all(s == 200 and ct.startswith("image/jpeg") for s, ct in fetched.values()), fetched
    finally:
        canvas.remove_listener("response", on_response)
        canvas.keyboard.press("Escape")

"""The shipped workflows in the real canvas: headless Debian Chromium (driven by Playwright,
no browser download) loads each workflow into the ComfyUI frontend and checks that every node
type exists and every link is intact; the canvas's own graphToPrompt must agree with
harness.workflow_api. Screenshots go to out/screenshots/.

Two frontends, both against the embedded ComfyUI 0.3.75 backend (the session's test server):
- ``embedded``: the comfyui-frontend-package ComfyUI 0.3.75 pins (1.32.9, in the venv), served
  by the test server itself;
- ``newest``: NEWEST_FRONTEND (or $VIDEOEDIT_NEWEST_FRONTEND; "off" skips it), pip-installed
  into .cache/ and served by a second 0.3.75 server started with ``--front-end-root``. The page
  takes its files from that server and sends its API calls and websocket to the test server, so
  one training run feeds the live loss chart on every canvas.
The loss chart is checked on both frontends with Nodes 2.0 (Comfy.VueNodes.Enabled) off and on.
Every template's widgets must hold what harness.workflow_api sends for them (a value restored into
the wrong widget shows there); tests/test_browser_core.py does the same on the newest frontend with
current core's definitions.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from harness.workflow_api import input_names, to_api

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "out" / "screenshots"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync",
                 # a page whose document the test hands over (the newest frontend's files, below)
                 # has no address, and Chromium's local-network checks would then block its
                 # websocket to the loopback server
                 "--disable-features=LocalNetworkAccessChecks"]
# The newest comfyui-frontend-package on PyPI when this was written; it serves against 0.3.75.
NEWEST_FRONTEND = os.environ.get("VIDEOEDIT_NEWEST_FRONTEND", "1.58.1")
FRONTENDS = ["embedded"] + ([] if NEWEST_FRONTEND.lower() in ("", "0", "off", "no") else ["newest"])
VUE_NODES = "Comfy.VueNodes.Enabled"
TRAINING_WORKFLOW = ROOT / "example_workflows" / "movie_cfg_distill_train.json"

CHECK_GRAPH = """() => {
  const g = window.app.graph;
  const nodes = g._nodes ?? g.nodes;
  const missing = nodes.filter(n => !(n.type in LiteGraph.registered_node_types)).map(n => `${n.id}:${n.type}`);
  const links = (g.links instanceof Map ? [...g.links.values()] : Object.values(g.links)).filter(Boolean);
  const broken = [];
  for (const l of links) {
    const o = g.getNodeById(l.origin_id), t = g.getNodeById(l.target_id);
    if (!o || !t) { broken.push(`link ${l.id}: node ${o ? l.target_id : l.origin_id} does not exist`); continue; }
    const out = (o.outputs ?? [])[l.origin_slot], inp = (t.inputs ?? [])[l.target_slot];
    if (!out || !inp) { broken.push(`link ${l.id}: slot missing (${o.type}[${l.origin_slot}] -> ${t.type}[${l.target_slot}])`); continue; }
    const ok = out.type === inp.type || out.type === '*' || inp.type === '*'
      || String(inp.type).split(',').includes(String(out.type));
    if (!ok) broken.push(`link ${l.id}: ${o.type}.${out.name} is ${out.type} but ${t.type}.${inp.name} wants ${inp.type}`);
    if (inp.link !== l.id) broken.push(`link ${l.id}: ${t.type}.${inp.name} does not point back to it`);
    if (!(out.links ?? []).includes(l.id)) broken.push(`link ${l.id}: ${o.type}.${out.name} does not list it`);
  }
  return {nodes: nodes.map(n => [n.id, n.type]), links: links.map(l => l.id), missing, broken};
}"""

# The chart's pixels as drawn now, hashed: on the classic canvas the chart's rectangle of the
# LiteGraph canvas; under Nodes 2.0 the <canvas> element the frontend made for the widget.
# Defines window.__chartPixels(id) -> {hash, w, h, blue} (blue: pixels of the loss line).
CHART_PIXELS = """() => {
  window.__chartPixels = (id) => {
    const node = window.app.graph.getNodeById(id);
    const w = node.widgets.find(w => w.name === window.VideoEditLossChart.CHART_WIDGET);
    let canvas, x = 0, y = 0, width, height;
    if (LiteGraph.vueNodesMode) {
      const found = [...document.querySelectorAll(`[data-node-id="${id}"] canvas`)];
      if (found.length !== 1) return {error: `${found.length} <canvas> in the Vue node ${id}`};
      canvas = found[0]; width = canvas.width; height = canvas.height;
    } else {
      const lc = window.app.canvas, dpr = window.devicePixelRatio || 1, s = lc.ds.scale * dpr;
      const wy = w.y ?? w.last_y;
      const [cx, cy] = lc.ds.convertOffsetToCanvas([node.pos[0], node.pos[1] + wy]);
      canvas = lc.canvas; x = Math.round(cx * dpr); y = Math.round(cy * dpr);
      width = Math.round(node.size[0] * s); height = Math.round(w.computeSize(node.size[0])[1] * s);
    }
    if (!width || !height) return {error: `the chart has no area (${width}x${height})`};
    const px = canvas.getContext('2d').getImageData(x, y, width, height).data;
    let h = 2166136261, blue = 0;
    for (let i = 0; i < px.length; i += 4) {
      for (let k = 0; k < 4; k++) { h ^= px[i + k]; h = Math.imul(h, 16777619); }
      if (px[i + 2] > 200 && px[i] < 140) blue++;   // the loss line is #5aaaff
    }
    return {hash: h >>> 0, w: width, h: height, blue};
  };
}"""

# After every training message, two frames later (the classic canvas repaints on its next
# frame, Nodes 2.0 at once), record the step and the chart's pixels.
RECORD_CHART = """(id) => {
  window.__chartLog = [];
  window.app.api.addEventListener(window.VideoEditLossChart.EVENT, ({detail}) => {
    if (String(detail?.node) !== String(id) || !(detail.step >= 1)) return;
    requestAnimationFrame(() => requestAnimationFrame(() =>
      window.__chartLog.push({step: detail.step, ...window.__chartPixels(id)})));
  });
}"""


def _install_frontend(version: str) -> Path:
    """comfyui-frontend-package==version in .cache/ (pip --target, no deps); its static folder."""
    target = ROOT / ".cache" / f"comfyui-frontend-package-{version}"
    static = target / "comfyui_frontend_package" / "static"
    if not (static / "index.html").is_file():
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(tmp),
               f"comfyui-frontend-package=={version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"could not install comfyui-frontend-package=={version} ({' '.join(cmd)}):\n{done.stderr}\n"
                        "set VIDEOEDIT_NEWEST_FRONTEND=off to test only the embedded frontend")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)  # whole or not at all: a cancelled install leaves only the .partial folder
    return static


@pytest.fixture(scope="module")
def frontend_servers(comfy_server):
    """frontend name -> the server its files come from; the newest frontend's starts on first use
    (no models: it serves files only, the test server answers the API)."""
    started = {"embedded": comfy_server}
    stack = []

    def get(frontend: str):
        if frontend not in started:
            from harness import embedded
            from harness.server import ComfyServer
            static = _install_frontend(NEWEST_FRONTEND)
            base = embedded.prepare_base_dir(comfy_server.base.parent / "frontend-newest-base")
            srv = ComfyServer(base, extra_args=["--front-end-root", str(static)],
                              log_path=base / "user" / "frontend-server.log").start()
            stack.append(srv)
            started[frontend] = srv
        return started[frontend]

    yield get
    for srv in stack:
        srv.stop()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed (Debian package 'chromium'; tools/setup_test_deps.sh installs it)")
    sync_playwright = pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is not installed").sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _open_canvas(browser, server, vue_nodes: bool, files_from=None, node_defs: dict | None = None):
    """A page on ``server``'s canvas with Nodes 2.0 set as asked for this page only: the settings
    the frontend reads at start are rewritten in flight, the server's own settings stay as they are.
    ``files_from``: another server whose frontend files (everything but /api/ calls, plus the
    /api/extensions listing of them) the page loads instead. ``node_defs`` replace the server's
    /object_info entries of those nodes, for this page only."""
    pg = browser.new_page(viewport={"width": 1600, "height": 900})
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))

    def frontend_file(route):
        url = urlsplit(route.request.url)
        if route.request.method == "GET" and (not url.path.startswith("/api/") or url.path == "/api/extensions"):
            # without the page's Origin: the server refuses cross-origin requests (403)
            headers = {k: v for k, v in route.request.headers.items() if k.lower() not in ("origin", "host")}
            target = files_from.url + url.path + (f"?{url.query}" if url.query else "")
            return route.fulfill(response=route.fetch(url=target, headers=headers))
        route.fallback()
    if files_from is not None and files_from is not server:
        pg.route("**/*", frontend_file)

    def object_info(route):
        resp = route.fetch()
        route.fulfill(response=resp, json={**resp.json(), **node_defs})
    if node_defs:
        pg.route(re.compile(r"/object_info$"), object_info)

    def settings(route):
        if route.request.method != "GET":
            return route.fallback()
        resp = route.fetch()
        values = resp.json()
        values.update({VUE_NODES: vue_nodes, "Comfy.TutorialCompleted": True})  # no tour over the canvas
        route.fulfill(response=resp, json=values)
    pg.route(re.compile(r"/settings$"), settings)
    pg.goto(server.url, wait_until="load", timeout=120_000)
    pg.wait_for_function(
        "() => window.app?.graph && window.LiteGraph?.registered_node_types"
        " && 'VideoEditTAESDEncode' in LiteGraph.registered_node_types && window.VideoEditLossChart",
        timeout=120_000)
    assert pg.evaluate("() => !!LiteGraph.vueNodesMode") == vue_nodes, f"{VUE_NODES} did not take effect"
    pg.wait_for_function("() => (window.app.api.socket?.readyState ?? WebSocket.OPEN) === WebSocket.OPEN",
                         timeout=30_000)  # the server's messages reach this page
    pg.page_errors = errors
    pg.frontend_version = pg.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ ?? null")
    return pg


@pytest.fixture(scope="module")
def canvases(browser, comfy_server, frontend_servers):
    """(frontend, vue_nodes) -> an open page on the test server, opened on first use, kept for the module."""
    pages = {}

    def get(frontend: str, vue_nodes: bool = False):
        key = (frontend, vue_nodes)
        if key not in pages:
            pages[key] = _open_canvas(browser, comfy_server, vue_nodes, files_from=frontend_servers(frontend))
        return pages[key]

    yield get
    for pg in pages.values():
        pg.close()


def _load(page, wf):
    page.evaluate("async (wf) => { await window.app.loadGraphData(wf, true, true, null); }", wf)
    page.keyboard.press("Escape")  # a dialog (e.g. missing models) would hide the canvas


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_canvas_knows_our_nodes(canvases, frontend):
    page = canvases(frontend)
    types = page.evaluate("() => Object.keys(LiteGraph.registered_node_types)")
    assert {"VideoEditTAESDEncode", "VideoEditTAESDDecode", "LoadVideo", "SaveVideo"} <= set(types)
    if frontend == "newest":
        assert page.frontend_version == NEWEST_FRONTEND


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_loads_intact_in_canvas(canvases, frontend, path, object_info):
    page = canvases(frontend)
    wf = json.loads(path.read_text())
    _load(page, wf)
    page.evaluate("() => window.app.canvas.setDirty(true, true)")
    page.wait_for_timeout(500)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{path.stem}{'' if frontend == 'embedded' else '-' + frontend}.png"))

    graph = page.evaluate(CHECK_GRAPH)
    assert not graph["missing"], f"missing node types in {path.name}: {graph['missing']}"
    assert not graph["broken"], f"broken links in {path.name}: {graph['broken']}"
    # ids as text: newer frontends hold node ids as strings
    assert sorted([str(i), t] for i, t in graph["nodes"]) == sorted([str(n["id"]), n["type"]] for n in wf["nodes"])
    assert sorted(map(str, graph["links"])) == sorted(str(l[0]) for l in wf["links"]), "the canvas dropped links"

    # the canvas's own UI -> API conversion must agree with harness.workflow_api
    canvas = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    assert _backend_inputs(canvas, object_info) == _plain(to_api(wf, object_info))
    assert misplaced_widget_values(page, wf, object_info) == []


# every node's widgets as the canvas holds them now, and its inputs fed by a link
CANVAS_WIDGETS = """() => (window.app.graph._nodes ?? window.app.graph.nodes).map(n => ({
  id: String(n.id), widgets: (n.widgets ?? []).map(w => [w.name, w.value]),
  linked: (n.inputs ?? []).filter(i => i.link != null).map(i => i.name)}))"""


def misplaced_widget_values(page, wf: dict, defs: dict) -> list[str]:
    """Every widget of an input the definitions name must hold the value harness.workflow_api sends
    for it, and every such value must have its widget (a saved value restored by position into the
    wrong widget, like 0.3.75's upload-button "image" in current core's LoadVideo edit, shows here)."""
    sent = to_api(wf, defs)
    problems = []
    for node in page.evaluate(CANVAS_WIDGETS):
        if node["id"] not in sent:
            continue  # Notes
        cls = sent[node["id"]]["class_type"]
        names, want = input_names(defs[cls]), sent[node["id"]]["inputs"]
        shown = {name: value for name, value in node["widgets"] if name in names and name not in node["linked"]}
        for name, value in shown.items():
            if value != want.get(name):
                problems.append(f"node {node['id']} ({cls}): widget '{name}' shows {value!r}, "
                                f"harness.workflow_api sends {want.get(name)!r}")
        unshown = {n for n, v in want.items() if not isinstance(v, list)} - set(shown)
        problems += [f"node {node['id']} ({cls}): no widget shows '{n}'" for n in sorted(unshown)]
    return problems


def _plain(prompt: dict) -> dict:
    return {k: (v["class_type"], v["inputs"]) for k, v in prompt.items()}


def _backend_inputs(prompt: dict, defs: dict) -> dict:
    """The prompt's inputs the definitions name: the frontend also sends its own DOM widgets
    (e.g. 'video-preview'), which the server ignores."""
    return {k: (v["class_type"], {i: x for i, x in v["inputs"].items() if i in input_names(defs[v["class_type"]])})
            for k, v in prompt.items()}


def _wait_queue_empty(server, timeout: float = 600) -> None:
    import time
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        q = server.get_json("/queue")
        if not q["queue_running"] and not q["queue_pending"]:
            return
        time.sleep(1)
    raise TimeoutError("the queued training workflow did not finish")


def test_loss_chart_redraws_live_with_and_without_nodes_2(canvases, comfy_server, sample_clip):
    """js/videoedit_loss_chart.js end to end, on every frontend with Nodes 2.0 off and on at once:
    one canvas queues the shipped training workflow, the server broadcasts its per-step
    videoedit.training messages to every open canvas over its websocket, and on each the chart's
    own pixels are read after every message. The chart must hold one finite loss per step, and its
    pixels must change between the first and the last message: a chart that is drawn once and
    never again (what Nodes 2.0 does to a canvas widget nobody calls triggerDraw on) fails here."""
    steps = 3
    wf = json.loads(TRAINING_WORKFLOW.read_text())
    trainer = next(n["id"] for n in wf["nodes"] if n["type"] == "VideoEditCFGDistillTrain")
    pages = {f"{frontend}, {'nodes 2.0' if vue else 'classic'}": canvases(frontend, vue)
             for frontend in FRONTENDS for vue in (False, True)}
    before = {}
    for name, page in pages.items():
        _load(page, wf)
        assert "VideoEditCFGDistillTrain" in page.evaluate("() => [...window.VideoEditLossChart.TRAINERS]")
        # the chart in view: Nodes 2.0 does not lay out nodes outside the viewport
        page.evaluate("(id) => { const c = window.app.canvas; c.centerOnNode(c.graph.getNodeById(id));"
                      " c.setDirty(true, true); }", trainer)
        page.evaluate(CHART_PIXELS)
        page.wait_for_timeout(500)
        before[name] = page.evaluate("(id) => window.__chartPixels(id)", trainer)
        assert "error" not in before[name], f"{name}: {before[name]}"
        page.evaluate(RECORD_CHART, trainer)
    queuing = canvases("embedded", False)
    queuing.evaluate("""([id, steps]) => {
        const n = window.app.graph.getNodeById(id);
        const set = (name, v) => { const w = n.widgets.find(w => w.name === name); w.value = v; };
        set('steps', steps); set('resume', false); set('output_name', 'browser_chart_' + Date.now()); }""",
                     [trainer, steps])
    queuing.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
    try:
        for page in pages.values():
            page.wait_for_function(
                "([id, steps]) => (window.VideoEditLossChart.charts.get(String(id))?.losses.length ?? 0) >= steps"
                " && (window.__chartLog ?? []).some(r => r.step === steps)",
                arg=[trainer, steps], timeout=600_000)
    finally:
        _wait_queue_empty(comfy_server)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for name, page in pages.items():
        st = page.evaluate("""(id) => { const s = window.VideoEditLossChart.charts.get(String(id));
            const n = window.app.graph.getNodeById(id);
            return {losses: s.losses, total: s.total, widgets: n.widgets.map(w => w.name),
                    drawn: n.__videoeditChartDrawn, log: window.__chartLog}; }""", trainer)
        assert st["total"] == steps, name
        assert len(st["losses"]) == steps and all(isinstance(v, (int, float)) and v == v and v >= 0
                                                  for v in st["losses"]), (name, st["losses"])
        assert st["widgets"][-1] == "videoedit_loss_chart", (name, st["widgets"])
        log = {r["step"]: r for r in st["log"]}
        assert 1 in log and steps in log and not any("error" in r for r in st["log"]), (name, st["log"])
        first, last = log[1], log[steps]
        # the pixels changed after the first message, and again by the last ...
        assert first["hash"] != before[name]["hash"], f"{name}: the chart did not redraw after the first loss"
        assert last["hash"] != first["hash"], f"{name}: the chart froze after its first draw ({st['log']})"
        assert last["blue"] > 0, f"{name}: no loss line in the chart's pixels"
        # ... and its last frame drew every loss (the chart's own record of what it drew)
        assert st["drawn"] == steps, f"{name}: the chart last drew {st['drawn']} of {steps} losses"
        page.screenshot(path=str(SCREENSHOTS / f"loss_chart_live-{name.replace(', ', '-').replace(' ', '')}.png"))
        assert not page.page_errors, f"{name}: page errors: {page.page_errors}"


@pytest.mark.skipif("newest" not in FRONTENDS, reason="VIDEOEDIT_NEWEST_FRONTEND=off")
def test_newest_frontend_sends_the_recorded_prompts_for_current_core_nodes(browser, comfy_server, frontend_servers):
    """tests/data holds current ComfyUI's core node definitions, workflows and the prompts the
    newest frontend sent for them (test_workflow_api checks harness.workflow_api against those
    without a browser). Here the newest frontend itself is given those definitions and must still
    send exactly the recorded prompts, which harness.workflow_api must reproduce: if a new frontend
    changes how it saves or sends dynamic combos, upload buttons or control widgets, this says so."""
    from test_workflow_api import legacy_prompt_as_meant  # the one documented difference
    core = json.loads((DATA / "current_core_object_info.json").read_text())["object_info"]
    page = _open_canvas(browser, comfy_server, vue_nodes=False, files_from=frontend_servers("newest"), node_defs=core)
    try:
        for saved, sent, meant in (("current_frontend_workflow.json", "current_frontend_prompt.json", None),
                                   ("legacy_saved_workflow.json", "legacy_saved_prompt.json", legacy_prompt_as_meant)):
            wf = json.loads((DATA / saved).read_text())
            _load(page, wf)
            canvas = page.evaluate("async () => (await window.app.graphToPrompt()).output")
            assert canvas == json.loads((DATA / sent).read_text()), f"{saved}: the frontend now sends {canvas}"
            assert to_api(wf, core) == (meant(canvas, core) if meant else canvas), saved
        assert not page.page_errors, page.page_errors
    finally:
        page.close()

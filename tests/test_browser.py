"""The shipped workflows in the real canvas: headless Debian Chromium (driven by Playwright,
no browser download) loads each workflow into the ComfyUI frontend the server serves and
checks that every node type exists and every link is intact; the canvas's own
graphToPrompt must agree with harness.workflow_api. Screenshots go to out/screenshots/."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.workflow_api import to_api

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "out" / "screenshots"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]

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


@pytest.fixture(scope="module")
def page(comfy_server):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed (Debian package 'chromium'; tools/setup_test_deps.sh installs it)")
    sync_playwright = pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is not installed").sync_playwright
    # no first-run tour or template browser over the canvas
    comfy_server._request("/settings/Comfy.TutorialCompleted", data=b"true")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1600, "height": 900})
            errors = []
            pg.on("pageerror", lambda e: errors.append(str(e)))
            pg.goto(comfy_server.url, wait_until="load", timeout=120_000)
            pg.wait_for_function(
                "() => window.app?.graph && window.LiteGraph?.registered_node_types"
                " && 'VideoEditTAESDEncode' in LiteGraph.registered_node_types", timeout=120_000)
            pg.page_errors = errors
            yield pg
        finally:
            browser.close()


def test_canvas_knows_our_nodes(page):
    types = page.evaluate("() => Object.keys(LiteGraph.registered_node_types)")
    assert {"VideoEditTAESDEncode", "VideoEditTAESDDecode", "LoadVideo", "SaveVideo"} <= set(types)


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_loads_intact_in_canvas(page, path, object_info):
    wf = json.loads(path.read_text())
    page.evaluate("async (wf) => { await window.app.loadGraphData(wf, true, true, null); }", wf)
    page.keyboard.press("Escape")  # a dialog (e.g. missing models) would hide the canvas
    page.evaluate("() => window.app.canvas.setDirty(true, true)")
    page.wait_for_timeout(500)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{path.stem}.png"))

    graph = page.evaluate(CHECK_GRAPH)
    assert not graph["missing"], f"missing node types in {path.name}: {graph['missing']}"
    assert not graph["broken"], f"broken links in {path.name}: {graph['broken']}"
    assert sorted(graph["nodes"]) == sorted([n["id"], n["type"]] for n in wf["nodes"])
    assert sorted(graph["links"]) == sorted(l[0] for l in wf["links"]), "the canvas dropped links"

    # the canvas's own UI -> API conversion must agree with harness.workflow_api
    canvas = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    ours = to_api(wf, object_info)

    def backend_inputs(node):  # the frontend also sends its own DOM widgets (e.g. 'video-preview')
        spec = object_info[node["class_type"]]["input"]
        known = {**spec.get("required", {}), **spec.get("optional", {})}
        return {k: v for k, v in node["inputs"].items() if k in known}
    assert {k: (v["class_type"], backend_inputs(v)) for k, v in canvas.items()} == \
           {k: (v["class_type"], v["inputs"]) for k, v in ours.items()}


def _wait_queue_empty(server, timeout: float = 600) -> None:
    import time
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        q = server.get_json("/queue")
        if not q["queue_running"] and not q["queue_pending"]:
            return
        time.sleep(1)
    raise TimeoutError("the queued training workflow did not finish")


def test_loss_chart_draws_a_real_training_run(page, comfy_server, sample_clip):
    """js/videoedit_loss_chart.js end to end: the canvas queues the shipped training workflow,
    the server's per-step videoedit.training messages reach the extension over the websocket,
    and the chart widget on the trainer node holds one finite loss per step and draws them all."""
    steps = 3
    path = ROOT / "example_workflows" / "movie_cfg_distill_train.json"
    wf = json.loads(path.read_text())
    trainer = next(n["id"] for n in wf["nodes"] if n["type"] == "VideoEditCFGDistillTrain")
    page.evaluate("async (wf) => { await window.app.loadGraphData(wf, true, true, null); }", wf)
    page.keyboard.press("Escape")
    assert page.evaluate("() => [...window.VideoEditLossChart.TRAINERS]") and \
        "VideoEditCFGDistillTrain" in page.evaluate("() => [...window.VideoEditLossChart.TRAINERS]")
    page.evaluate("""([id, steps]) => {
        const n = window.app.graph.getNodeById(id);
        const set = (name, v) => { const w = n.widgets.find(w => w.name === name); w.value = v; };
        set('steps', steps); set('resume', false); set('output_name', 'browser_chart_' + Date.now()); }""",
                  [trainer, steps])
    page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
    try:
        page.wait_for_function(
            "([id, steps]) => (window.VideoEditLossChart.charts.get(String(id))?.losses.length ?? 0) >= steps",
            arg=[trainer, steps], timeout=600_000)
    finally:
        _wait_queue_empty(comfy_server)
    st = page.evaluate("""(id) => { const s = window.VideoEditLossChart.charts.get(String(id));
        const n = window.app.graph.getNodeById(id);
        return {losses: s.losses, total: s.total, widgets: n.widgets.map(w => w.name)}; }""", trainer)
    assert st["total"] == steps
    assert len(st["losses"]) == steps and all(isinstance(v, (int, float)) and v == v and v >= 0 for v in st["losses"])
    assert st["widgets"][-1] == "videoedit_loss_chart", st["widgets"]
    page.evaluate("() => window.app.canvas.setDirty(true, true)")
    page.wait_for_function("([id, steps]) => window.app.graph.getNodeById(id).__videoeditChartDrawn === steps",
                           arg=[trainer, steps], timeout=10_000)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "loss_chart_live.png"))
    assert not page.page_errors, f"page errors: {page.page_errors}"

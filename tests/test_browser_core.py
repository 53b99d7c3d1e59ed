"""The shipped templates on current ComfyUI's node definitions, in the newest frontend's real canvas
(headless Debian Chromium driven by Playwright). Current core (0.38.x) is not installed: the page's
/object_info gets current core's recorded definitions of the core nodes (tests/data), the pack's
nodes and the folder listings come from the embedded 0.3.75 test server.

For every template, with Nodes 2.0 off and on: it loads whole, every widget holds the value
harness.workflow_api sends for it (LoadVideo's file in ``file``, ``edit`` at its trim/crop default,
SaveVideo's format and format.codec "auto"; harness/template_layout.py says why the templates
are saved as they are), and the prompt the frontend sends has core-node inputs current core
accepts (harness.prompt_inputs) and equals harness.workflow_api's conversion. tests/test_browser.py
checks the same widgets on the embedded frontend against 0.3.75. What this cannot show: that
current core then runs it (not installed here); the recorded definitions are checked against the
source, not a running 0.38.x.
"""
from __future__ import annotations

import json

import pytest
from test_browser import (CHECK_GRAPH, DATA, FRONTENDS, WORKFLOWS, _backend_inputs, _load, _open_canvas,  # noqa: F401
                          _plain, browser, frontend_servers, misplaced_widget_values)

from harness.prompt_inputs import invalid_inputs
from harness.workflow_api import to_api

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif("newest" not in FRONTENDS, reason="VIDEOEDIT_NEWEST_FRONTEND=off")]


@pytest.fixture(scope="module")
def current_core_canvases(browser, comfy_server, frontend_servers, current_core_defs):
    """vue_nodes -> a newest-frontend page whose /object_info has current core's core nodes."""
    pages = {}

    def get(vue_nodes: bool):
        if vue_nodes not in pages:
            pages[vue_nodes] = _open_canvas(browser, comfy_server, vue_nodes, files_from=frontend_servers("newest"),
                                            node_defs=current_core_defs)
        return pages[vue_nodes]

    yield get
    for pg in pages.values():
        pg.close()


@pytest.mark.parametrize("vue_nodes", [False, True], ids=["classic", "nodes2"])
@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_template_sends_what_current_core_accepts(current_core_canvases, path, vue_nodes, current_core_defs):
    """What an artist on current ComfyUI gets: the template loaded in the newest frontend over current
    core's node definitions, its widgets as shown, and the prompt queued as the frontend sends it."""
    page = current_core_canvases(vue_nodes)
    defs = current_core_defs
    core = json.loads((DATA / "current_core_object_info.json").read_text())["object_info"]
    wf = json.loads(path.read_text())
    _load(page, wf)
    graph = page.evaluate(CHECK_GRAPH)
    assert not graph["missing"] and not graph["broken"], graph
    assert misplaced_widget_values(page, wf, defs) == [], f"{path.name}: values restored into the wrong widgets"
    canvas = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    core_nodes = {n["type"] for n in wf["nodes"]} & set(core)
    assert core_nodes and {n["class_type"] for n in canvas.values()} & set(core) == core_nodes
    assert invalid_inputs(canvas, defs, class_types=core_nodes) == [], f"{path.name}: current core would refuse"
    assert invalid_inputs(canvas, defs) == []  # the pack's nodes too, against the test server's definitions
    assert _backend_inputs(canvas, defs) == _plain(to_api(wf, defs))
    assert not page.page_errors, page.page_errors

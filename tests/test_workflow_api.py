"""UI -> API workflow conversion (harness.workflow_api): against the embedded server's /object_info,
and against current ComfyUI's core node definitions recorded in tests/data/ (what the newest
frontend saves and sends for them was recorded from the frontend itself; see tests/data/README.md)."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from harness.prompt_inputs import invalid_inputs
from harness.workflow_api import WorkflowError, apply_overrides, parse_override, to_api, widget_values

ROOT = Path(__file__).resolve().parent.parent
ROUNDTRIP = ROOT / "example_workflows" / "taesd_video_roundtrip.json"
TEMPLATES = sorted((ROOT / "example_workflows").glob("*.json"))
DATA = Path(__file__).resolve().parent / "data"


def _data(name):
    return json.loads((DATA / name).read_text())


@pytest.fixture(scope="module")
def core():
    """object_info of current ComfyUI's KSampler, LoadVideo, GetVideoComponents, CreateVideo, SaveVideo."""
    return _data("current_core_object_info.json")["object_info"]


def _wf(nodes, links):
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": max([l[0] for l in links], default=0),
            "nodes": nodes, "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def _node(id, type, inputs=(), outputs=(), wv=None, mode=0, title=None):
    n = {"id": id, "type": type, "pos": [0, 0], "size": [100, 100], "flags": {}, "order": id, "mode": mode,
         "inputs": [dict(i) for i in inputs], "outputs": [dict(o) for o in outputs], "properties": {}}
    if wv is not None:
        n["widgets_values"] = wv
    if title:
        n["title"] = title
    return n


def test_shipped_roundtrip_converts_exactly(object_info):
    prompt = to_api(json.loads(ROUNDTRIP.read_text()), object_info)
    plain = {nid: (n["class_type"], n["inputs"]) for nid, n in prompt.items()}
    assert plain == {
        "1": ("LoadVideo", {"file": "videoedit_sample.mp4"}),  # the upload button's "image" is not an input
        "2": ("GetVideoComponents", {"video": ["1", 0]}),
        "3": ("VideoEditTAESDEncode", {"images": ["2", 0], "variant": "taesd", "frames_per_chunk": 16}),
        "4": ("VideoEditTAESDDecode", {"samples": ["3", 0], "variant": "taesd", "frames_per_chunk": 16}),
        # fps is a widget fed by a link: its stored value (30) is consumed, the link wins
        "5": ("CreateVideo", {"images": ["4", 0], "fps": ["2", 2]}),
        "6": ("SaveVideo", {"video": ["5", 0], "filename_prefix": "videoedit/taesd_roundtrip",
                            "format": "auto", "codec": "auto"}),
    }  # the Note (7) has no backend class and is left out
    assert prompt["3"]["_meta"]["title"] == "TAESD Encode (video)"


def test_shipped_roundtrip_uses_real_widget_order(object_info):
    """Every widget value of the shipped workflow is valid for the input it lands on."""
    wf = json.loads(ROUNDTRIP.read_text())
    for node in wf["nodes"]:
        if node["type"] not in object_info:
            continue
        defs = {**object_info[node["type"]]["input"].get("required", {}),
                **object_info[node["type"]]["input"].get("optional", {})}
        for name, value in widget_values(node, object_info[node["type"]]).items():
            typ, opts = defs[name][0], defs[name][1] if len(defs[name]) > 1 else {}
            if typ == "COMBO" and opts.get("options"):
                assert value in opts["options"], (node["type"], name, value)
            elif typ == "INT":
                assert isinstance(value, int) and opts.get("min", value) <= value <= opts.get("max", value)
            elif typ == "FLOAT":
                assert isinstance(value, (int, float))
            elif typ == "STRING":
                assert isinstance(value, str)


def test_control_after_generate_value_is_skipped(object_info):
    # KSampler's seed carries control_after_generate in object_info; the frontend stores
    # "fixed" right after it (as in ComfyUI's own templates)
    assert object_info["KSampler"]["input"]["required"]["seed"][1].get("control_after_generate") is True
    node = _node(3, "KSampler", wv=[48, "fixed", 20, 3, "uni_pc", "simple", 1])
    vals = widget_values(node, object_info["KSampler"])
    assert vals == {"seed": 48, "steps": 20, "cfg": 3, "sampler_name": "uni_pc", "scheduler": "simple",
                    "denoise": 1}


def test_legacy_seed_name_and_v3_flag_on_other_names():
    legacy = {"input": {"required": {"noise_seed": ["INT", {"default": 0}], "steps": ["INT", {}]}},
              "input_order": {"required": ["noise_seed", "steps"]}}
    assert widget_values(_node(1, "X", wv=[5, "randomize", 7]), legacy) == {"noise_seed": 5, "steps": 7}
    # a non-seed INT without the flag keeps every value
    plain = {"input": {"required": {"a": ["INT", {}], "b": ["STRING", {}]}}}
    assert widget_values(_node(1, "X", wv=[5, "fixed"]), plain) == {"a": 5, "b": "fixed"}
    flagged = {"input": {"required": {"variation": ["INT", {"control_after_generate": True}], "b": ["FLOAT", {}]}}}
    assert widget_values(_node(1, "X", wv=[9, "increment", 0.5]), flagged) == {"variation": 9, "b": 0.5}


def test_optional_widgets_follow_required_and_force_input_is_a_socket():
    d = {"input": {"required": {"img": ["IMAGE", {}], "n": ["INT", {}], "x": ["FLOAT", {"forceInput": True}]},
                   "optional": {"mode": [["a", "b"], {}]}},
         "input_order": {"required": ["img", "n", "x"], "optional": ["mode"]}}
    assert widget_values(_node(1, "X", wv=[3, "b"]), d) == {"n": 3, "mode": "b"}


def _chain(mid_type="Reroute", mid_mode=0):
    """LoadVideo(1) -> [mid(2)] -> GetVideoComponents(3) -> CreateVideo(4) <- fps from 3."""
    nodes = [
        _node(1, "LoadVideo", outputs=[{"name": "VIDEO", "type": "VIDEO", "links": [1]}], wv=["a.mp4", "image"]),
        _node(2, mid_type, inputs=[{"name": "video" if mid_type != "Reroute" else "", "type": "VIDEO", "link": 1}],
              outputs=[{"name": "VIDEO", "type": "VIDEO", "links": [2]}], mode=mid_mode,
              wv=["x/y", "auto", "auto"] if mid_type == "SaveVideo" else None),
        _node(3, "GetVideoComponents", inputs=[{"name": "video", "type": "VIDEO", "link": 2}],
              outputs=[{"name": "images", "type": "IMAGE", "links": [3]}, {"name": "audio", "type": "AUDIO"},
                       {"name": "fps", "type": "FLOAT", "links": [4]}]),
        _node(4, "CreateVideo", inputs=[{"name": "images", "type": "IMAGE", "link": 3},
                                        {"name": "fps", "type": "FLOAT", "link": 4, "widget": {"name": "fps"}}],
              outputs=[{"name": "VIDEO", "type": "VIDEO", "links": []}], wv=[12]),
        _node(5, "Note", wv=["hello"]),
        _node(6, "MarkdownNote", wv=["# hi"]),
    ]
    links = [[1, 1, 0, 2, 0, "VIDEO"], [2, 2, 0, 3, 0, "VIDEO"], [3, 3, 0, 4, 0, "IMAGE"], [4, 3, 2, 4, 1, "FLOAT"]]
    return _wf(nodes, links)


def test_reroute_is_followed_and_notes_are_dropped(object_info):
    prompt = to_api(_chain("Reroute"), object_info)
    assert set(prompt) == {"1", "3", "4"}
    assert prompt["3"]["inputs"] == {"video": ["1", 0]}
    assert prompt["4"]["inputs"] == {"images": ["3", 0], "fps": ["3", 2]}


def test_bypassed_node_passes_its_matching_input_through(object_info):
    # a bypassed GetVideoComponents-like pass-through: use a node with a VIDEO input and output
    wf = _chain("SaveVideo", mid_mode=4)  # SaveVideo has no output really; the link types are what count
    prompt = to_api(wf, object_info)
    assert "2" not in prompt
    assert prompt["3"]["inputs"]["video"] == ["1", 0]


def test_muted_node_is_dropped_with_its_links(object_info):
    wf = _chain("SaveVideo", mid_mode=2)
    prompt = to_api(wf, object_info)
    assert "2" not in prompt
    assert "video" not in prompt["3"]["inputs"]  # the server will report the missing input


def test_primitive_node_value_stays_in_the_widget(object_info):
    wf = _chain("Reroute")
    wf["nodes"].append(_node(7, "PrimitiveNode", outputs=[{"name": "FLOAT", "type": "FLOAT", "links": [4],
                                                         "widget": {"name": "fps"}}], wv=[12, "fixed"]))
    wf["links"][3] = [4, 7, 0, 4, 1, "FLOAT"]
    prompt = to_api(wf, object_info)
    assert "7" not in prompt
    assert prompt["4"]["inputs"]["fps"] == 12


def test_unknown_node_type_is_an_error(object_info):
    wf = _chain("Reroute")
    wf["nodes"][2]["type"] = "NotInstalledNode"
    with pytest.raises(WorkflowError, match="NotInstalledNode.*not known"):
        to_api(wf, object_info)


def test_overrides_by_id_title_and_class(object_info):
    prompt = to_api(json.loads(ROUNDTRIP.read_text()), object_info)
    before = copy.deepcopy(prompt)
    out = apply_overrides(prompt, ["3.frames_per_chunk=4", "TAESD Decode (video).variant=taesdxl",
                                   "SaveVideo.filename_prefix=a/b.c", 'LoadVideo.file="7"'])
    assert prompt == before  # the input prompt is not modified
    assert out["3"]["inputs"]["frames_per_chunk"] == 4          # JSON -> int
    assert out["4"]["inputs"]["variant"] == "taesdxl"            # not JSON -> the text
    assert out["6"]["inputs"]["filename_prefix"] == "a/b.c"
    assert out["1"]["inputs"]["file"] == "7"                     # JSON string stays a string
    assert out["3"]["inputs"]["images"] == ["2", 0]


def test_overrides_that_match_nothing_fail_clearly(object_info):
    prompt = to_api(json.loads(ROUNDTRIP.read_text()), object_info)
    with pytest.raises(ValueError, match="no node has id, title or class 'KSampler'"):
        apply_overrides(prompt, ["KSampler.seed=1"])
    with pytest.raises(ValueError, match="has no input 'chunk'.*frames_per_chunk"):
        apply_overrides(prompt, ["VideoEditTAESDEncode.chunk=1"], object_info)
    with pytest.raises(ValueError, match="NODE.INPUT=VALUE"):
        parse_override("frames_per_chunk=3")
    assert parse_override("My.Title.x=[1, 2]") == ("My.Title", "x", [1, 2])


# ------------------------------------------------- current core (0.38.x) schemas, recorded


def _plain(prompt):
    return {nid: (n["class_type"], n["inputs"]) for nid, n in prompt.items()}


def test_current_frontend_workflow_converts_to_what_the_frontend_sends(core):
    """A workflow saved by the newest frontend over current core's nodes (dynamic-combo SaveVideo
    with a nested codec and encoding, LoadVideo's optional VIDEO_EDIT widget and upload button,
    CreateVideo's optional widgets, KSampler's control_after_generate) converts to exactly the
    prompt that frontend's graphToPrompt sent, whether read by name or by position."""
    wf, sent = _data("current_frontend_workflow.json"), _data("current_frontend_prompt.json")
    assert to_api(wf, core) == sent
    positional = copy.deepcopy(wf)
    for node in positional["nodes"]:
        node.pop("widgets_values_named", None)
    assert to_api(positional, core) == sent
    save = sent["4"]["inputs"]
    assert save["format.codec.encoding.crf"] == 18 and save["format.codec"] == "h264"


def legacy_prompt_as_meant(sent: dict, core: dict) -> dict:
    """The newest frontend's prompt for legacy_saved_workflow.json, less its one slip: restoring
    LoadVideo's [file, "image"] by position, it hands the upload button's "image" to the optional
    VIDEO_EDIT widget that now stands between them (current core would then fail on
    "edit": "image"); harness.workflow_api gives that widget its default instead."""
    meant = copy.deepcopy(sent)
    assert meant["1"]["inputs"]["edit"] == "image", "the frontend no longer slips here: drop this patch"
    meant["1"]["inputs"]["edit"] = core["LoadVideo"]["input"]["optional"]["edit"][1]["default"]
    return meant


def test_older_saved_workflow_under_current_core(core):
    """A workflow as 0.3.75's frontend saves it (SaveVideo [prefix, format, codec] as plain combos,
    LoadVideo [file, "image"], CreateVideo [fps]; our templates before harness/template_layout.py)
    under current core's schemas converts to what the newest frontend sends after loading it (but
    for its LoadVideo slip, see above): the old codec value lands on the nested format.codec, the hidden top-level codec and the new
    optional widgets take their defaults."""
    wf, sent = _data("legacy_saved_workflow.json"), _data("legacy_saved_prompt.json")
    assert to_api(wf, core) == legacy_prompt_as_meant(sent, core)


def _save_video(wv, inputs=()):
    return _node(4, "SaveVideo", inputs=[{"name": "video", "type": "VIDEO", "link": None}, *inputs], wv=wv)


def test_dynamic_combo_children_follow_the_selected_option(core):
    save = core["SaveVideo"]
    # webm offers auto and av1 only; av1's re-encode adds crf; the hidden top-level codec is last
    assert widget_values(_save_video(["x", "webm", "av1", "re-encode", 30, "auto"]), save) == {
        "filename_prefix": "x", "format": "webm", "format.codec": "av1", "format.codec.encoding": "re-encode",
        "format.codec.encoding.crf": 30, "codec": "auto"}
    # encoding "auto" has no inputs: the next value is the hidden top-level codec, not a crf; that
    # codec's own (optional) encoding is past the saved list and takes its default, the first option
    assert widget_values(_save_video(["x", "mkv", "h264", "auto", "h264"]), save) == {
        "filename_prefix": "x", "format": "mkv", "format.codec": "h264", "format.codec.encoding": "auto",
        "codec": "h264", "codec.encoding": "auto"}
    # a short list: the missing widgets take the canvas defaults (first option)
    assert widget_values(_save_video(["x", "mp4"]), save) == {
        "filename_prefix": "x", "format": "mp4", "format.codec": "auto", "codec": "auto"}


def test_a_link_into_a_dynamic_combo_child_wins(core):
    nodes = [_node(1, "PrimitiveFloat", outputs=[{"name": "FLOAT", "type": "FLOAT", "links": [1]}]),
             _save_video(["x", "mp4", "h264", "re-encode", 23, "auto"],
                         inputs=[{"name": "format.codec.encoding.crf", "type": "FLOAT", "link": 1,
                                  "widget": {"name": "format.codec.encoding.crf"}}])]
    info = {**core, "PrimitiveFloat": {"input": {"required": {"value": ["FLOAT", {"default": 0.0}]}},
                                       "output": ["FLOAT"]}}
    prompt = to_api(_wf(nodes, [[1, 1, 0, 4, 1, "FLOAT"]]), info)
    assert prompt["4"]["inputs"]["format.codec.encoding.crf"] == ["1", 0]


def test_upload_value_is_skipped_wherever_it_stands(core):
    load = core["LoadVideo"]
    edit = load["input"]["optional"]["edit"][1]["default"]
    trim = {"trim": {"start_time": 1.5, "duration": 2}, "crop": {"x": 0, "y": 0, "width": 0, "height": 0}}
    # the newest frontend: the button is the last widget, after the optional VIDEO_EDIT one
    assert widget_values(_node(1, "LoadVideo", wv=["clip.mp4", trim, "image"]), load) == {
        "file": "clip.mp4", "edit": trim}
    # saved before LoadVideo had optional widgets: the button's value right after the file
    assert widget_values(_node(1, "LoadVideo", wv=["clip.mp4", "image"]), load) == {"file": "clip.mp4", "edit": edit}


def test_combo_with_control_after_generate_skips_mode_and_filter():
    d = {"input": {"required": {"model": [["a.ckpt", "b.ckpt"], {"control_after_generate": True}],
                                "strength": ["FLOAT", {"default": 1.0}]}}}
    assert widget_values(_node(1, "X", wv=["b.ckpt", "increment-wrap", "/b/", 0.5]), d) == {
        "model": "b.ckpt", "strength": 0.5}


def test_socketless_and_custom_widgets_take_a_value_sockets_do_not():
    d = {"input": {"required": {"image": ["IMAGE", {}], "color": ["COLOR", {"socketless": True, "default": "#ffffff"}],
                                "curve": ["CUSTOM_CURVE", {}], "mode": [["a", "b"], {}]},
                   "optional": {"mask": ["MASK", {}]}}}
    plain = _node(1, "X", wv=["#000000", "b"])
    assert widget_values(plain, d) == {"color": "#000000", "mode": "b"}
    # another pack's widget type: the saved node says it is a widget (a widget socket)
    declared = _node(1, "X", inputs=[{"name": "curve", "type": "CUSTOM_CURVE", "link": None, "widget": {"name": "curve"}}],
                     wv=["#000000", [[0, 0], [1, 1]], "a"])
    assert widget_values(declared, d) == {"color": "#000000", "curve": [[0, 0], [1, 1]], "mode": "a"}


def test_overrides_reach_dynamic_combo_children(core):
    prompt = to_api(_data("current_frontend_workflow.json"), core)
    out = apply_overrides(prompt, ["SaveVideo.format.codec.encoding.crf=20", "4.format=mkv"], core)
    assert out["4"]["inputs"]["format.codec.encoding.crf"] == 20 and out["5"]["inputs"]["format"] == "auto"
    assert out["4"]["inputs"]["format"] == "mkv"
    # a child input the current option does not show is still a schema input of the node
    out = apply_overrides(prompt, ["5.format.codec.encoding=re-encode"], core)
    assert out["5"]["inputs"]["format.codec.encoding"] == "re-encode"
    with pytest.raises(ValueError, match="has no input 'format.codecs'"):
        apply_overrides(prompt, ["SaveVideo.format.codecs=h264"], core)


@pytest.mark.parametrize("path", TEMPLATES, ids=[p.stem for p in TEMPLATES])
def test_templates_convert_to_prompts_both_cores_accept(path, object_info, current_core_defs):
    """Every shipped template, converted against 0.3.75's /object_info and against current core's
    recorded definitions, sends only inputs that server accepts (the frontends' own restore is
    checked in the real canvases: tests/test_browser.py, tests/test_browser_core.py)."""
    wf = json.loads(path.read_text())
    for defs in (object_info, current_core_defs):
        prompt = to_api(wf, defs)
        assert invalid_inputs(prompt, defs) == [], path.name
    load = [n for n in to_api(wf, current_core_defs).values() if n["class_type"] == "LoadVideo"]
    assert load and all(n["inputs"]["edit"] == current_core_defs["LoadVideo"]["input"]["optional"]["edit"][1]["default"]
                        for n in load)

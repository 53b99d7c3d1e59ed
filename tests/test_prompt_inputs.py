"""harness.prompt_inputs against current core's recorded node definitions (tests/data): the
prompt the newest frontend sent for current core's nodes passes; the one it sent for a workflow
saved in the 0.3.75 layout is refused exactly where current core's LoadVideo would fail; each kind
of bad input is named. tests/test_browser.py applies it to what the newest frontend sends for every
shipped template."""
from __future__ import annotations

import json

import pytest
from test_workflow_api import ROOT, _data, core  # noqa: F401  the recorded current-core definitions (tests/data)

from harness.prompt_inputs import invalid_inputs
from harness.workflow_api import VIRTUAL_NODES


@pytest.fixture()
def sent():
    return _data("current_frontend_prompt.json")


UNWIRED_KSAMPLER = [f"node 6 (KSampler): required input '{name}' is missing"
                    for name in ("model", "positive", "negative", "latent_image")]


def test_what_the_newest_frontend_sent_for_current_core_passes_but_for_missing_links(core, sent):
    """All but the recorded graph's KSampler, which has no links (its widgets were what was recorded)."""
    assert invalid_inputs(sent, core) == UNWIRED_KSAMPLER
    assert invalid_inputs(sent, core, class_types={"LoadVideo", "CreateVideo", "SaveVideo"}) == []
    assert "edit" in sent["1"]["inputs"] and sent["4"]["inputs"]["format.codec.encoding"] == "re-encode"


def test_the_old_layouts_edit_image_is_refused_and_nothing_else(core):
    """LoadVideo saved as [file, "image"], restored by position in the newest frontend."""
    problems = invalid_inputs(_data("legacy_saved_prompt.json"), core)
    assert len(problems) == 1 and problems[0].startswith("node 1 (LoadVideo): 'edit': 'image' does not have the shape")


def test_edit_may_be_absent_but_not_misshapen(core, sent):
    edit = sent["1"]["inputs"].pop("edit")
    assert invalid_inputs(sent, core, class_types={"LoadVideo"}) == []
    trim_only = {"trim": edit["trim"]}
    text_leaf = {"trim": {"start_time": "0", "duration": 0}, "crop": edit["crop"]}
    extra_key = {**edit, "rotate": 90}
    for bad in (trim_only, text_leaf, extra_key, None, [0, 0], "image"):
        sent["1"]["inputs"]["edit"] = bad
        problems = invalid_inputs(sent, core, class_types={"LoadVideo"})
        assert len(problems) == 1 and "'edit': " in problems[0] and "shape of its default" in problems[0], bad


@pytest.mark.parametrize("node, name, value, says", [
    ("6", "sampler_name", "no_such_sampler", "is not one of its options ('euler'"),
    ("6", "steps", 0, "outside [1, 10000]"),
    ("6", "steps", 2.5, "not a whole number"),
    ("6", "cfg", "7", "not a number"),
    ("2", "video", "clip.mp4", "a value where a link is expected"),
    ("3", "bit_depth", 12, "is not one of its options ('auto', 8, 10)"),
    ("4", "format", "avi", "is not one of its options ('auto', 'mp4', 'mkv', 'webm')"),
    ("4", "format.codec.encoding.crf", 52, "outside [0.0, 51.0]"),
])
def test_each_kind_of_bad_value_is_named(core, sent, node, name, value, says):
    sent[node]["inputs"][name] = value
    problems = [p for p in invalid_inputs(sent, core) if p not in UNWIRED_KSAMPLER]
    assert len(problems) == 1 and f"'{name}': " in problems[0] and says in problems[0], problems


def test_dynamic_combo_must_be_complete(core, sent):
    save = sent["4"]["inputs"]
    only = {"SaveVideo"}
    del save["format.codec.encoding.crf"]   # re-encode shows crf: required
    assert invalid_inputs(sent, core, only) == ["node 4 (SaveVideo): required input 'format.codec.encoding.crf' is missing"]
    save["format.codec"] = "auto"            # auto shows nothing: the stale children are not inputs of it
    assert invalid_inputs(sent, core, only) == []
    del save["format.codec"]
    assert invalid_inputs(sent, core, only) == ["node 4 (SaveVideo): required input 'format.codec' is missing"]
    save["format"] = "webm"
    save["format.codec"] = "h264"           # webm offers auto and av1 only
    assert invalid_inputs(sent, core, only) == [
        "node 4 (SaveVideo): 'format.codec': 'h264' is not one of its options ('auto', 'av1')"]


def test_required_inputs_and_unknown_classes(core, sent):
    del sent["6"]["inputs"]["seed"]
    sent["9"] = {"class_type": "NoSuchNode", "inputs": {}}
    seed = "node 6 (KSampler): required input 'seed' is missing"
    assert invalid_inputs(sent, core) == UNWIRED_KSAMPLER[:1] + [seed] + UNWIRED_KSAMPLER[1:] + [
        "node 9: no definition of 'NoSuchNode'"]
    assert invalid_inputs(sent, core, class_types={"GetVideoComponents"}) == []


def test_every_core_node_of_every_template_has_a_recorded_current_definition(core):
    """The browser test checks the templates' core nodes against these definitions: a template that
    starts using another core node needs its current definition recorded first (tests/data/README.md)."""
    used = {n["type"] for p in (ROOT / "example_workflows").glob("*.json") for n in json.loads(p.read_text())["nodes"]}
    core_used = {t for t in used if not t.startswith("VideoEdit") and t not in VIRTUAL_NODES}
    assert core_used and core_used <= set(core), sorted(core_used - set(core))


def test_the_recorded_folder_lists_name_real_inputs():
    data = _data("current_core_object_info.json")
    for cls, names in data["folder_lists"].items():
        for name in names:
            spec = data["object_info"][cls]["input"]["required"][name]
            assert isinstance(spec[0], list) or spec[0] == "COMBO", (cls, name)

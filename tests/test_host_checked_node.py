"""Bad values at every pack node's entry (host/checked_node.py): NaN / inf numbers,
unknown combo values, zero-frame and NaN clips, NaN conditioning and sigmas.

The cases are generated from every node's own schema, so a new node or input is covered without
a new test: each case calls the node (as ComfyUI loaded it) with one bad value and nothing else
connected, and must stop with a ValueError that names the input and the fix before the node does
any work, leaving every file in the test base untouched. The prompt-level tests show the check is
what runs inside ComfyUI's executor, where 0.3.75's own validation lets these values through.
"""
from __future__ import annotations

import math
import os

import pytest
import torch

from harness.pack import pack_module

NAN, INF = float("nan"), float("inf")
UNKNOWN = "zsnr; rm -rf /"  # not an option of any combo; a shell fragment, to show nothing runs it


def _our_nodes(comfy):
    return {k: v for k, v in sorted(comfy.node_classes.items()) if k.startswith("VideoEdit")}


def _snapshot(comfy) -> dict:
    """Every file under the test base's input, output and models folders: (size, mtime)."""
    files = {}
    for sub in ("input", "output", "models"):
        for root, _, names in os.walk(comfy.base / sub, followlinks=False):
            for n in names:
                p = os.path.join(root, n)
                st = os.lstat(p)
                files[p] = (st.st_size, st.st_mtime_ns)
    return files


@pytest.fixture
def files_unchanged(comfy):
    before = _snapshot(comfy)
    yield
    assert _snapshot(comfy) == before, "a refused input changed a file"


def _refusals(node, inputs: dict):
    """The ValueError the node raises for ``inputs`` (everything else unconnected)."""
    with pytest.raises(ValueError) as e:
        node.execute(**inputs)
    return str(e.value)


def _cases(comfy, io_types):
    for node_id, node in _our_nodes(comfy).items():
        for inp in node.define_schema().inputs:
            if inp.get_io_type() in io_types:
                yield node_id, node, inp


def test_every_pack_node_derives_from_the_checked_node(comfy):
    nodes = _our_nodes(comfy)
    assert len(nodes) >= 20
    for node_id, node in nodes.items():
        base = pack_module(node, "host.checked_node").CheckedNode
        assert issubclass(node, base), node_id
        assert getattr(node.execute.__func__, "_videoedit_checks_inputs", False), node_id


def test_every_float_input_refuses_nan_and_inf(comfy, files_unchanged, capsys):
    seen = 0
    for node_id, node, inp in _cases(comfy, {"FLOAT"}):
        for value in (NAN, INF, -INF):
            msg = _refusals(node, {inp.id: value})
            assert msg.startswith(f"{inp.id}: {value} is not a finite number; set a number between "), (node_id, msg)
            seen += 1
    with capsys.disabled():
        print(f"\n[checked inputs] {seen} non-finite numbers refused")
    assert seen >= 60


def test_the_issues_nan_numbers_name_the_range(comfy, files_unchanged):
    """cfg / pnp_f_t / denoise = NaN on the Keyframe Sampler (a black video, or "cannot convert float
    NaN to integer", before this check)."""
    sampler = comfy.node_classes["VideoEditTokenFlowKeyframeSampler"]
    assert _refusals(sampler, {"cfg": NAN}) == "cfg: nan is not a finite number; set a number between 0 and 100 (default 7.5)"
    assert "pnp_f_t: nan is not a finite number; set a number between 0 and 1 (default 0.8)" == _refusals(
        sampler, {"pnp_f_t": NAN})
    assert _refusals(sampler, {"denoise": NAN}).startswith("denoise: nan is not a finite number; set a number between 0.01 and 1")
    assert _refusals(sampler, {"cfg": "7.5x"}) == "cfg: got '7.5x', not a number; set a number between 0 and 100 (default 7.5)"


def test_every_combo_refuses_an_unknown_value(comfy, files_unchanged, capsys):
    seen, own = 0, set()
    for node_id, node, inp in _cases(comfy, {"COMBO"}):
        if inp.id in pack_module(node, "host.checked_node")._own_validated(node):
            own.add((node_id, inp.id))
            continue
        msg = _refusals(node, {inp.id: UNKNOWN})
        assert msg.startswith(f"{inp.id}: {UNKNOWN!r} is not one of its options") and "pick one from the node's list" in msg, (
            node_id, msg)
        seen += 1
    with capsys.disabled():
        print(f"\n[checked inputs] {seen} unknown combo values refused")
    # Load Inversion checks its own name (a file saved earlier in the same prompt is not listed yet)
    assert own == {("VideoEditTokenFlowLoadInversion", "name")}
    assert seen >= 19


def test_the_stackers_noise_schedule_from_the_api(comfy, files_unchanged):
    """An unknown noise_schedule was KeyError: 'zsnr; rm'; now the options are listed."""
    stacker = comfy.node_classes["VideoEditEVEAdapterStacker"]
    msg = _refusals(stacker, {"noise_schedule": "zsnr; rm"})
    assert msg.startswith("noise_schedule: 'zsnr; rm' is not one of its options ('backbone default', ")


def _bad_clips(io_type):
    """(name, value, what the message must say) for an IMAGE or LATENT input."""
    def frames(n, bad=None, at=2):
        t = torch.rand(n, 16, 16, 3) if io_type == "IMAGE" else torch.randn(n, 4, 8, 8)
        if bad is not None:
            t[at].view(-1)[5] = bad
        return t if io_type == "IMAGE" else {"samples": t}
    cases = [("zero frames", frames(0), "the clip has zero frames; connect frames"),
             ("NaN", frames(4, NAN), "frame 2 of 4 holds NaN or infinite values"),
             ("inf", frames(4, INF, at=3), "frame 3 of 4 holds NaN or infinite values"),
             ("-inf", frames(1, -INF, at=0), "frame 0 of 1 holds NaN or infinite values")]
    if io_type == "LATENT":
        mask = torch.ones(4, 8, 8)
        mask[1, 0, 0] = NAN
        cases.append(("NaN noise_mask", {"samples": torch.randn(4, 4, 8, 8), "noise_mask": mask},
                      "the latent's 'noise_mask' holds NaN"))
    return cases


def test_every_clip_input_refuses_zero_frames_and_non_finite_values(comfy, files_unchanged, capsys):
    seen = 0
    for node_id, node, inp in _cases(comfy, {"IMAGE", "LATENT"}):
        for name, value, says in _bad_clips(inp.get_io_type()):
            msg = _refusals(node, {inp.id: value})
            assert msg.startswith(f"{inp.id}: ") and says in msg, (node_id, name, msg)
            assert "zero frames" in name or "fix that node or its settings" in msg, (node_id, msg)
            seen += 1
    with capsys.disabled():
        print(f"\n[checked inputs] {seen} bad clips refused")
    assert seen >= 60


def test_every_conditioning_and_sigmas_input_refuses_non_finite_values(comfy, files_unchanged):
    seen = 0
    for node_id, node, inp in _cases(comfy, {"CONDITIONING", "SIGMAS"}):
        if inp.get_io_type() == "SIGMAS":
            bad = [("sigma 1", torch.tensor([14.6, NAN, 0.0]))]
        else:
            text = torch.randn(1, 77, 32)
            nan_text = text.clone()
            nan_text[0, 3, 4] = NAN
            bad = [("the text embedding of conditioning 1", [[text, {}], [nan_text, {}]]),
                   ("'pooled_output' of conditioning 0", [[text, {"pooled_output": torch.full((1, 32), INF)}]])]
        for where, value in bad:
            msg = _refusals(node, {inp.id: value})
            assert msg.startswith(f"{inp.id}: {where} holds NaN or infinite values") and "fix that node" in msg, (
                node_id, msg)
            seen += 1
    assert seen >= 15


def test_good_values_pass_and_reach_the_node(comfy):
    """The check lets good values through to the node (whose own work then runs)."""
    dec = comfy.node_classes["VideoEditTAESDDecode"]
    out = dec.execute({"samples": torch.randn(2, 4, 8, 8)}, "taesd", 1).result[0]
    assert out.shape == (2, 64, 64, 3) and math.isfinite(float(out.sum()))


# ------------------------------------------------------------------ through ComfyUI's executor

def _decode_prompt(multiplier=1.0, variant="taesd"):
    return {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 3}},
            "2": {"class_type": "LatentMultiply", "inputs": {"samples": ["1", 0], "multiplier": multiplier}},
            "3": {"class_type": "VideoEditTAESDDecode",
                  "inputs": {"samples": ["2", 0], "variant": variant, "frames_per_chunk": 2}},
            "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "videoedit/checked"}}}


@pytest.mark.parametrize("multiplier, variant, says", [
    (NAN, "taesd", "VideoEditTAESDDecode: samples: frame 0 of 3 holds NaN or infinite values"),
    (1.0, UNKNOWN, f"VideoEditTAESDDecode: variant: {UNKNOWN!r} is not one of its options ('taesd', 'taesdxl', "),
])
def test_refused_inside_comfyuis_executor(comfy, files_unchanged, multiplier, variant, says):
    """A NaN latent from a core node (LatentMultiply by NaN passes core's min/max check) and an
    unknown combo value both pass ComfyUI 0.3.75's prompt validation; the node refuses them and
    SaveImage writes nothing."""
    import asyncio
    import execution
    prompt = _decode_prompt(multiplier, variant)
    assert asyncio.run(execution.validate_prompt("check", prompt, None))[0], "0.3.75 validation refused it already"
    with pytest.raises(RuntimeError) as e:
        comfy.run(prompt)
    assert str(e.value).startswith(says)

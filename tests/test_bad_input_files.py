"""Broken and wrong files in every model folder the pack reads, through the nodes (in-process
ComfyUI): corrupt, truncated, empty and pickle files in models/videoedit_guidance,
videoedit_onestep, animatediff_models, videoedit_features, vae_approx, optical_flow and a
training checkpoint; and the wrong model family for every loader. Each case asserts the message
names the input, the file and the fix, that no file under models/ (or the run's checkpoint folder)
changed, and that a pickle's code never ran (its marker file stays absent)."""
from __future__ import annotations

import os
import re
import shutil
from types import SimpleNamespace

import pytest
import torch

from harness.tree_hash import tree_hashes

KINDS = ("corrupt", "truncated", "empty", "pickle")


class WritesMarker:
    """Unpickling this would run ``exec`` and write the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def _write(kind: str, path, marker, good: bytes) -> None:
    if kind == "corrupt":  # the header length garbled: safetensors' "header too large"
        path.write_bytes(b"\xff" * 8 + good[8:])
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        torch.save({"w": torch.zeros(4), "evil": WritesMarker(marker)}, path)


EXPECT = {"corrupt": "is not a weights file|is truncated or corrupt", "truncated": "is truncated",
          "empty": r"is empty \(0 bytes\)",
          "pickle": "holds pickled Python objects.*refused without running them|is not a safetensors file"}


@pytest.fixture(scope="module")
def parts(comfy):
    from harness.fixtures import build_clip, build_model, tiny_unet_config
    from videoedit.nodes.host.model_family import model_family, unet_of
    from videoedit.nodes.movie import guidance
    from videoedit.nodes.movie.engine_guidance import make_student
    with torch.inference_mode():
        model = build_model(tiny_unet_config(ip2p=True), ip2p=True, seed=3)
    u = unet_of(model)
    adapter = guidance.GuidanceAdapter(u.model_channels, u.model_channels * 4, model_family(model), rank=2)
    for n, mod in model.model.named_modules():
        if n.startswith("diffusion_model.") and getattr(mod, "weight", None) is not None and mod.weight.ndim >= 2 \
                and hasattr(mod, "weight_function"):
            adapter.add_delta(f"{n}.weight", mod.weight.shape, generator=torch.Generator().manual_seed(0))
    teacher = make_student(model, adapter)
    return SimpleNamespace(model=model, adapter=adapter, teacher=teacher, clip=build_clip(tiny=True),
                           frames=torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(0)))


@pytest.fixture
def guarded(comfy, tmp_path):
    """Hashes of models/ and the training checkpoints before the test, compared after it; the marker."""
    import folder_paths
    roots = [folder_paths.models_dir, os.path.join(folder_paths.get_output_directory(), "videoedit_training")]
    os.makedirs(roots[1], exist_ok=True)
    placed = []
    before = {}
    marker = tmp_path / "marker"

    def snapshot():
        before.clear()
        before.update(tree_hashes(*roots))  # everything as it is now, the test's own files included

    def place(folder: str, name: str, kind: str, good: bytes):
        path = os.path.join(folder_paths.get_folder_paths(folder)[0], name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _write(kind, type(tmp_path)(path), marker, good)
        placed.append(path)
        snapshot()
        return name

    yield SimpleNamespace(place=place, placed=placed, snapshot=snapshot, marker=marker)
    assert not marker.exists(), "a pickle's code ran"
    if before:
        assert tree_hashes(*roots) == before, "a refused file changed something under models/ or the checkpoints"
    for p in placed:
        if os.path.exists(p):
            os.remove(p)


def _good_safetensors() -> bytes:
    from safetensors.torch import save
    return save({"w": torch.randn(64, 64), "b": torch.zeros(64)})


def _refused(call, input_name: str, name: str, pattern: str):
    with pytest.raises(ValueError) as e:
        call()
    msg = str(e.value)
    assert msg.startswith(f"{input_name}: '{os.path.basename(name)}'"), msg
    assert re.search(pattern, msg), msg
    return msg


def _loaders(comfy, parts):
    """folder -> (file extension, input name, the fix the message must give, load(name))."""
    nc = comfy.node_classes
    from videoedit.nodes.eve.engine_align_data import load_feature_network
    return {
        "videoedit_guidance": (".safetensors", "adapter_name", "CFG Distill",
                               lambda n: nc["VideoEditLoadGuidanceAdapter"].execute(parts.model, n)),
        "videoedit_onestep": (".safetensors", "student_name", "One-Step Distill",
                              lambda n: nc["VideoEditLoadOneStepStudent"].execute(parts.teacher, n)),
        "animatediff_models": (".ckpt", "adapter_name", "download the motion module again",
                               lambda n: nc["VideoEditEVELoadVideoAdapter"].execute(n)),
        "videoedit_features": (".safetensors", "feature_network", "facebook/dinov2",
                               lambda n: load_feature_network(n)),
        "optical_flow": (".pth", "raft_weights", "torchvision's RAFT",
                         lambda n: nc["VideoEditWarpError"].execute(parts.frames, parts.frames, "RAFT", n, 0, 0, 1)),
    }


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("folder", ["videoedit_guidance", "videoedit_onestep", "animatediff_models",
                                    "videoedit_features", "optical_flow"])
def test_broken_file_in_a_model_folder(comfy, parts, guarded, folder, kind):
    ext, input_name, fix, load = _loaders(comfy, parts)[folder]
    name = guarded.place(folder, f"broken_{kind}{ext}", kind, _good_safetensors())
    msg = _refused(lambda: load(name), input_name, name, EXPECT[kind])
    assert fix in msg


@pytest.mark.parametrize("kind", KINDS)
def test_broken_taesd_file(comfy, guarded, kind):
    import folder_paths
    decoder = folder_paths.get_full_path("vae_approx", "taesd_decoder.safetensors")
    good = open(decoder, "rb").read()
    guarded.place("vae_approx", "taesdxl_encoder.safetensors", kind, good)
    dec = os.path.join(folder_paths.get_folder_paths("vae_approx")[0], "taesdxl_decoder.safetensors")
    shutil.copyfile(decoder, dec)  # a good decoder: the broken encoder is what is refused
    guarded.placed.append(dec)
    guarded.snapshot()
    enc = comfy.node_classes["VideoEditTAESDEncode"]
    msg = _refused(lambda: enc.execute(torch.rand(1, 64, 64, 3), "taesdxl", 4), "variant",
                   "taesdxl_encoder.safetensors", EXPECT[kind])
    assert "madebyollin/taesd" in msg


@pytest.mark.parametrize("kind", KINDS)
def test_broken_training_checkpoint(comfy, parts, guarded, kind):
    """A resumed run whose checkpoint is damaged stops before training and says how to start over."""
    import folder_paths
    from pathlib import Path
    ck = Path(folder_paths.get_output_directory(), "videoedit_training", "cfg_distill", f"broken_ck_{kind}",
              "checkpoint.safetensors")
    ck.parent.mkdir(parents=True, exist_ok=True)
    _write(kind, ck, guarded.marker, _good_safetensors())
    guarded.placed.append(str(ck))
    guarded.snapshot()
    node = comfy.node_classes["VideoEditCFGDistillTrain"]
    vae = comfy.node_classes["VAELoader"]().load_vae("taesd")[0]
    with pytest.raises(ValueError) as e:
        node.execute(parts.model, parts.clip, vae, "my frames (data-free)", "make it snowy", "", 64, 1, 1, 1e-3,
                     "lora", 2, 0, 1, f"broken_ck_{kind}", True, frames=parts.frames[:1])
    msg = str(e.value)
    assert msg.startswith("resume: 'checkpoint.safetensors' ") and "set resume to false" in msg and str(ck) in msg, msg


# ------------------------------------------------------------------ the wrong model family

def _save(sd, path, meta=None):
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=meta)


def _folder(name):
    import folder_paths
    return folder_paths.get_folder_paths(name)[0]


def test_wrong_family_for_every_loader(comfy, parts, guarded):
    from harness.fixtures import tiny_motion_module_sd
    from videoedit.nodes.movie.engine_guidance import save_guidance_adapter
    from videoedit.nodes.movie.engine_onestep import save_onestep_student
    nc = comfy.node_classes
    motion = tiny_motion_module_sd()
    files = {"videoedit_guidance": ["mm_as_adapter.safetensors", "student_as_adapter.safetensors"],
             "videoedit_onestep": ["adapter_as_student.safetensors", "mm_as_student.safetensors"],
             "animatediff_models": ["adapter_as_mm.safetensors"],
             "videoedit_features": ["mm_as_dino.safetensors"]}
    g, o, a, f = (_folder(k) for k in files)
    _save(motion, os.path.join(g, "mm_as_adapter.safetensors"))
    save_onestep_student(parts.adapter, "abc", SimpleNamespace(v_steps=1, steps=1),
                         os.path.join(g, "student_as_adapter.safetensors"))
    save_guidance_adapter(parts.adapter, os.path.join(o, "adapter_as_student.safetensors"))
    _save(motion, os.path.join(o, "mm_as_student.safetensors"))
    save_guidance_adapter(parts.adapter, os.path.join(a, "adapter_as_mm.safetensors"))
    _save(motion, os.path.join(f, "mm_as_dino.safetensors"))
    guarded.placed.extend(os.path.join(_folder(k), n) for k, ns in files.items() for n in ns)
    guarded.snapshot()
    load_adapter = lambda n: nc["VideoEditLoadGuidanceAdapter"].execute(parts.model, n)
    load_student = lambda n: nc["VideoEditLoadOneStepStudent"].execute(parts.teacher, n)
    _refused(lambda: load_adapter("mm_as_adapter.safetensors"), "adapter_name", "mm_as_adapter.safetensors",
             r"not a MoViE guidance adapter \(metadata format is None\); pick a file written by CFG Distill")
    _refused(lambda: load_adapter("student_as_adapter.safetensors"), "adapter_name", "student_as_adapter.safetensors",
             "is a one-step student, not a guidance adapter; load it with Load One-Step Student")
    _refused(lambda: load_student("adapter_as_student.safetensors"), "student_name", "adapter_as_student.safetensors",
             "is not a one-step student.*pick a file written by One-Step Distill")
    _refused(lambda: load_student("mm_as_student.safetensors"), "student_name", "mm_as_student.safetensors",
             "is not a one-step student")
    with pytest.raises(ValueError, match=r"adapter_name: adapter_as_mm.safetensors: no AnimateDiff motion-module keys"
                                         r".*Pick an AnimateDiff v2/v3 SD1.5 motion module"):
        nc["VideoEditEVELoadVideoAdapter"].execute("adapter_as_mm.safetensors")
    from videoedit.nodes.eve.engine_align_data import load_feature_network
    with pytest.raises(ValueError, match=r"feature_network: not a DINOv2 checkpoint .*facebook/dinov2-small"):
        load_feature_network("mm_as_dino.safetensors")


def test_an_sdxl_motion_module_is_refused_by_the_sd15_backbone(comfy, guarded):
    """A motion module for SDXL's layout (3 levels, 320/640/1280 channels) loads as a file but is
    refused, naming the file, when it meets the SD-style backbone."""
    from harness.fixtures import _motion_module_sd, build_model, tiny_unet_config
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for i, ch in enumerate((320, 640, 1280)):
        sd.update(_motion_module_sd(ch, f"down_blocks.{i}.motion_modules.0", gen, 32))
    name = "mm_sdxl_like.safetensors"
    _save(sd, os.path.join(_folder("animatediff_models"), name))
    guarded.placed.append(os.path.join(_folder("animatediff_models"), name))
    guarded.snapshot()
    adapter = comfy.node_classes["VideoEditEVELoadVideoAdapter"].execute(name).result[0]
    with torch.inference_mode():
        backbone = build_model(tiny_unet_config(), seed=4)
    with pytest.raises(ValueError, match=rf"video adapter '{name}': temporal layer 'down_blocks.0.motion_modules.0' "
                                         r"has 320 channels but the backbone has 32 there"):
        comfy.node_classes["VideoEditEVEApplyVideoAdapter"].execute(backbone, adapter, True)


def test_taesd_of_another_family_is_refused(comfy, guarded):
    import folder_paths
    for part in ("encoder", "decoder"):  # SD1.x's 4-channel TAESD files under SD3's names
        dst = os.path.join(_folder("vae_approx"), f"taesd3_{part}.safetensors")
        shutil.copyfile(folder_paths.get_full_path("vae_approx", f"taesd_{part}.safetensors"), dst)
        guarded.placed.append(dst)
    guarded.snapshot()
    with pytest.raises(ValueError, match=r"variant: 'taesd3_encoder.safetensors' is not the TAESD encoder of 'taesd3' "
                                         r"\(SD3, 16-channel latents\): wrong shape 2 \(e.g. 14.weight \[4, 64, 3, 3\] "
                                         r"vs \[16, 64, 3, 3\]\).*madebyollin"):
        comfy.node_classes["VideoEditTAESDEncode"].execute(torch.rand(1, 64, 64, 3), "taesd3", 4)


# ------------------------------------------- a guidance adapter whose LoRA does not fit the model

def _adapter_file(parts, name, edit):
    from videoedit.nodes.movie.engine_guidance import save_guidance_adapter
    path = os.path.join(_folder("videoedit_guidance"), name)
    save_guidance_adapter(parts.adapter, path)
    from safetensors import safe_open
    from safetensors.torch import load_file
    with safe_open(path, framework="pt") as f:
        meta = dict(f.metadata())
    sd = load_file(path)
    edit(sd, meta)
    _save(sd, path, meta)
    return path


def test_guidance_adapter_that_does_not_fit_is_refused_at_load(comfy, parts, guarded):
    """Metadata right, LoRA shapes wrong (before: loaded and sampled with 282 'ERROR lora' lines in
    the log only); a LoRA on a weight the model lacks; up/down that do not multiply; metadata missing."""
    nc = comfy.node_classes
    keys = sorted({k.rsplit(".", 1)[0] for k in parts.adapter.to_state()[0] if k.startswith("delta.")})

    def widen(sd, meta):  # every LoRA's up gets 3 more rows: [out + 3, r]
        for k in keys:
            sd[f"{k}.up"] = torch.zeros(sd[f"{k}.up"].shape[0] + 3, sd[f"{k}.up"].shape[1])

    def elsewhere(sd, meta):
        k = keys[0]
        sd[f"delta.diffusion_model.no_such_block.weight.up"] = sd.pop(f"{k}.up")
        sd[f"delta.diffusion_model.no_such_block.weight.down"] = sd.pop(f"{k}.down")

    def mismatched(sd, meta):
        sd[f"{keys[0]}.down"] = sd[f"{keys[0]}.down"][:1]

    def no_meta(sd, meta):
        meta.pop("model_channels")

    cases = {"lora_wrong_shapes.safetensors": (widen, rf"{len(keys)} of its {len(keys)} weight deltas do not fit this "
                                               r"model .*delta \[\d+, \d+\] vs weight"),
             "lora_missing_key.safetensors": (elsewhere, r"1 of its \d+ weight deltas do not fit .*no_such_block.weight: "
                                              r"no such weight in the model"),
             "lora_not_multiplying.safetensors": (mismatched, r"has up \[\d+, 2\] and down \[1, \d+\], which do not "
                                                  r"multiply"),
             "no_metadata.safetensors": (no_meta, r"its metadata is incomplete or corrupt \(KeyError: 'model_channels'\)")}
    for name, (edit, _) in cases.items():
        guarded.placed.append(_adapter_file(parts, name, edit))
    guarded.snapshot()
    for name, (_, pattern) in cases.items():
        with pytest.raises(ValueError, match=rf"adapter_name: '{name}': .*{pattern}") as e:
            nc["VideoEditLoadGuidanceAdapter"].execute(parts.model, name)
        assert "distil" in str(e.value) or "CFG Distill" in str(e.value)


def test_keys_core_does_not_apply_are_an_error(comfy, parts, monkeypatch):
    """make_student counts what ModelPatcher.add_patches took: fewer than the adapter has is an error."""
    import comfy.model_patcher as mp
    from videoedit.nodes.movie.engine_guidance import make_student
    real = mp.ModelPatcher.add_patches
    monkeypatch.setattr(mp.ModelPatcher, "add_patches", lambda self, p, *a, **k: real(self, p, *a, **k)[1:])
    with pytest.raises(ValueError, match=rf"guidance adapter: ComfyUI applied {len(parts.adapter.deltas) - 1} of its "
                                         rf"{len(parts.adapter.deltas)} weight deltas"):
        make_student(parts.model, parts.adapter)


# -------------------------------------------------- a loader's combo value sent through the API

@pytest.mark.parametrize("folder", ["videoedit_guidance", "videoedit_onestep", "animatediff_models",
                                    "videoedit_features", "optical_flow"])
def test_traversal_in_a_loaders_name(comfy, parts, guarded, folder):
    """A prompt sent through the API is not limited to the combo's list: an absolute name or one with
    '..' is refused (never resolved against the disk), naming the input. Two layers: the node refuses
    a value its list does not hold (host.checked_node), and beneath it host.folders refuses such a
    name for any caller that passes no list (the feature network's loader has none)."""
    from videoedit.nodes.host.folders import model_file_path
    _, input_name, _, load = _loaders(comfy, parts)[folder]
    guarded.snapshot()
    empty = ("",) if folder not in ("videoedit_features", "optical_flow") else ()  # there: the default choice
    for bad in ("../../../../etc/passwd", "/etc/passwd", "sub/../../x.safetensors", *empty):
        path_message = (rf"{input_name}: '{re.escape(bad)}' is not a file name of models/{folder} "
                        r"\(no absolute paths, no '..'\); pick a file from the list")
        node_message = path_message if folder == "videoedit_features" else \
            rf"^{input_name}: '{re.escape(bad)}' is not one of its options \(.*\); pick one from the node's list"
        with pytest.raises(ValueError, match=node_message):
            load(bad)
        with pytest.raises(ValueError, match=path_message):
            model_file_path(folder, bad, input_name)

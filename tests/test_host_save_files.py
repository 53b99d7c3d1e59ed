"""Where the pack saves models (host/folders.py save_path, host/training_ui.py run_files), through
the nodes in-process: Save Video Adapter and the three trainers (CFG Distill, One-Step Distill, LoRA
Aligner). A name with folders, '..', an absolute path, an empty or over-long name is refused naming
the input; an existing file is never replaced without `overwrite` (the node stops before any work);
the path written is shown. The output name is also the resume key: a run that resumes its
checkpoint rewrites the file it wrote before (its metadata names the run), while a fresh run of the
same name, or a run whose checkpoint is gone, is refused. The run logic is one function shared by
the three trainers; the resume cases run on CFG Distill (cheapest), the refusals on all three."""
from __future__ import annotations

import glob
import os
from types import SimpleNamespace

import pytest
import torch

from harness.tree_hash import tree_hashes

BAD_NAMES = ["../evil_videoedit", "../../evil_videoedit", "/tmp/evil_videoedit_abs", "sub/evil_videoedit", "",
             "   ", "..", ".hidden_videoedit", "a\\evil_videoedit", "c:evil_videoedit", "x" * 201, "nul\0videoedit"]


@pytest.fixture(scope="module")
def parts(comfy):
    from harness.fixtures import build_clip, build_model, tiny_unet_config
    from videoedit.nodes.host.model_family import model_family, unet_of
    from videoedit.nodes.movie import guidance
    from videoedit.nodes.movie.engine_guidance import make_student
    nc = comfy.node_classes
    with torch.inference_mode():
        ip2p = build_model(tiny_unet_config(ip2p=True), ip2p=True, seed=3)
        sd = build_model(tiny_unet_config(), seed=4)
    u = unet_of(ip2p)
    teacher = make_student(ip2p, guidance.GuidanceAdapter(u.model_channels, u.model_channels * 4, model_family(ip2p)))
    return SimpleNamespace(ip2p=ip2p, teacher=teacher, clip=build_clip(tiny=True),
                           vae=nc["VAELoader"]().load_vae("taesd")[0],
                           video_adapter=nc["VideoEditEVEInitVideoAdapter"].execute(sd, False, 8, 0).result[0],
                           frames=torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0)))


def _savers(comfy, p):
    """node -> (the input that names the file, model folder, save(name, **kw)); every call stops at
    the save check or writes (one step, one 64x64 frame)."""
    nc = comfy.node_classes
    movie = dict(clip=p.clip, vae=p.vae, data_mode="my frames (data-free)", instructions="make it snowy",
                 dataset_folder="", resolution=64, batch_size=1, learning_rate=1e-3, adapter="lora", lora_rank=2,
                 seed=0, checkpoint_every=1, frames=p.frames)
    return {
        "VideoEditEVESaveVideoAdapter": ("filename", "animatediff_models", lambda name, **kw: nc[
            "VideoEditEVESaveVideoAdapter"].execute(p.video_adapter, name, **kw)),
        "VideoEditCFGDistillTrain": ("output_name", "videoedit_guidance", lambda name, resume=False, steps=1, **kw: nc[
            "VideoEditCFGDistillTrain"].execute(model=p.ip2p, steps=steps, output_name=name, resume=resume, **movie,
                                                **kw)),
        "VideoEditOneStepDistillTrain": ("output_name", "videoedit_onestep", lambda name, resume=False, **kw: nc[
            "VideoEditOneStepDistillTrain"].execute(model=p.teacher, v_steps=1, steps=0, v_learning_rate=1e-3,
                                                    disc_learning_rate=1e-3, lambda_mse=1.0, lambda_gen=0.1,
                                                    lambda_r1=0.1, output_name=name, resume=resume, **movie, **kw)),
        "VideoEditEVELoRAAligner": ("output_name", "loras", lambda name, resume=False, **kw: nc[
            "VideoEditEVELoRAAligner"].execute(None, None, None, None, "my clip", "", "x", "y", 1, 64, 1, 1, 1e-3, 2,
                                               1, 10, 1, 0.5, 1.0, 0, 1, name, resume, **kw)),
    }


@pytest.fixture
def unchanged(comfy):
    """Asserts that nothing under models/, the training checkpoints or the base folder's top level
    changed, and that no file named like the bad names appeared anywhere near."""
    import folder_paths
    base = os.path.dirname(folder_paths.models_dir)
    roots = [folder_paths.models_dir, os.path.join(folder_paths.get_output_directory(), "videoedit_training")]
    os.makedirs(roots[1], exist_ok=True)
    state = {}
    snap = lambda: (tree_hashes(*roots), sorted(os.listdir(base)), sorted(glob.glob("/tmp/evil_videoedit*")))
    state["before"] = snap()
    remove_after = []
    yield SimpleNamespace(snapshot=lambda: state.update(before=snap()), remove_after=remove_after)
    try:
        assert snap() == state["before"], "a refused save changed a file"
    finally:
        for f in remove_after:
            os.remove(f)


@pytest.mark.parametrize("node", ["VideoEditEVESaveVideoAdapter", "VideoEditCFGDistillTrain",
                                  "VideoEditOneStepDistillTrain", "VideoEditEVELoRAAligner"])
def test_names_that_are_not_plain_file_names(comfy, parts, unchanged, node):
    input_name, _, save = _savers(comfy, parts)[node]
    for bad in BAD_NAMES:
        with pytest.raises(ValueError) as e:
            save(bad)
        msg = str(e.value)
        assert msg.startswith(f"{input_name}: '{bad}' is not a plain file name (no folders") and \
            "type a name like my_adapter" in msg, (bad, msg)


@pytest.mark.parametrize("node", ["VideoEditEVESaveVideoAdapter", "VideoEditCFGDistillTrain",
                                  "VideoEditOneStepDistillTrain", "VideoEditEVELoRAAligner"])
def test_an_existing_file_is_kept(comfy, parts, unchanged, node):
    """A file of the same name (here: someone else's) is refused before any work, without overwrite,
    resuming or not."""
    from safetensors.torch import save_file
    import folder_paths
    input_name, folder, save = _savers(comfy, parts)[node]
    path = os.path.join(folder_paths.get_folder_paths(folder)[0], "someone_elses.safetensors")
    save_file({"w": torch.ones(3)}, path)
    unchanged.remove_after.append(path)
    unchanged.snapshot()  # the foreign file is part of what must stay
    for kw in ({}, {"resume": True}) if input_name == "output_name" else ({},):
        with pytest.raises(FileExistsError, match=rf"{input_name}: {path} already exists; nothing was written. "
                                                  rf"Type another {input_name}, or set overwrite to true"):
            save("someone_elses", **kw)


def test_save_video_adapter_overwrite_and_shown_path(comfy, parts):
    import folder_paths
    from safetensors.torch import save_file
    _, folder, save = _savers(comfy, parts)["VideoEditEVESaveVideoAdapter"]
    path = os.path.join(folder_paths.get_folder_paths(folder)[0], "replace_me.safetensors")
    save_file({"w": torch.ones(3)}, path)
    out = save("replace_me", overwrite=True)
    assert out.result == (path,) and out.ui["text"] == [f"saved {path}"]
    from safetensors.torch import load_file
    assert "w" not in load_file(path)  # replaced by the adapter
    os.remove(path)
    out = save("replace_me.safetensors")  # the extension may be typed; no file there now: written
    assert out.result == (path,)
    os.remove(path)


def _name_files(name):
    import folder_paths
    return (os.path.join(folder_paths.get_folder_paths("videoedit_guidance")[0], f"{name}.safetensors"),
            os.path.join(folder_paths.get_output_directory(), "videoedit_training", "cfg_distill", name,
                         "checkpoint.safetensors"))


def test_the_output_name_is_the_resume_key(comfy, parts):
    """A resumed run rewrites its own file; a fresh run of the same name, or one whose checkpoint is
    gone, is refused; overwrite replaces it."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    _, _, train = _savers(comfy, parts)["VideoEditCFGDistillTrain"]
    name = "test_resume_key"
    path, ck = _name_files(name)
    for f in (path, ck):
        if os.path.exists(f):
            os.remove(f)
    with torch.inference_mode():
        info = train(name, resume=True).result[2]
    assert info.startswith(f"saved {path} after 1 steps")
    with safe_open(path, framework="pt") as f:
        assert f.metadata()["videoedit_run"] == f"cfg_distill/{name}"
    first = load_file(path)
    with torch.inference_mode():  # the same run again: resumes at its last step and rewrites its own file
        info = train(name, resume=True).result[2]
    assert info.startswith(f"saved {path} after 1 steps") and info.endswith("resumed at step 1")
    again = load_file(path)
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    before = tree_hashes(path, os.path.dirname(ck))
    with pytest.raises(FileExistsError, match="output_name: .* already exists"):  # a fresh run of that name
        train(name, resume=False)
    os.rename(ck, ck + ".away")  # the run's checkpoint gone: a new run, not this file's
    try:
        with pytest.raises(FileExistsError, match="output_name: .* already exists"):
            train(name, resume=True)
    finally:
        os.rename(ck + ".away", ck)
    assert tree_hashes(path, os.path.dirname(ck)) == before
    with torch.inference_mode():  # overwrite: a fresh 2-step run replaces the file
        info = train(name, resume=False, steps=2, overwrite=True).result[2]
    assert info.startswith(f"saved {path} after 2 steps")
    second = load_file(path)
    assert any(not torch.equal(first[k], second[k]) for k in first)


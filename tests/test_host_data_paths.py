"""Training data is read only from ComfyUI's input folder and the folders listed under
``videoedit_datasets`` in extra_model_paths.yaml (host/folders.py data_path), for all three trainers:
the dataset folder, the JSONL entries of the LoRA Aligner and the files inside a dataset (symlinks
resolved first). Anything outside gets one message, the same whether it exists or not (no
existence oracle), naming the input and the fix; nothing is read from there."""
from __future__ import annotations

import json
import os
import shutil
from types import SimpleNamespace

import pytest
import torch


@pytest.fixture(scope="module")
def parts(comfy):
    from harness.fixtures import build_model, tiny_unet_config
    from videoedit.nodes.host.model_family import model_family, unet_of
    from videoedit.nodes.movie import guidance
    from videoedit.nodes.movie.engine_guidance import make_student
    with torch.inference_mode():
        ip2p = build_model(tiny_unet_config(ip2p=True), ip2p=True, seed=3)
    u = unet_of(ip2p)
    teacher = make_student(ip2p, guidance.GuidanceAdapter(u.model_channels, u.model_channels * 4, model_family(ip2p)))
    return SimpleNamespace(ip2p=ip2p, teacher=teacher)


@pytest.fixture
def input_dir(comfy, tmp_path):
    """A fresh folder inside ComfyUI's input folder (removed afterwards)."""
    import folder_paths
    d = os.path.join(folder_paths.get_input_directory(), f"test_data_paths_{tmp_path.name}")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def no_listed_folders(comfy, monkeypatch):
    import folder_paths
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "videoedit_datasets", ([], set()))


def _trainers(comfy, p):
    """node -> run(dataset_folder): each stops at its data (no CLIP/VAE needed before that)."""
    nc = comfy.node_classes
    movie = dict(clip=None, vae=None, data_mode="dataset folder", instructions="", resolution=64, batch_size=1,
                 learning_rate=1e-3, adapter="lora", lora_rank=2, seed=0, checkpoint_every=1,
                 output_name="test_data_paths", resume=False)
    return {
        "VideoEditCFGDistillTrain": lambda folder: nc["VideoEditCFGDistillTrain"].execute(
            model=p.ip2p, steps=1, dataset_folder=folder, **movie),
        "VideoEditOneStepDistillTrain": lambda folder: nc["VideoEditOneStepDistillTrain"].execute(
            model=p.teacher, v_steps=1, steps=0, v_learning_rate=1e-3, disc_learning_rate=1e-3, lambda_mse=1.0,
            lambda_gen=0.1, lambda_r1=0.1, dataset_folder=folder, **movie),
        "VideoEditEVELoRAAligner": lambda folder: nc["VideoEditEVELoRAAligner"].execute(
            None, None, None, None, "dataset folder", folder, "", "", 1, 64, 1, 1, 1e-3, 2, 1, 10, 1, 0.5, 1.0, 0, 1,
            "test_data_paths", False),
    }


def _outside_message(run, value, shown=None) -> str:
    with pytest.raises(ValueError) as e:
        run(value)
    msg = str(e.value)
    assert msg.startswith(f"dataset_folder: {shown or repr(value)} is outside the folders training data is read "
                          "from ("), msg
    assert "put the data inside ComfyUI's input folder" in msg and "videoedit_datasets:" in msg
    assert "extra_model_paths.yaml" in msg
    return msg


TRAINERS = ["VideoEditCFGDistillTrain", "VideoEditOneStepDistillTrain", "VideoEditEVELoRAAligner"]


@pytest.mark.parametrize("node", TRAINERS)
def test_dataset_folders_outside_are_refused_alike(comfy, parts, input_dir, tmp_path, no_listed_folders, node):
    run = _trainers(comfy, parts)[node]
    os.symlink("/etc", os.path.join(input_dir, "link_to_etc"))
    (tmp_path / "elsewhere").mkdir()
    rel = os.path.relpath("/root", os.path.dirname(input_dir))  # ../../.. up to / and into /root
    cases = ["/etc", "../../../../root", rel, str(tmp_path / "elsewhere"),
             os.path.join(os.path.basename(input_dir), "link_to_etc")]
    for value in cases:
        _outside_message(run, value)
    # an existing and a missing folder outside: the same message but for the echoed value
    a = _outside_message(run, "/etc").replace("'/etc'", "X")
    b = _outside_message(run, "/etc_not_there_videoedit").replace("'/etc_not_there_videoedit'", "X")
    assert a == b
    with pytest.raises(ValueError, match="dataset_folder: empty; type a folder inside ComfyUI's input folder"):
        run("  ")
    with pytest.raises(ValueError, match="dataset_folder: 'a\\\\x00b' is not a path"):
        run("a\0b")


@pytest.mark.parametrize("node", TRAINERS)
def test_folders_inside_or_listed_are_read(comfy, parts, input_dir, tmp_path, monkeypatch, node):
    """Inside the input folder (also through a symlink that stays inside) and in a folder listed in
    extra_model_paths.yaml: read (an empty folder is then reported as such, past the confinement)."""
    import folder_paths
    import utils.extra_config  # ComfyUI's own reader of extra_model_paths.yaml
    run = _trainers(comfy, parts)[node]
    empty = "no samples|holds 0 .jsonl files"
    sub = os.path.join(input_dir, "ds")
    os.makedirs(sub)
    os.symlink(sub, os.path.join(input_dir, "ds_link"))
    for value in (os.path.join(os.path.basename(input_dir), "ds"), sub, os.path.join(input_dir, "ds_link")):
        with pytest.raises(ValueError, match=f"dataset_folder: .*({empty})"):
            run(value)
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "videoedit_datasets", ([], set()))
    listed = tmp_path / "my_datasets"
    (listed / "ds").mkdir(parents=True)
    _outside_message(run, str(listed / "ds"))
    (tmp_path / "extra_model_paths.yaml").write_text(f"videoedit:\n    base_path: {tmp_path}\n"
                                                     "    videoedit_datasets: my_datasets\n")
    utils.extra_config.load_extra_path_config(str(tmp_path / "extra_model_paths.yaml"))
    with pytest.raises(ValueError, match=f"dataset_folder: .*({empty})"):
        run(str(listed / "ds"))
    _outside_message(run, str(tmp_path))  # only the listed folder, not its parent


def _jsonl(folder, videos):
    lines = [json.dumps({"video": v, "instruction": "make it red", "caption": "a red street"}) for v in videos]
    with open(os.path.join(folder, "dataset.jsonl"), "w") as f:
        f.write("\n".join(lines) + "\n")


def test_aligner_entries_outside_are_refused_alike(comfy, parts, input_dir, tmp_path, no_listed_folders):
    """A JSONL entry naming /etc/shadow and one naming a missing file get the same answer: no oracle.
    Also '..' out of the input folder, a symlinked clip folder and a symlinked .jsonl leading outside."""
    run = _trainers(comfy, parts)["VideoEditEVELoRAAligner"]
    name = os.path.basename(input_dir)
    msgs = {}
    for video in ("/etc/shadow", "/etc/shadow_not_there_videoedit", "../../../../etc/passwd",
                  "../" * 12 + "etc/hostname"):
        _jsonl(input_dir, [video])
        shown = f"entry dataset.jsonl line 1: video {video!r}"
        msgs[video] = _outside_message(run, name, shown).replace(repr(video), "X")
    assert len(set(msgs.values())) == 1, msgs
    (tmp_path / "frames").mkdir()
    os.symlink(tmp_path / "frames", os.path.join(input_dir, "clip_link"))
    _jsonl(input_dir, ["clip_link"])
    _outside_message(run, name, "entry dataset.jsonl line 1: video 'clip_link'")
    os.remove(os.path.join(input_dir, "dataset.jsonl"))
    (tmp_path / "real.jsonl").write_text(json.dumps({"video": "x", "instruction": "a", "caption": "b"}))
    os.symlink(tmp_path / "real.jsonl", os.path.join(input_dir, "dataset.jsonl"))
    _outside_message(run, name, "'dataset.jsonl'")


def test_aligner_frames_that_link_outside_are_refused(comfy, parts, input_dir, tmp_path, no_listed_folders):
    from PIL import Image
    run = _trainers(comfy, parts)["VideoEditEVELoRAAligner"]
    os.makedirs(os.path.join(input_dir, "clip0"))
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.png")
    os.symlink(tmp_path / "outside.png", os.path.join(input_dir, "clip0", "000.png"))
    _jsonl(input_dir, ["clip0"])
    _outside_message(run, os.path.basename(input_dir), "frame '000.png' of clip 'clip0'")


@pytest.mark.parametrize("node", ["VideoEditCFGDistillTrain", "VideoEditOneStepDistillTrain"])
def test_movie_dataset_files_that_link_outside_are_refused(comfy, parts, input_dir, tmp_path, no_listed_folders,
                                                           node):
    """<id>.txt (read first) and the images of a sample: a symlink out of the data folders is refused
    before the file is opened, alike for an existing and a missing target."""
    from PIL import Image
    run = _trainers(comfy, parts)[node]
    Image.new("RGB", (64, 64)).save(os.path.join(input_dir, "a_source.png"))
    Image.new("RGB", (64, 64)).save(os.path.join(input_dir, "a_edited.png"))
    answers = []
    for target in ("/etc/hostname", "/etc/hostname_not_there_videoedit"):
        txt = os.path.join(input_dir, "a.txt")
        if os.path.lexists(txt):
            os.remove(txt)
        os.symlink(target, txt)
        answers.append(_outside_message(run, os.path.basename(input_dir), "file 'a.txt' of the dataset"))
    assert answers[0] == answers[1]
    os.remove(os.path.join(input_dir, "a.txt"))
    with open(os.path.join(input_dir, "a.txt"), "w") as f:
        f.write("make it snowy")
    os.remove(os.path.join(input_dir, "a_edited.png"))
    Image.new("RGB", (64, 64)).save(tmp_path / "edited.png")
    os.symlink(tmp_path / "edited.png", os.path.join(input_dir, "a_edited.png"))
    _outside_message(run, os.path.basename(input_dir), "file 'a_edited.png' of the dataset")

"""The Warp Error node inside ComfyUI (engine_flow.py, nodes_eval.py): RAFT weights listed from
models/optical_flow and the torch hub cache (never downloaded), a clear message naming the file
and folders when there are none, the known-pan path on the sample clip, a random-weight RAFT from
a user's file, progress per chunk and cancel."""
from __future__ import annotations

import sys

import pytest
import torch

from harness.sample_clip import panned_frames


@pytest.fixture(scope="module")
def node(comfy):
    return comfy.node_classes["VideoEditWarpError"]


@pytest.fixture(scope="module")
def engine(node):
    return sys.modules[node.__module__].engine_flow


@pytest.fixture
def empty_hub(tmp_path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub" / "checkpoints"
    torch.hub.set_dir(old)


@pytest.fixture
def user_folder(tmp_path, engine):
    """An extra models/optical_flow folder (as extra_model_paths.yaml would add), removed afterwards."""
    import folder_paths
    folder = tmp_path / "optical_flow"
    folder.mkdir()
    folder_paths.add_model_folder_path(engine.FOLDER, str(folder))
    yield folder
    folder_paths.folder_names_and_paths[engine.FOLDER][0].remove(str(folder))


@pytest.fixture(scope="module")
def clip():
    return panned_frames(5, 64, shift=(2, 1))[0]


def _options(node) -> list[str]:
    spec = node.INPUT_TYPES()["required"]["raft_weights"]
    return spec[0] if isinstance(spec[0], list) else spec[1]["options"]   # V1 list or V3 COMBO


def _random_raft_small():
    from torchvision.models.optical_flow import raft_small
    torch.manual_seed(0)
    return raft_small(weights=None, progress=False).state_dict()


def test_without_weights_the_message_names_file_and_folders(node, engine, empty_hub, clip):
    assert engine.weight_options() == [engine.NONE_FOUND]
    assert _options(node) == [engine.NONE_FOUND]
    with pytest.raises(ValueError) as e:
        node.execute(clip, clip, "RAFT", engine.NONE_FOUND, 2, 1, 4)
    msg = str(e.value)
    for part in ("raft_large_C_T_SKHT_V2-ff5fadd5.pth", "https://download.pytorch.org/models/", "optical_flow",
                 str(empty_hub), "known pan", "Nothing is downloaded"):
        assert part in msg, (part, msg)


def test_files_are_listed_from_the_folder_and_the_hub_cache(node, engine, empty_hub, user_folder):
    torch.save(_random_raft_small(), user_folder / "my_raft.pth")
    (user_folder / "notes.txt").write_text("not weights")
    empty_hub.mkdir(parents=True)
    torch.save(_random_raft_small(), empty_hub / "raft_small_C_T_V2-01064c6d.pth")
    want = ["my_raft.pth", "torch hub: raft_small_C_T_V2-01064c6d.pth"]
    assert engine.weight_options() == want
    assert _options(node) == want   # the schema is rebuilt for the canvas
    assert engine.resolve(want[1]) == str(empty_hub / "raft_small_C_T_V2-01064c6d.pth")
    with pytest.raises(ValueError, match="'gone.pth' is not in models/optical_flow"):
        engine.resolve("gone.pth")


def test_known_pan_scores_the_sample_clip_zero_with_progress(node, clip):
    import comfy.utils as cu
    seen = []
    old = cu.PROGRESS_BAR_HOOK
    cu.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: seen.append((value, total)))
    try:
        out = node.execute(clip, clip, "known pan", _options(node)[0], 2, 1, 2)
    finally:
        cu.set_progress_bar_global_hook(old)
    info = out.ui["videoedit_warp_error"][0]
    assert out.result[0] == info["warp_error"] < 1e-12
    assert len(info["per_pair"]) == 4 and info["frames"] == 5 and info["size"] == [64, 64]
    assert "known pan" in info["flow"] and "warp error" in out.ui["text"][0]
    assert seen == [(1, 2), (2, 2)]
    flicker = clip + 0.03 * torch.tensor([(-1.0) ** i for i in range(5)]).view(5, 1, 1, 1)
    assert node.execute(flicker, clip, "known pan", _options(node)[0], 2, 1, 2).result[0] == pytest.approx(0.06 ** 2, rel=1e-4)


def test_random_raft_from_a_users_file_runs(node, user_folder, clip):
    from safetensors.torch import save_file
    save_file(_random_raft_small(), str(user_folder / "raft_small.safetensors"))
    out = node.execute(clip[:2], clip[:2], "RAFT", "raft_small.safetensors", 0, 0, 1)  # one pair: ~7 s on CPU
    info = out.ui["videoedit_warp_error"][0]
    assert info["flow"].startswith("raft_small (raft_small.safetensors)")
    assert len(info["per_pair"]) == 1 and info["per_pair"][0] >= 0


def test_a_pickle_in_the_folder_is_refused(node, user_folder, clip):
    torch.save({"weights": torch.zeros(1), "config": object}, user_folder / "bad.pth")
    with pytest.raises(ValueError, match=r"raft_weights: 'bad.pth' holds pickled Python objects.*weights_only=True"):
        node.execute(clip, clip, "RAFT", "bad.pth", 0, 0, 1)


def test_cancel_during_the_run_stops_at_the_next_chunk(node, clip, cancel_at):
    import comfy.model_management as mm
    seen = cancel_at(1)
    with pytest.raises(mm.InterruptProcessingException):
        node.execute(clip, clip, "known pan", _options(node)[0], 2, 1, 1)  # 4 pairs, one per chunk
    assert seen == [(1, 4)]


def test_cancel_stops_it(node, clip):
    import comfy.model_management as mm
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            node.execute(clip, clip, "known pan", _options(node)[0], 2, 1, 1)
    finally:
        mm.interrupt_current_processing(False)


def test_one_frame_is_refused_and_odd_sizes_are_scored(node, clip):
    """One frame has no pair to compare (the message names the input); a size that is not a
    multiple of 8 is measured as it is (no VAE here): the panned clip scores zero at 63x65 too."""
    with pytest.raises(ValueError) as e:
        node.execute(clip[:1], clip[:1], "known pan", _options(node)[0], 2, 1, 2)
    assert str(e.value).startswith("edited: the clip has 1 frame; the warp error compares consecutive frames")
    odd = panned_frames(3, (63, 65), shift=(2, 1))[0]
    assert node.execute(odd, odd, "known pan", _options(node)[0], 2, 1, 2).result[0] < 1e-12

"""CLIP scores (nodes/eval/clip_score.py, engine_clip.py, the CLIP Score node).

- The pairing table matches ComfyUI's own configs of the real towers, and the shape readers read
  real-size ComfyUI models (built on the meta device: no memory, no weights) correctly; SD1.x's
  checkpoint text encoder (no text projection) is refused with the reason and the fix.
- With random-weight ComfyUI models of the real classes at tiny sizes, the score code path runs end
  to end and has the definition's properties: identical frames score equally, cosines lie in
  [-1, 1], CLIPFrame of identical frames is 1, the score is the image/text embeddings' cosine.

What this cannot show: that real CLIP weights rank real edits as in the paper (none exist here)."""
from __future__ import annotations

import json
import math
from dataclasses import astuple
from pathlib import Path

import pytest
import torch

from videoedit.nodes.eval import clip_score as cs

TINY_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2, "num_hidden_layers": 3}
TINY_VISION = {"attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "gelu", "hidden_size": 48, "image_size": 56,
               "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 96,
               "layer_norm_eps": 1e-5, "model_type": "clip_vision_model", "num_attention_heads": 2,
               "num_channels": 3, "num_hidden_layers": 2, "patch_size": 14, "projection_dim": 64,
               "torch_dtype": "float32"}
TINY_PAIR = cs.ClipPair("tiny test CLIP", cs.TowerShape(64, 3, 64), cs.TowerShape(48, 2, 64, 14, 17), "tests only")


# ----------------------------------------------------------------------------- pure


def test_frame_scores_are_cosines():
    g = torch.Generator().manual_seed(0)
    images, text = torch.randn(5, 8, generator=g), torch.randn(8, generator=g)
    scores = cs.frame_scores(images * 7.0, text * 0.1)        # scale-free
    want = torch.nn.functional.cosine_similarity(images, text.unsqueeze(0), dim=1).double()
    assert torch.allclose(scores, want, atol=1e-12)
    assert cs.frame_scores(text.unsqueeze(0), text)[0] == pytest.approx(1.0)
    assert cs.frame_scores(-text.unsqueeze(0), text)[0] == pytest.approx(-1.0)


def test_clip_frame_is_the_mean_over_pairs_of_frames():
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    pairs = [0.0, 1 / math.sqrt(2), 1 / math.sqrt(2)]
    assert cs.clip_frame(e) == pytest.approx(sum(pairs) / 3)
    assert cs.clip_frame(e[:1].repeat(4, 1)) == pytest.approx(1.0)


def test_broken_embeddings_are_refused():
    with pytest.raises(ValueError, match="zero or not finite"):
        cs.frame_scores(torch.zeros(2, 4), torch.ones(4))
    with pytest.raises(ValueError, match="same size"):
        cs.frame_scores(torch.ones(2, 4), torch.ones(5))


def test_mismatched_towers_are_refused_naming_both():
    h, g = cs.KNOWN_PAIRS[0], cs.KNOWN_PAIRS[1]
    assert cs.shared_space(h.text, h.vision) is h and cs.shared_space(g.text, g.vision) is g
    with pytest.raises(ValueError, match=r"vision model \(OpenCLIP ViT-bigG.*text encoder \(OpenCLIP ViT-H"):
        cs.shared_space(h.text, g.vision)
    with pytest.raises(ValueError, match="unrecognised: width 768, 12 layers"):
        cs.shared_space(cs.TowerShape(768, 12, 768), h.vision)


# ------------------------------------------------------------------- ComfyUI models


def _config(name: str) -> dict:
    import comfy.sd1_clip
    root = Path(comfy.sd1_clip.__file__).parent
    for folder in (root, root / "text_encoders"):
        if (folder / name).is_file():
            return json.loads((folder / name).read_text())
    raise FileNotFoundError(name)


def test_table_matches_comfyuis_configs_of_the_real_towers(comfy):
    def text(cfg):
        return cs.TowerShape(cfg["hidden_size"], cfg["num_hidden_layers"], cfg["hidden_size"])

    def vision(cfg):
        return cs.TowerShape(cfg["hidden_size"], cfg["num_hidden_layers"], cfg["projection_dim"], cfg["patch_size"],
                             (cfg["image_size"] // cfg["patch_size"]) ** 2 + 1)
    assert cs.shared_space(text(_config("sd2_clip_config.json")), vision(_config("clip_vision_config_h.json"))).name \
        == "OpenCLIP ViT-H/14 (LAION-2B)"
    assert cs.shared_space(text(_config("clip_config_bigg.json")), vision(_config("clip_vision_config_g.json"))).name \
        == "OpenCLIP ViT-bigG/14 (LAION-2B)"


def _meta_clip(stage):
    import comfy.sd
    clip = comfy.sd.CLIP(no_init=True)
    clip.cond_stage_model = stage
    return clip


def _with_projection(tower, dim):
    tower.transformer.text_projection.weight = torch.nn.Parameter(torch.randn(dim, dim), requires_grad=False)
    return tower


def test_real_size_models_are_read_and_paired(comfy):
    """SD 2.x's text encoder + ViT-H vision, SDXL's + ViT-bigG: full-size ComfyUI classes on the meta device
    (only the projections get real memory)."""
    import comfy.clip_model
    import comfy.ops
    import comfy.sdxl_clip
    from comfy.text_encoders.sd2_clip import SD2ClipModel
    from videoedit.nodes.eval import engine_clip

    def vision(config):
        model = comfy.clip_model.CLIPVisionModelProjection(_config(config), None, "meta", comfy.ops.manual_cast)
        return type("ClipVision", (), {"model": model})()
    sd2 = SD2ClipModel(device="meta")
    _with_projection(sd2.clip_h, 1024)
    assert engine_clip.text_shape(_meta_clip(sd2)) == cs.TowerShape(1024, 24, 1024)
    assert engine_clip.vision_shape(vision("clip_vision_config_h.json")) == cs.TowerShape(1280, 32, 1024, 14, 257)
    assert engine_clip.check_pair(vision("clip_vision_config_h.json"), _meta_clip(sd2)).name.startswith("OpenCLIP ViT-H")

    sdxl = comfy.sdxl_clip.SDXLClipModel(device="meta")
    _with_projection(sdxl.clip_g, 1280)
    assert engine_clip.check_pair(vision("clip_vision_config_g.json"), _meta_clip(sdxl)).name.startswith("OpenCLIP ViT-bigG")
    with pytest.raises(ValueError, match="not two towers of one CLIP"):
        engine_clip.check_pair(vision("clip_vision_config_vitl.json"), _meta_clip(sd2))


def test_sd1_checkpoint_text_encoder_is_refused(comfy):
    """SD1.x checkpoints load CLIP-L as SD1CheckpointClipModel: pooled output without the projection."""
    import comfy.sd1_clip
    from videoedit.nodes.eval import engine_clip
    sd1 = comfy.sd1_clip.SD1ClipModel(device="meta")
    with pytest.raises(ValueError, match=r"without its text projection.*Stable Diffusion 2.x.*CLIP-ViT-H-14"):
        engine_clip.text_shape(_meta_clip(sd1))


def test_unloaded_projection_is_refused(comfy):
    from comfy.text_encoders.sd2_clip import SD2ClipModel
    from videoedit.nodes.eval import engine_clip
    with pytest.raises(ValueError, match="text projection of clip_h was not loaded"):
        engine_clip.text_shape(_meta_clip(SD2ClipModel(device="meta")))
    sd2 = SD2ClipModel(device="meta")
    sd2.clip_h.transformer.text_projection.weight = torch.nn.Parameter(torch.zeros(1024, 1024), requires_grad=False)
    with pytest.raises(ValueError, match="was not loaded"):
        engine_clip.text_shape(_meta_clip(sd2))


@pytest.fixture(scope="module")
def tiny_models(comfy, tmp_path_factory):
    """Random-weight ComfyUI CLIP text (SD 2.x class) and vision models at tiny sizes."""
    import comfy.clip_vision
    import comfy.sd
    import comfy.supported_models_base as smb
    from comfy.text_encoders.sd2_clip import SD2ClipModel, SD2Tokenizer
    from harness.fixtures import reset_parameters
    clip = comfy.sd.CLIP(target=smb.ClipTarget(SD2Tokenizer, SD2ClipModel), embedding_directory=None,
                         model_options={"clip_h_model_config": TINY_TEXT})
    reset_parameters(clip.cond_stage_model, 5)
    cfg = tmp_path_factory.mktemp("clipvision") / "tiny_vision.json"
    cfg.write_text(json.dumps(TINY_VISION))
    vision = comfy.clip_vision.ClipVisionModel(str(cfg))
    reset_parameters(vision.model, 6)
    with torch.no_grad():  # a raw Parameter ComfyUI leaves uninitialised
        vision.model.vision_model.embeddings.class_embedding.normal_(generator=torch.Generator().manual_seed(7))
    return vision, clip


@pytest.fixture
def tiny_pair(monkeypatch, comfy):
    """The tiny pair added to the table, here and in the copy of the pack ComfyUI loaded the nodes from."""
    import sys
    node_module = sys.modules[comfy.node_classes["VideoEditClipScore"].__module__]
    loaded = sys.modules[node_module.engine_clip.shared_space.__module__]
    for mod in {cs, loaded}:
        pair = mod.ClipPair(TINY_PAIR.name, mod.TowerShape(*astuple(TINY_PAIR.text)),
                            mod.TowerShape(*astuple(TINY_PAIR.vision)), TINY_PAIR.files)
        monkeypatch.setattr(mod, "KNOWN_PAIRS", mod.KNOWN_PAIRS + (pair,))


def _frames(n=4, seed=0):
    return torch.rand(n, 40, 52, 3, generator=torch.Generator().manual_seed(seed))


def test_tiny_models_are_refused_without_a_known_pair(tiny_models):
    from videoedit.nodes.eval import engine_clip
    vision, clip = tiny_models
    with pytest.raises(ValueError, match="not two towers of one CLIP"):
        engine_clip.clip_scores(vision, clip, _frames(), "a marble statue", 4)


def test_score_is_the_cosine_of_comfyuis_embeddings(tiny_models, tiny_pair):
    from videoedit.nodes.eval import engine_clip
    vision, clip = tiny_models
    frames = _frames()
    info = engine_clip.clip_scores(vision, clip, frames, "a marble statue", 3)
    image = vision.encode_image(frames, crop=True)["image_embeds"]
    _, pooled = clip.encode_from_tokens(clip.tokenize("a marble statue"), return_pooled=True)
    want = torch.nn.functional.cosine_similarity(image.double(), pooled.double(), dim=1)
    assert info["per_frame"] == pytest.approx(want.tolist(), abs=1e-5)
    assert info["clip_score"] == pytest.approx(sum(info["per_frame"]) / 4)
    assert all(-1.0 <= s <= 1.0 for s in info["per_frame"]) and -1.0 <= info["clip_frame"] <= 1.0
    assert info["clip_model"] == "tiny test CLIP"
    other = engine_clip.clip_scores(vision, clip, frames, "a watercolor painting of a dog", 3)
    assert other["per_frame"] != pytest.approx(info["per_frame"], abs=1e-6)   # the prompt matters


def test_identical_frames_score_equally(tiny_models, tiny_pair):
    from videoedit.nodes.eval import engine_clip
    vision, clip = tiny_models
    same = _frames(1).repeat(5, 1, 1, 1)
    info = engine_clip.clip_scores(vision, clip, same, "a marble statue", 2)
    assert max(info["per_frame"]) - min(info["per_frame"]) < 1e-6
    assert info["clip_frame"] == pytest.approx(1.0, abs=1e-6)
    varied = engine_clip.clip_scores(vision, clip, _frames(5), "a marble statue", 2)
    assert varied["clip_frame"] < 1.0 - 1e-6


def test_chunking_does_not_change_scores(tiny_models, tiny_pair):
    from videoedit.nodes.eval import engine_clip
    vision, clip = tiny_models
    frames = _frames(5)
    a = engine_clip.clip_scores(vision, clip, frames, "a marble statue", 1)
    b = engine_clip.clip_scores(vision, clip, frames, "a marble statue", 16)
    assert a["per_frame"] == pytest.approx(b["per_frame"], abs=1e-5)


def test_node_shows_and_returns_the_scores(comfy, tiny_models, tiny_pair):
    import comfy.utils as cu
    node = comfy.node_classes["VideoEditClipScore"]
    vision, clip = tiny_models
    seen = []
    old = cu.PROGRESS_BAR_HOOK
    cu.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: seen.append((value, total)))
    try:
        out = node.execute(_frames(5), vision, clip, "a marble statue", 2)
    finally:
        cu.set_progress_bar_global_hook(old)
    score, frame = out.result
    info = out.ui["videoedit_clip_score"][0]
    assert score == info["clip_score"] and frame == info["clip_frame"] and len(info["per_frame"]) == 5
    assert "CLIP score" in out.ui["text"][0]
    assert seen == [(1, 3), (2, 3), (3, 3)]
    json.dumps(out.ui)  # the history carries it as JSON


def test_node_cancel_during_the_run_stops_at_the_next_chunk(comfy, tiny_models, tiny_pair, cancel_at):
    import comfy.model_management as mm
    vision, clip = tiny_models
    seen = cancel_at(1)
    with pytest.raises(mm.InterruptProcessingException):
        comfy.node_classes["VideoEditClipScore"].execute(_frames(5), vision, clip, "a marble statue", 2)
    assert seen == [(1, 3)]


def test_node_cancel_and_empty_prompt(comfy, tiny_models, tiny_pair):
    import comfy.model_management as mm
    node = comfy.node_classes["VideoEditClipScore"]
    vision, clip = tiny_models
    with pytest.raises(ValueError, match="prompt: empty"):
        node.execute(_frames(2), vision, clip, "  ", 2)
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            node.execute(_frames(2), vision, clip, "a marble statue", 1)
    finally:
        mm.interrupt_current_processing(False)


def test_one_frame_scores_like_that_frame_in_a_clip(comfy, tiny_models, tiny_pair):
    """One frame (40x52: any size, CLIP resizes): its score is that frame's score in a longer clip,
    CLIPFrame (no pair of frames) is 1."""
    node = comfy.node_classes["VideoEditClipScore"]
    vision, clip = tiny_models
    frames = _frames(3)
    score, frame = node.execute(frames[1:2], vision, clip, "a marble statue", 4).result
    clip_info = node.execute(frames, vision, clip, "a marble statue", 4).ui["videoedit_clip_score"][0]
    assert score == pytest.approx(clip_info["per_frame"][1], abs=1e-5) and frame == 1.0

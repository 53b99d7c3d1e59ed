"""Progress and latent previews of the pack's own sampling loops (host/progress.py): the TokenFlow
Keyframe Sampler, the DDIM Inverter and the One-Step Sampler report frames x steps (steps for the
one-step sampler, which takes all frames at once) and send core's previews (latent2rgb, TAESD) of
a strip of frames (first, middle, last) with the updates, nothing when previews are off.

Tiny random-weight models: they show that the preview is the loop's own denoised latent of those
frames, decoded by core's previewer, at the right moments; not what a real model's preview looks
like (tests/test_browser_previews.py shows them arriving on the canvas)."""
from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.inference_mode():  # as ComfyUI's executor runs nodes
        yield


@pytest.fixture
def previews(monkeypatch):
    """Set the preview method (as --preview-method does) and record every progress update."""
    import comfy.utils
    from comfy.cli_args import LatentPreviewMethod, args
    seen = []

    def use(method: str, hook: bool = True):
        monkeypatch.setattr(args, "preview_method", LatentPreviewMethod(method))
        monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", (lambda value, total, preview, node_id=None:
                                                              seen.append((value, total, preview))) if hook else None)
        return seen
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", None)
    return use


def _latent(n, seed=0, size=8):
    return {"samples": torch.randn(n, 4, size, size, generator=torch.Generator().manual_seed(seed))}


def _invert(comfy, tiny_sd15, n, steps=2, fpc=16):
    model, conds = tiny_sd15
    node = comfy.node_classes["VideoEditTokenFlowDDIMInverter"]
    return node.execute(model, conds["source"], _latent(n), steps, "ddim_uniform", 0, fpc).result


def _sample(comfy, tiny_sd15, inv, fpc, **kw):
    model, conds = tiny_sd15
    args = dict(cfg=3.0, keyframe_interval=2, keyframes="random", seed=0, propagation=True,
                extended_attention=True, pnp_f_t=0.8, pnp_attn_t=0.5, denoise=1.0, frames_per_chunk=fpc)
    args.update(kw)
    node = comfy.node_classes["VideoEditTokenFlowKeyframeSampler"]
    return node.execute(model, conds["edit"], conds["neg"], inv, **args).result[0]["samples"]


def _latent2rgb(model, latent):
    """Core's latent2rgb picture of one model-space latent [C, H, W] (uint8 array)."""
    import latent_preview
    lf = model.model.latent_format
    p = latent_preview.Latent2RGBPreviewer(lf.latent_rgb_factors, lf.latent_rgb_factors_bias)
    return np.asarray(p.decode_latent_to_preview(latent[None]), dtype=np.int16)


def _panels(preview, count):
    fmt, image, size = preview
    assert fmt == "JPEG" and size > 0  # core's preview tuple
    arr = np.asarray(image, dtype=np.int16)
    w = arr.shape[1] // count
    return [arr[:, i * w:(i + 1) * w] for i in range(count)]


def _check_progress(seen, total):
    values = [v for v, *_ in seen]
    assert {t for _, t, _ in seen} == {total}
    assert values == sorted(values) and len(set(values)) == len(values), values  # monotonic, no repeats
    assert values[-1] == total


def test_preview_frames_are_first_middle_last(comfy):
    from videoedit.nodes.host.progress import preview_frames
    assert preview_frames(8) == [0, 4, 7] and preview_frames(5) == [0, 2, 4]
    assert preview_frames(2) == [0, 1] and preview_frames(1) == [0] and preview_frames(0) == []


def test_sampler_progress_is_frames_times_steps_and_last_preview_is_its_result(comfy, tiny_sd15, previews):
    """5 frames in chunks of 2, keyframes every 2 frames (3 per step): per step the keyframe pass
    (3) and the chunks (2, 2, 1). Previews come per chunk that holds a shown frame (0, 2, 4: every
    chunk), and the last one shows the frames the sampler returns."""
    inv, _ = _invert(comfy, tiny_sd15, 5)
    seen = previews("latent2rgb")
    out = _sample(comfy, tiny_sd15, inv, fpc=2)
    _check_progress(seen, inv.steps * (3 + 5))
    per_step = [3, 5, 7, 8]
    assert [v for v, *_ in seen] == [s * 8 + v for s in range(inv.steps) for v in per_step]
    with_preview = [v for v, _, p in seen if p is not None]
    assert with_preview == [s * 8 + v for s in range(inv.steps) for v in per_step[1:]]  # not after the keyframe pass
    model = tiny_sd15[0]
    final = model.model.latent_format.process_in(out)
    for panel, frame in zip(_panels(seen[-1][2], 3), (0, 2, 4)):
        assert np.abs(panel - _latent2rgb(model, final[frame])).max() <= 1


def test_sampler_previews_per_chunk_while_a_step_runs(comfy, tiny_sd15, previews):
    """Plain DDIM (all TokenFlow features off) in chunks of 2 of 7 frames: shown frames 0, 3, 6
    sit in chunks 1, 2 and 4; chunk 3 changes none of them and sends no preview (nothing decoded).
    Frames not reached in the first step show a blank panel until their chunk has run."""
    inv, _ = _invert(comfy, tiny_sd15, 7)
    seen = previews("latent2rgb")
    _sample(comfy, tiny_sd15, inv, fpc=2, propagation=False, extended_attention=False, pnp_f_t=0.0, pnp_attn_t=0.0)
    _check_progress(seen, inv.steps * 7)
    assert [v for v, *_ in seen] == [s * 7 + v for s in range(inv.steps) for v in (2, 4, 6, 7)]
    assert [p is not None for _, _, p in seen] == [True, True, False, True] * inv.steps
    first = _panels(seen[0][2], 3)
    blank = _latent2rgb(tiny_sd15[0], torch.zeros(4, 8, 8))
    assert np.abs(first[1] - blank).max() <= 1 and np.abs(first[2] - blank).max() <= 1
    assert np.abs(first[0] - blank).max() > 1


def test_inverter_progress_and_previews_start_from_the_source(comfy, tiny_sd15, previews):
    seen = previews("latent2rgb")
    inv, _ = _invert(comfy, tiny_sd15, 7, steps=3, fpc=2)
    _check_progress(seen, 3 * 7)
    # chunk-major: every step of chunk [0, 2), then of [2, 4), ...
    assert [v for v, *_ in seen] == [2, 4, 6, 8, 10, 12, 14, 16, 18, 19, 20, 21]
    assert [p is not None for _, _, p in seen] == [True] * 6 + [False] * 3 + [True] * 3  # [4, 6) shows no frame
    model = tiny_sd15[0]
    source = model.model.latent_format.process_in(_latent(7)["samples"])
    panels = _panels(seen[0][2], 3)
    for panel, frame in zip(panels[1:], (3, 6)):  # not reached yet: the source itself
        assert np.abs(panel - _latent2rgb(model, source[frame])).max() <= 1


def test_taesd_previews_decode_each_frame_to_pixels(comfy, tiny_sd15, previews):
    """With the TAESD method, core's TAESD previewer (models/vae_approx/taesd_decoder) decodes
    each shown frame: a strip of three 64x64 pictures for 8x8 latents."""
    inv, _ = _invert(comfy, tiny_sd15, 5)
    seen = previews("taesd")
    _sample(comfy, tiny_sd15, inv, fpc=16)
    shots = [p for _, _, p in seen if p is not None]
    assert shots and all(p[1].size == (3 * 64, 64) for p in shots)


def test_no_previews_when_off_or_headless(comfy, tiny_sd15, previews, monkeypatch):
    import latent_preview
    inv, _ = _invert(comfy, tiny_sd15, 5)
    seen = previews("none")
    _sample(comfy, tiny_sd15, inv, fpc=2)
    assert seen and all(p is None for *_, p in seen)
    built = []
    monkeypatch.setattr(latent_preview, "get_previewer", lambda *a: built.append(a))
    previews("latent2rgb", hook=False)  # headless: nobody to show a preview to
    _sample(comfy, tiny_sd15, inv, fpc=2)
    _invert(comfy, tiny_sd15, 5)
    assert built == []


def test_inverter_cancel_stops_within_one_chunk(comfy, tiny_sd15, cancel_at):
    import comfy.model_management as mm
    seen = cancel_at(1)
    with pytest.raises(mm.InterruptProcessingException):
        _invert(comfy, tiny_sd15, 7, steps=3, fpc=2)
    assert seen == [(2, 21)]


@pytest.fixture(scope="module")
def onestep(comfy):
    """A tiny random one-step student, its instruction and a 4-frame source latent."""
    from harness.fixtures import build_clip, build_model, tiny_unet_config
    from harness.onestep_fixture import random_teacher_adapter
    from videoedit.nodes.movie import engine_cfg_distill as md
    from videoedit.nodes.movie.engine_guidance import make_student
    from videoedit.nodes.movie.engine_onestep import make_onestep_student
    base = build_model(tiny_unet_config(ip2p=True), ip2p=True, seed=3)
    teacher = make_student(base, random_teacher_adapter(base, 7, md))
    student = make_onestep_student(teacher, random_teacher_adapter(base, 9, md), {})
    instruction = comfy.node_classes["CLIPTextEncode"]().encode(build_clip(tiny=True), "make it snowy")[0]
    src = {"samples": torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))}
    return student, instruction, src


def test_onestep_sampler_previews_its_result(comfy, onestep, previews):
    """The One-Step Sampler (LCM through core's sampler callback): one update per step with a
    preview; after the last step the preview is the returned latent's frames."""
    student, instruction, src = onestep
    seen = previews("latent2rgb")
    out, _ = comfy.node_classes["VideoEditOneStepSampler"].execute(student, instruction, src, 1.5, 7.5, 2, 0).result
    _check_progress(seen, 2)
    assert all(p is not None for *_, p in seen)
    final = student.model.latent_format.process_in(out["samples"])
    for panel, frame in zip(_panels(seen[-1][2], 3), (0, 2, 3)):
        assert np.abs(panel - _latent2rgb(student, final[frame])).max() <= 1


def test_onestep_sampler_cancel_stops_at_the_next_step(comfy, onestep, cancel_at):
    """Cancel pressed during step 1 of 3 stops the One-Step Sampler before a second update."""
    import comfy.model_management as mm
    student, instruction, src = onestep
    seen = cancel_at(1)
    with pytest.raises(mm.InterruptProcessingException):
        comfy.node_classes["VideoEditOneStepSampler"].execute(student, instruction, src, 1.5, 7.5, 3, 0)
    assert seen == [(1, 3)]


def test_trainer_data_encoding_reports_frames_and_stops_within_one_chunk(comfy, previews, cancel_at):
    """The trainers' data phase (host.encoding): progress per chunk of frames up to the frame
    count, and a cancel stops it at the next chunk."""
    import comfy.model_management as mm
    from videoedit.nodes.host.encoding import encode_images, encoding_progress
    vae = comfy.node_classes["VAELoader"]().load_vae("taesd")[0]
    images = torch.rand(20, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    seen = previews("none")
    lat = encode_images(vae, images, encoding_progress(20))
    assert lat.shape == (20, 4, 4, 4) and [(v, t) for v, t, _ in seen] == [(8, 20), (16, 20), (20, 20)]
    seen = cancel_at(1)
    with pytest.raises(mm.InterruptProcessingException):
        encode_images(vae, images, encoding_progress(20))
    assert seen == [(8, 20)]

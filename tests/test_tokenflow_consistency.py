"""TokenFlow against per-frame editing on the sample clip (a real photo panned by known shifts),
with the same inversion and prompt, measured by the warp error under the known motion.

A random UNet's self-attention is nearly uniform and its features carry no correspondences,
so the comparison runs on the small *trained* toy model (harness.tokenflow_toy: the tiny
SD1.5-shaped UNet trained on scikit-image photos and textures; the "edit" is its texture
prompt applied to the photo clip). The latent stand-in is shift-equivariant for the clip's
8-pixel steps, so the known motion is exactly one latent pixel per frame in x and y. The toy
sees its latents at the scale it was trained on (a LATENT is scaled by the model's latent format
on the way in, so the test hands it the unscaled value).

What the toy shows, and the test asserts: the texture prompt at cfg 7.5 really edits (it changes
most of the latent's power; cfg 1 changes about 1% at this scale), keyframe editing with
propagation and extended attention gives another result than per-frame editing (the TokenFlow
path runs), and its warp error stays within the band of per-frame editing. Measured 2026-12-03
(10 steps, interval 4, random keyframes, seed 0, PnP 0.8/0.5; warp error x1e-3, whole frame /
central 15x15 latent px): per-frame 392.5 / 80.9, TokenFlow 385.8 / 87.1 (1.7% lower over the
frame); the two edits differ by 3.1% (relative L2) and change 75% of the latent's power. Other
settings move TokenFlow a few percent either way (cfg 5: 2.1% higher; cfg 7.5 without PnP: 2.7%
lower), so the bound is per-frame + 10%. That band would also pass broken propagation (random
NN fields: 1.090x), so a second test compares the NN fields of Eq. 5 with fields that ignore the
video (same position: +5.2% warp error; random: +10.9%) and asserts the NN fields win.

What the toy cannot show: TokenFlow's gain (paper, Table 1: 3.0 vs 11.3 x 1e-3, 3.8x). The toy's
features carry little correspondence and its per-frame edit is nearly shift-equivariant, so there
is little flicker to remove (issue #12 reports ~1.5% for the official code on the toy too). The
gain needs a real model: SD 2.1 base with ``./videoedit eval`` (README, Evaluate an edit).
"""
from __future__ import annotations

import pytest
import torch

SIZE, FRAMES, SHIFT = 256, 8, (8, 8)


def warp_error(x: torch.Tensor, border: int = 0) -> float:
    """Mean squared difference between each frame and the previous one moved by the known
    motion (content moves by -1 latent pixel in x and y per frame), over their overlap
    (``border`` > 0: only its interior, for the diagnosis printed, not for the assertion)."""
    a, b = x[1:, :, :-1, :-1], x[:-1, :, 1:, 1:]
    if border:
        a, b = a[..., border:-border, border:-border], b[..., border:-border, border:-border]
    return float((a - b).pow(2).mean())


@pytest.fixture(scope="module")
def setup(comfy):
    from harness.sample_clip import panned_frames
    from harness.tokenflow_toy import contexts, image_latents, toy_model
    frames, offsets = panned_frames(FRAMES, SIZE, shift=SHIFT)
    assert offsets[1].tolist() == list(SHIFT)
    latent = image_latents(frames)  # the toy's training scale, in the model's own space
    photo, texture = contexts()
    model = toy_model()
    # The toy was trained on these latents as the UNet sees them; a LATENT is scaled by the
    # model's latent format on the way in (x 0.18215 for SD1.5), so hand it the unscaled value.
    lf = model.get_model_object("latent_format")
    nc = comfy.node_classes
    with torch.inference_mode():
        inv, _ = nc["VideoEditTokenFlowDDIMInverter"].execute(model, [[photo, {}]], {"samples": lf.process_out(latent)},
                                                              10, "ddim_uniform", 1, 16).result
    assert torch.allclose(inv.trajectory[-1], latent, atol=1e-5)  # the model saw the training scale
    return model, inv, latent, [[texture, {}]], [[photo, {}]], nc["VideoEditTokenFlowKeyframeSampler"]


def _edit(setup, **kw):
    """The edit in the model's space (the scale of ``latent`` and of the toy's training data)."""
    model, inv, _, pos, neg, sampler = setup
    args = dict(cfg=7.5, keyframe_interval=4, keyframes="random", seed=0, propagation=True, extended_attention=True,
                pnp_f_t=0.8, pnp_attn_t=0.5, denoise=1.0, frames_per_chunk=16)
    args.update(kw)
    with torch.inference_mode():
        out = sampler.execute(model, pos, neg, inv, **args).result[0]["samples"]
    return model.get_model_object("latent_format").process_in(out)


@pytest.fixture(scope="module")
def edits(setup):
    """The TokenFlow edit and the per-frame edit (no propagation, no extended attention)."""
    return _edit(setup), _edit(setup, propagation=False, extended_attention=False)


@pytest.mark.slow
def test_tokenflow_edits_and_stays_within_the_per_frame_band(setup, edits, capsys):
    _, _, latent, *_ = setup
    assert warp_error(latent) < 1e-10  # the stand-in latent moves exactly with the clip
    tokenflow, per_frame = edits
    e_tf, e_pf = warp_error(tokenflow), warp_error(per_frame)
    change = float((tokenflow - latent).pow(2).mean()) / float(latent.pow(2).mean())
    apart = float((tokenflow - per_frame).norm() / per_frame.norm())
    with capsys.disabled():
        print(f"\n[TokenFlow consistency, sample clip {SIZE}px x {FRAMES}, toy model at its training scale] warp "
              f"error: TokenFlow {e_tf * 1e3:.2f}e-3, per-frame {e_pf * 1e3:.2f}e-3, ratio {e_tf / e_pf:.3f}; "
              f"central 15x15: TokenFlow {warp_error(tokenflow, 8) * 1e3:.2f}e-3, per-frame "
              f"{warp_error(per_frame, 8) * 1e3:.2f}e-3; the edit changes {change:.0%} of the latent's power, "
              f"TokenFlow and per-frame edits differ by {apart:.1%}")
    assert change > 0.5  # an edit, not the source reconstructed (measured 75%)
    assert apart > 0.01  # keyframes, propagation and extended attention ran (measured 3.1%)
    # within the per-frame band (measured 0.983x); the paper's 3.8x needs a real model. This band
    # alone would not catch broken propagation (random NN fields measure 1.090x): the next test does
    assert e_tf < 1.10 * e_pf


def _fields_without_correspondence(kind: str):
    """Stand-ins for Eq. 5 that ignore the video: ``random`` keyframe positions, or ``same``
    position (token p of a frame takes token p of its keyframes: no motion compensation)."""
    gen = torch.Generator().manual_seed(0)

    def field(src_tokens, key_tokens, token_chunk=1024):
        b, n = src_tokens.shape[:2]
        if kind == "random":
            idx = torch.randint(0, key_tokens.shape[-2], (b, n), generator=gen)
        else:
            idx = torch.arange(n).expand(b, -1)
        return idx.to(src_tokens.device)
    return field


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["same", "random"])
def test_propagating_along_the_nn_fields_beats_fields_without_correspondence(setup, edits, monkeypatch, capsys,
                                                                             kind):
    """TokenFlow's claim on a clip with known motion, at the toy's scale: propagating the edited
    keyframe tokens along the nearest-neighbour fields of the source's own features (Eq. 5-6)
    gives a lower warp error than the same edit propagating along fields that ignore the video.
    Measured 2026-12-03 (x1e-3): NN fields 385.8; same position 406.0 (+5.2%); random 427.7
    (+10.9%). If Eq. 5 matched the wrong tokens (wrong features, argmin for argmax, frames paired
    with the wrong keyframe), the NN fields would be no better than these and this would fail."""
    from harness.pack import pack_module
    *_, sampler = setup
    tokenflow, per_frame = edits
    monkeypatch.setattr(pack_module(sampler, "tokenflow.propagation"), "nearest_neighbour_field",
                        _fields_without_correspondence(kind))
    broken = _edit(setup)
    e_tf, e_bad, e_pf = warp_error(tokenflow), warp_error(broken), warp_error(per_frame)
    with capsys.disabled():
        print(f"\n[TokenFlow consistency, {kind} fields] warp error {e_bad * 1e3:.2f}e-3 vs the NN fields' "
              f"{e_tf * 1e3:.2f}e-3 ({e_bad / e_tf - 1:+.1%}); per-frame {e_pf * 1e3:.2f}e-3")
    assert e_tf < 0.99 * e_bad

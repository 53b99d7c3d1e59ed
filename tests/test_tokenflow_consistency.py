"""TokenFlow's point: on the sample clip (a real photo panned by known shifts), the edit with
TokenFlow has a lower warp error under the known motion than per-frame editing with the same
inversion and prompt (paper, Table 1: 3.0 vs 11.3 x 1e-3).

A random UNet's self-attention is nearly uniform and its features carry no correspondences,
so the comparison runs on the small *trained* toy model (harness.tokenflow_toy: the tiny
SD1.5-shaped UNet trained on scikit-image photos and textures; the "edit" is its texture
prompt applied to the photo clip). The latent stand-in is shift-equivariant for the clip's
8-pixel steps, so the known motion is exactly one latent pixel per frame in x and y.
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
    latent = image_latents(frames)
    photo, texture = contexts()
    model = toy_model()
    nc = comfy.node_classes
    with torch.inference_mode():
        inv, _ = nc["VideoEditTokenFlowDDIMInverter"].execute(model, [[photo, {}]], {"samples": latent}, 10,
                                                              "ddim_uniform", 1, 16).result
    return model, inv, latent, [[texture, {}]], [[photo, {}]], nc["VideoEditTokenFlowKeyframeSampler"]


def _edit(setup, **kw):
    model, inv, _, pos, neg, sampler = setup
    args = dict(cfg=1.0, keyframe_interval=4, keyframes="random", seed=0, propagation=True, extended_attention=True,
                pnp_f_t=0.8, pnp_attn_t=0.5, denoise=1.0, frames_per_chunk=16)
    args.update(kw)
    with torch.inference_mode():
        return sampler.execute(model, pos, neg, inv, **args).result[0]["samples"]


@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason=(
    "not reached on the toy model. Measured (10 steps, cfg 1, interval 4, PnP 0.8/0.5) warp error x1e-3, whole "
    "frame / central 15x15 latent px: per-frame 118 / 12, TokenFlow 212 / 39. Not a propagation bug: with the "
    "source branch propagated too (official code) 214 / 40; in that variant, the known motion as an oracle NN "
    "field 530 / 42 (oracle inside, Eq. 5 where content enters: 449 / 41), propagating only the 32x32 layers 214 "
    "(coarse layers are not the cause), interval 1 (all keyframes) 118 = per-frame, interval 8 234. The toy's "
    "per-frame edit is nearly shift-equivariant inside the frame (its flicker sits at the borders), unlike a real "
    "SD model's, and the 1-latent-px/frame pan brings in content no keyframe holds. Needs a real model (SD 2.1 "
    "base) to confirm the paper's 3.0 vs 11.3. Rechecked 2026-12-02: with 3 or 5 px/frame (sub-latent-pixel) "
    "motion per-frame 270 / 290, TokenFlow 370 / 397 (bilinear-warped latent metric); with per-frame sensor noise "
    "0.02 / 0.05 per-frame 155 / 206, TokenFlow 274 / 344; on a 64 px/frame pan (an exact whole-token shift at "
    "every UNet level) extended attention alone and interval 1 equal per-frame (141, 145 vs 140), so the joint "
    "keyframe edit is consistent, while propagating along the true motion is worse (573) because each frame then "
    "takes content it shows but no keyframe holds from the clamped border; a static clip gives TokenFlow = "
    "per-frame within 5e-6."))
def test_tokenflow_is_more_consistent_than_per_frame_editing(setup, capsys):
    _, _, latent, *_ = setup
    assert warp_error(latent) < 1e-10  # the stand-in latent moves exactly with the clip
    tokenflow = _edit(setup)
    per_frame = _edit(setup, propagation=False, extended_attention=False)
    e_tf, e_pf = warp_error(tokenflow), warp_error(per_frame)
    change = float((per_frame - latent).pow(2).mean())
    with capsys.disabled():
        print(f"\n[TokenFlow consistency, sample clip {SIZE}px x {FRAMES}, toy model] warp error: TokenFlow "
              f"{e_tf * 1e3:.2f}e-3, per-frame {e_pf * 1e3:.2f}e-3, ratio {e_pf / e_tf:.2f}x "
              f"(edit strength: mean sq. change {change:.3f}); central 15x15: TokenFlow "
              f"{warp_error(tokenflow, 8) * 1e3:.2f}e-3, per-frame {warp_error(per_frame, 8) * 1e3:.2f}e-3")
    assert change > 10 * e_tf  # a real edit, not the source passed through
    assert e_tf < e_pf

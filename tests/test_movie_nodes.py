"""MoViE nodes on a tiny random InstructPix2Pix: Eq. 1 against three separate UNet passes,
cross-frame attention (identity on one frame, per-group anchors), the zero-initialised student,
one UNet pass per distilled step, adapter save/load bit-identity, and the bad-input errors."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def tiny(comfy):
    from harness.fixtures import build_clip, build_model, tiny_unet_config
    model = build_model(tiny_unet_config(ip2p=True), ip2p=True, seed=3)
    clip = build_clip(tiny=True)
    enc = lambda text: clip.encode_from_tokens_scheduled(clip.tokenize(text))
    return model, enc("make it snowy"), enc("")


def _src(frames=3, seed=0):
    return torch.randn(frames, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def _one_step(guider, latent, sigma, seed=0):
    """One Euler step from sigma to 0: returns process_latent_out(denoised) = the guided x0."""
    import comfy.samplers as cs
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    return guider.sample(noise, latent, cs.sampler_object("euler"),
                         torch.tensor([sigma, 0.0]), seed=seed), noise


def test_two_knob_guider_equals_eq1_from_three_passes(comfy, tiny):
    from videoedit.nodes.movie import guidance
    model, instr, empty = tiny
    node = comfy.node_classes["VideoEditIP2PGuider"]
    src = _src()
    s_i, s_t, sigma = 1.7, 6.5, 3.0
    guider, lat = node.execute(model, instr, empty, {"samples": src}, s_i, s_t).result
    out, noise = _one_step(guider, lat["samples"], sigma)
    # independent: three separate UNet forwards on the EPS parameterisation, Eq. 1 by hand
    m = model.model
    unet, ms = m.diffusion_model, m.model_sampling
    x = noise * sigma  # zero latent + noise * sigma
    x_in = x / (sigma ** 2 + 1) ** 0.5
    t = ms.timestep(torch.tensor([sigma])).expand(3)
    ctx = lambda c: c[0][0].expand(3, -1, -1)
    with torch.no_grad():
        eps = lambda img, c: unet(torch.cat([x_in, img], 1), t, context=ctx(c), transformer_options={})
        e_full, e_img, e_unc = eps(src, instr), eps(src, empty), eps(torch.zeros_like(src), empty)
    eps_ref = guidance.two_knob_guidance(e_unc, e_img, e_full, s_i, s_t)
    ref = m.process_latent_out(x - sigma * eps_ref)
    diff = (out - ref).abs().max().item()
    rel = diff / ref.abs().max().item()
    print(f"Eq. 1 two-knob guider vs 3 separate passes: max abs diff {diff:.3g}, relative {rel:.3g}")
    assert rel <= 1e-5
    # the knobs matter: a different s_T changes the result
    g2, _ = node.execute(model, instr, empty, {"samples": src}, s_i, s_t + 3).result
    assert (_one_step(g2, lat["samples"], sigma)[0] - out).abs().max() > 1e-4


@pytest.mark.parametrize("s_i,s_t", [(1.7, 6.5), (1.0, 6.5), (1.0, 1.0), (1.5, 1.0)])
def test_two_knob_guider_equals_core_dual_cfg_guider_bit_for_bit(comfy, tiny, s_i, s_t):
    """Our TwoKnobGuider against core's Guider_DualCFG ("regular" style; the oracle) wired as the
    DualCFGGuider node would be for Eq. 1, including the passes a knob of 1 skips."""
    from comfy_extras.nodes_custom_sampler import Guider_DualCFG
    from videoedit.nodes.movie.engine_guidance import two_knob_guider, with_image
    model, instr, empty = tiny
    src = _src()
    ours = two_knob_guider(model, instr, empty, src, s_i, s_t)
    core = Guider_DualCFG(model)
    core.set_conds(with_image(instr, src), with_image(empty, src), with_image(empty, None))
    core.set_cfg(s_t, s_i, nested=False)
    a, _ = _one_step(ours, torch.zeros_like(src), 3.0)
    b, _ = _one_step(core, torch.zeros_like(src), 3.0)
    assert torch.equal(a, b)


def _basic(model, cond, latent, sigma):
    from comfy_extras.nodes_custom_sampler import Guider_Basic
    g = Guider_Basic(model)
    g.set_conds(cond)
    return _one_step(g, latent, sigma)[0]


def test_cross_frame_one_frame_self_anchor_is_vanilla(comfy, tiny):
    from videoedit.nodes.movie.engine_guidance import with_image
    model, instr, _ = tiny
    cf = comfy.node_classes["VideoEditCrossFrameAttention"]
    src = _src(1)
    cond = with_image(instr, src)
    for mode in ("middle", "first", "evenly spaced"):
        patched = cf.execute(model, mode, 3).result[0]
        a = _basic(patched, cond, torch.zeros_like(src), 5.0)
        b = _basic(model, cond, torch.zeros_like(src), 5.0)
        assert torch.equal(a, b), mode
    # on several frames it does change the output (frames now see the anchor)
    src = _src(3)
    cond = with_image(instr, src)
    patched = cf.execute(model, "middle", 3).result[0]
    assert (_basic(patched, cond, torch.zeros_like(src), 5.0)
            - _basic(model, cond, torch.zeros_like(src), 5.0)).abs().max() > 1e-4


def test_cross_frame_anchor_per_conditioning_group(comfy, tiny):
    """Under DualCFG's batching (3 conds x F frames in one UNet call), each frame attends to its
    own group's anchor: the batched result equals each conditioning run on its own."""
    from videoedit.nodes.movie.engine_guidance import with_image
    model, instr, empty = tiny
    patched = comfy.node_classes["VideoEditCrossFrameAttention"].execute(model, "middle", 1).result[0]
    node = comfy.node_classes["VideoEditIP2PGuider"]
    src = _src(3, seed=5)
    s_i, s_t, sigma = 1.5, 7.5, 4.0
    seen = []
    p2 = patched.clone()
    p2.set_model_unet_function_wrapper(lambda f, a: (seen.append(a["input"].shape[0]), f(a["input"], a["timestep"], **a["c"]))[1])
    guider, lat = node.execute(p2, instr, empty, {"samples": src}, s_i, s_t).result
    out, _ = _one_step(guider, lat["samples"], sigma)
    assert seen == [9]  # the three conditionings really were batched together
    from videoedit.nodes.movie import guidance
    x0 = {k: _basic(patched, c, torch.zeros_like(src), sigma) for k, c in
          (("full", with_image(instr, src)), ("img", with_image(empty, src)), ("unc", with_image(empty, None)))}
    ref = guidance.two_knob_guidance(x0["unc"], x0["img"], x0["full"], s_i, s_t)  # linear in x0 as in eps
    diff = (out - ref).abs().max().item() / ref.abs().max().item()
    print(f"cross-frame attention, batched groups vs separate: relative diff {diff:.3g}")
    assert diff <= 1e-5


def _fresh_adapter(model, seed=0, perturb=False, kind="lora"):
    from videoedit.nodes.movie import guidance
    from videoedit.nodes.host.model_family import model_family, unet_of
    u = unet_of(model)
    g = torch.Generator().manual_seed(seed)
    ad = guidance.GuidanceAdapter(u.model_channels, u.model_channels * 4, model_family(model), kind=kind, rank=4)
    for n, mod in model.model.named_modules():
        if n.startswith("diffusion_model.") and hasattr(mod, "weight_function") and mod.weight is not None \
                and mod.weight.ndim >= 2:
            ad.add_delta(f"{n}.weight", mod.weight.shape, generator=g)
    if perturb:
        with torch.no_grad():
            for p in ad.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return ad



def test_student_data_survives_clone_and_cross_frame_attention(comfy, tiny):
    """The guidance adapter is attached where ModelPatcher.clone() carries it: after Cross-Frame
    Attention (a clone; the shipped movie_distilled_edit template puts it between Load Guidance
    Adapter and the guider) the guider still warns outside the trained range, and One-Step Distill
    still finds the teacher's adapter. The input MODEL carries nothing."""
    from videoedit.nodes.movie.engine_guidance import guidance_adapter_of, make_student
    from videoedit.nodes.movie.engine_onestep import teacher_adapter
    model, instr, _ = tiny
    ad = _fresh_adapter(model, perturb=True)
    student = make_student(model, ad)
    patched = comfy.node_classes["VideoEditCrossFrameAttention"].execute(student, "middle", 1).result[0]
    assert patched is not student and guidance_adapter_of(patched) is ad
    assert guidance_adapter_of(patched.clone().clone()) is ad
    assert guidance_adapter_of(model) is None
    info = comfy.node_classes["VideoEditCFGDistilledGuider"].execute(patched, instr, {"samples": _src()}, 5.0, 7.5).result[2]
    assert "image_guidance 5 is outside the trained range [1, 3]" in info
    assert teacher_adapter(patched) is ad

def test_zero_initialised_student_equals_teacher_full_conditional(comfy, tiny):
    from videoedit.nodes.movie.engine_guidance import make_student, with_image
    model, instr, _ = tiny
    src = _src()
    for kind in ("lora", "full"):
        student = make_student(model, _fresh_adapter(model, kind=kind))
        g, lat, info = comfy.node_classes["VideoEditCFGDistilledGuider"].execute(
            student, instr, {"samples": src}, 2.0, 9.0).result
        a = _one_step(g, lat["samples"], 6.0)[0]
        b = _basic(model, with_image(instr, src), lat["samples"], 6.0)
        assert torch.equal(a, b), kind


def test_distilled_guider_calls_unet_once_per_step(comfy, tiny):
    import comfy.samplers as cs  # binds cs only: `comfy` stays the fixture
    from videoedit.nodes.movie.engine_guidance import make_student
    model, instr, empty = tiny
    src = _src(2)
    for name, make in (
            ("distilled", lambda m: comfy.node_classes["VideoEditCFGDistilledGuider"].execute(
                m, instr, {"samples": src}, 1.5, 7.5).result[0]),
            ("teacher", lambda m: comfy.node_classes["VideoEditIP2PGuider"].execute(
                m, instr, empty, {"samples": src}, 1.5, 7.5).result[0])):
        base = make_student(model, _fresh_adapter(model, perturb=True)) if name == "distilled" else model
        m = base.clone()
        calls = []
        m.set_model_unet_function_wrapper(
            lambda f, a: (calls.append(a["input"].shape[0]), f(a["input"], a["timestep"], **a["c"]))[1])
        g = make(m)
        sigmas = cs.calculate_sigmas(m.get_model_object("model_sampling"), "normal", 5)
        g.sample(torch.randn(src.shape, generator=torch.Generator().manual_seed(0)), torch.zeros_like(src),
                 cs.sampler_object("euler"), sigmas, seed=0)
        print(f"{name}: {len(calls)} UNet calls for 5 steps, batch sizes {calls}")
        assert len(calls) == 5
        assert calls == [2] * 5 if name == "distilled" else calls == [6] * 5  # 1 vs 3 passes of 2 frames


def test_knobs_change_distilled_output_and_out_of_range_warns(comfy, tiny):
    from videoedit.nodes.movie.engine_guidance import make_student
    model, instr, _ = tiny
    student = make_student(model, _fresh_adapter(model, perturb=True))
    node = comfy.node_classes["VideoEditCFGDistilledGuider"]
    src = _src()
    outs = []
    for s_i, s_t in ((1.5, 7.5), (2.5, 7.5), (1.5, 12.0)):
        g, lat, info = node.execute(student, instr, {"samples": src}, s_i, s_t).result
        assert "warning" not in info
        outs.append(_one_step(g, lat["samples"], 6.0)[0])
    assert (outs[0] - outs[1]).abs().max() > 1e-5 and (outs[0] - outs[2]).abs().max() > 1e-5
    info = node.execute(student, instr, {"samples": src}, 5.0, 20.0).result[2]
    assert "image_guidance 5 is outside the trained range [1, 3]" in info
    assert "text_guidance 20 is outside the trained range [2, 14]" in info


def test_adapter_save_reload_bit_identical(comfy, tiny):
    import folder_paths
    from videoedit.nodes.movie.engine_guidance import ADAPTER_FOLDER, make_student, save_guidance_adapter
    model, instr, _ = tiny
    ad = _fresh_adapter(model, seed=7, perturb=True)
    path = f"{folder_paths.get_folder_paths(ADAPTER_FOLDER)[0]}/test_bitident.safetensors"
    save_guidance_adapter(ad, path)
    src = _src()
    node = comfy.node_classes["VideoEditCFGDistilledGuider"]
    g1, lat, _ = node.execute(make_student(model, ad), instr, {"samples": src}, 1.8, 8.0).result
    loaded, info = comfy.node_classes["VideoEditLoadGuidanceAdapter"].execute(model, "test_bitident.safetensors").result
    assert "lora" in info
    g2, _, _ = node.execute(loaded, instr, {"samples": src}, 1.8, 8.0).result
    assert torch.equal(_one_step(g1, lat["samples"], 6.0)[0], _one_step(g2, lat["samples"], 6.0)[0])


def test_bad_inputs_are_named(comfy, tiny):
    from harness.fixtures import build_model, tiny_unet_config
    from videoedit.nodes.movie.engine_guidance import make_student
    model, instr, empty = tiny
    sd_model = build_model(tiny_unet_config(), seed=4)
    with pytest.raises(ValueError, match=r"model: not an InstructPix2Pix model.*4 input channels"):
        comfy.node_classes["VideoEditIP2PGuider"].execute(sd_model, instr, empty, {"samples": _src()}, 1.5, 7.5)
    other = build_model(tiny_unet_config(ip2p=True, model_channels=64), ip2p=True, seed=5)
    ad = _fresh_adapter(other)
    with pytest.raises(ValueError, match=r"trained for another model family.*model_channels=64.*model_channels=32"):
        make_student(model, ad)
    with pytest.raises(ValueError, match="not a guidance-distilled student"):
        comfy.node_classes["VideoEditCFGDistilledGuider"].execute(model, instr, {"samples": _src()}, 1.5, 7.5)

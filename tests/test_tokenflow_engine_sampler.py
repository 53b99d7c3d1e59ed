"""TokenFlow Keyframe Sampler on a tiny random-weight SD1.5-shaped model."""
from __future__ import annotations

import dataclasses

import pytest
import torch

UNET_SHARE = 0.05


def _gaussian_wrapped(model, share=UNET_SHARE, seed=5):
    """A clone whose denoiser is the exact one of per-channel Gaussian data plus a share of the
    UNet's eps (well-posed for inversion, the UNet still runs on every call; see
    test_tokenflow_nodes). Per-channel statistics keep it shift-equivariant."""
    g = torch.Generator().manual_seed(seed)
    mu, var = torch.randn(4, 1, 1, generator=g) * 0.5, torch.rand(4, 1, 1, generator=g) + 0.5
    model = model.clone()

    def denoiser(apply, args):
        x, sigma = args["input"], args["timestep"].view(-1, 1, 1, 1)
        unet_eps = (x - apply(x, args["timestep"], **args["c"])) / sigma
        return mu + var / (var + sigma ** 2) * (x - mu) - sigma * share * unet_eps
    model.set_model_unet_function_wrapper(denoiser)
    return model


@pytest.fixture(scope="module")
def tiny(tiny_sd15):
    base, conds = tiny_sd15
    return base, _gaussian_wrapped(base), conds


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.inference_mode():  # as ComfyUI's executor runs nodes
        yield


@pytest.fixture(scope="module")
def nodes(comfy):
    nc = comfy.node_classes
    return nc["VideoEditTokenFlowDDIMInverter"], nc["VideoEditTokenFlowKeyframeSampler"]


def _latent(n=5, seed=0, size=8):
    return {"samples": torch.randn(n, 4, size, size, generator=torch.Generator().manual_seed(seed))}


DEFAULTS = dict(cfg=3.0, keyframe_interval=2, keyframes="random", seed=0, propagation=True,
                extended_attention=True, pnp_f_t=0.8, pnp_attn_t=0.5, denoise=1.0, frames_per_chunk=16)
NEUTRAL = dict(DEFAULTS, propagation=False, extended_attention=False, pnp_f_t=0.0, pnp_attn_t=0.0)


def _sample(node, model, conds, inv, **kw):
    args = dict(DEFAULTS, **kw)
    extra = {k: args.pop(k) for k in ("sigmas", "sampler", "start_latent") if k in args}
    return node.execute(model, conds["edit"], conds["neg"], inv, **args, **extra).result[0]["samples"]


def _core_ddim(model, positive, negative, cfg, latent, sigmas):
    import comfy.samplers
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider.sample(torch.zeros_like(latent), latent, comfy.samplers.sampler_object("ddim"), sigmas,
                         disable_pbar=True, seed=0)


@pytest.fixture(scope="module")
def inverted(tiny, nodes):
    _, model, conds = tiny
    inverter, _ = nodes
    inv, noised = inverter.execute(model, conds["source"], _latent(), 6, "ddim_uniform", 1, 16).result
    return inv, noised


def test_neutral_sampler_reproduces_core_ddim_exactly(tiny, nodes, inverted, capsys):
    _, model, conds = tiny
    _, sampler = nodes
    inv, noised = inverted
    core = _core_ddim(model, conds["edit"], conds["neg"], 3.0, noised["samples"], inv.sigmas)
    ours = _sample(sampler, model, conds, inv, **NEUTRAL)
    diff_whole = float((ours - core).abs().max())
    ours_chunked = _sample(sampler, model, conds, inv, **dict(NEUTRAL, frames_per_chunk=2))
    diff_chunked = float((ours_chunked - core).abs().max())
    with capsys.disabled():
        print(f"\n[Keyframe Sampler neutral vs core ddim] max|diff| whole batch {diff_whole:.3e}, "
              f"chunks of 2 {diff_chunked:.3e} (|x| max {float(core.abs().max()):.2f})")
    assert diff_whole == 0.0
    # chunking changes only the UNet's batch size (float summation order in its kernels)
    assert diff_chunked < 1e-4 * float(core.abs().max())
    # the start latent given explicitly is the same as the inversion's own
    ours_latent = _sample(sampler, model, conds, inv, **dict(NEUTRAL, start_latent=noised))
    assert torch.equal(ours_latent, ours)


def test_patches_are_transparent_when_they_do_not_change_anything(tiny, nodes, inverted):
    """Every frame its own keyframe, plain attention in the keyframe pass: propagation copies
    each frame's own tokens (the NN field of identical features is the identity), so the result
    equals plain sampling up to float noise; the patched pass runs the source pass as well."""
    _, model, conds = tiny
    _, sampler = nodes
    inv, _ = inverted
    plain = _sample(sampler, model, conds, inv, **NEUTRAL)
    prop = _sample(sampler, model, conds, inv, **dict(NEUTRAL, propagation=True, keyframe_interval=1))
    torch.testing.assert_close(prop, plain, atol=1e-4, rtol=1e-4)


def test_tokenflow_changes_the_result_and_is_chunk_invariant(tiny, nodes, inverted):
    _, model, conds = tiny
    _, sampler = nodes
    inv, _ = inverted
    plain = _sample(sampler, model, conds, inv, **NEUTRAL)
    whole = _sample(sampler, model, conds, inv)
    chunked = _sample(sampler, model, conds, inv, frames_per_chunk=2)
    assert float((whole - plain).abs().max()) > 1e-3
    # keyframes are shared across chunk borders: chunking changes nothing but float order
    torch.testing.assert_close(chunked, whole, atol=1e-4, rtol=1e-4)
    # same seed, same keyframes; another seed draws other keyframes
    again = _sample(sampler, model, conds, inv)
    assert torch.equal(again, whole)
    other = _sample(sampler, model, conds, inv, seed=7)
    assert not torch.equal(other, whole)


def test_keyframe_tokens_on_disk_give_the_same_edit(tiny, nodes, inverted, tmp_path, monkeypatch):
    """A clip longer than one chunk offloads the step's keyframe tokens (keyframe_store auto ->
    a temp file on CPU); the edit is bit-identical to keeping them in memory, and the temp file
    is gone (unlinked at creation) when the node returns."""
    from harness.pack import pack_module
    _, model, conds = tiny
    _, sampler = nodes
    inv, _ = inverted
    mod = pack_module(sampler, "tokenflow.engine_sampler")  # the running pack's
    monkeypatch.setattr(mod.folder_paths, "get_temp_directory", lambda: str(tmp_path))
    store = pack_module(sampler, "tokenflow.token_store")
    places, init = [], store.TokenStore.__init__
    monkeypatch.setattr(store.TokenStore, "__init__", lambda self, place="device", folder=None: (
        places.append(place), init(self, place, folder))[-1])
    in_memory = _sample(sampler, model, conds, inv, frames_per_chunk=2, keyframe_store="memory")
    auto = _sample(sampler, model, conds, inv, frames_per_chunk=2)
    on_disk = _sample(sampler, model, conds, inv, frames_per_chunk=2, keyframe_store="disk")
    assert places == ["device", "disk", "disk"]
    assert torch.equal(auto, in_memory) and torch.equal(on_disk, in_memory)
    assert list(tmp_path.iterdir()) == []


def test_keyframe_pass_one_group_at_a_time_is_the_same_computation(tiny, nodes, inverted, monkeypatch):
    """The keyframe pass runs cond and uncond as separate UNet calls (half the peak on long clips):
    extended attention never joins the two groups, so the edit equals the joint batch's."""
    import functools
    from harness.pack import pack_module
    _, model, conds = tiny
    _, sampler = nodes
    inv, _ = inverted
    mod = pack_module(sampler, "tokenflow.engine_sampler")  # the running pack's
    patches = pack_module(sampler, "tokenflow.engine_patches")
    calls = []
    one_group = patches._one_group
    monkeypatch.setattr(patches, "_one_group", lambda *a: calls.append(a[1]) or one_group(*a))
    split = _sample(sampler, model, conds, inv)
    assert calls and set(calls) == {0, 1}  # both groups, one call each, at every step
    monkeypatch.setattr(mod, "TokenFlowState", functools.partial(mod.TokenFlowState, split_groups=False))
    joint = _sample(sampler, model, conds, inv)
    print(f"[keyframe pass] one group per call vs joint batch: max|diff| {float((split - joint).abs().max()):.3e}")
    torch.testing.assert_close(split, joint, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pnp", [True, False])
def test_propagated_frames_skip_their_qkv_projections_for_the_same_edit(tiny, nodes, inverted, monkeypatch, pnp):
    """In the edit pass of propagated frames every self-attention output is replaced by the
    keyframes' tokens, so q/k/v are projected for one token per frame only (``qkv_shortcut``):
    the edit is bit-identical to projecting every token, with and without PnP injection, and the
    step costs fewer FLOPs (if the shortcut did not fire, the counts would be equal)."""
    import functools
    from harness.measure import count_flops
    from harness.pack import pack_module
    _, model, conds = tiny
    _, sampler = nodes
    inv, _ = inverted
    kw = {} if pnp else dict(pnp_f_t=0.0, pnp_attn_t=0.0)
    flops_short, short = count_flops(lambda: _sample(sampler, model, conds, inv, **kw))
    mod = pack_module(sampler, "tokenflow.engine_sampler")
    monkeypatch.setattr(mod, "TokenFlowState", functools.partial(mod.TokenFlowState, qkv_shortcut=False))
    flops_full, full = count_flops(lambda: _sample(sampler, model, conds, inv, **kw))
    print(f"[propagated q/k/v shortcut, pnp {pnp}] max|diff| {float((short - full).abs().max()):.3e}, "
          f"FLOPs {flops_short / flops_full:.3f}x")
    assert torch.equal(short, full)
    assert flops_short < 0.99 * flops_full  # 0.982x here (tiny model, attention a small share of it)


def test_pnp_injection_makes_the_structure_prompt_independent(tiny, nodes):
    """Plug-and-Play injects the *source's* conv features and q/k, which do not depend on the
    edit prompt: two different prompts give closer results with injection than without (a
    larger UNet share here, so the UNet's features matter)."""
    base, _, conds = tiny
    inverter, sampler = nodes
    model = _gaussian_wrapped(base, share=0.5)
    inv, _ = inverter.execute(model, conds["source"], _latent(), 6, "ddim_uniform", 1, 16).result
    other = dict(conds, edit=conds["neg"], neg=conds["edit"])

    def gap(**kw):
        a = _sample(sampler, model, conds, inv, cfg=4.0, **kw)
        b = _sample(sampler, model, other, inv, cfg=4.0, **kw)
        return float((a - b).norm())
    without, with_pnp = gap(pnp_f_t=0.0, pnp_attn_t=0.0), gap(pnp_f_t=1.0, pnp_attn_t=1.0)
    conv_only = gap(pnp_f_t=1.0, pnp_attn_t=0.0)
    print(f"\n[PnP prompt gap] without {without:.3f} conv+attn {with_pnp:.3f} conv only {conv_only:.3f}")
    assert with_pnp < 0.9 * without and conv_only < without


def test_input_model_untouched_and_other_branch_vanilla(tiny, nodes, inverted):
    base, model, conds = tiny
    _, sampler = nodes
    inv, noised = inverted
    options = {k: (dict(v) if isinstance(v, dict) else v) for k, v in model.model_options.items()}
    objects = dict(model.object_patches)
    before = _core_ddim(model, conds["edit"], conds["neg"], 3.0, noised["samples"], inv.sigmas)
    _sample(sampler, model, conds, inv)
    after = _core_ddim(model, conds["edit"], conds["neg"], 3.0, noised["samples"], inv.sigmas)
    assert torch.equal(before, after)
    assert model.model_options.keys() == options.keys()
    assert model.model_options["transformer_options"] == options["transformer_options"]
    assert model.object_patches == objects
    dm = model.get_model_object("diffusion_model")
    assert type(dm.output_blocks[4][0].out_layers) is torch.nn.Sequential


def test_sdedit_starts_from_partial_noise(tiny, nodes, inverted):
    _, model, conds = tiny
    _, sampler = nodes
    inv, _ = inverted
    lf = model.get_model_object("latent_format")
    source = lf.process_out(inv.trajectory[-1])
    full = _sample(sampler, model, conds, inv, denoise=1.0, pnp_f_t=0.0, pnp_attn_t=0.0)
    light = _sample(sampler, model, conds, inv, denoise=0.34, pnp_f_t=0.0, pnp_attn_t=0.0)
    assert float((light - source).norm()) < float((full - source).norm())


def test_one_frame_and_interval_larger_than_clip(tiny, nodes):
    _, model, conds = tiny
    inverter, sampler = nodes
    inv1, _ = inverter.execute(model, conds["source"], _latent(n=1), 3, "normal", 0, 4).result
    out = _sample(sampler, model, conds, inv1)
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()
    inv3, _ = inverter.execute(model, conds["source"], _latent(n=3), 3, "normal", 0, 4).result
    out = _sample(sampler, model, conds, inv3, keyframe_interval=50, frames_per_chunk=1)
    assert out.shape == (3, 4, 8, 8) and torch.isfinite(out).all()


def test_odd_sizes_and_zero_frames(tiny, nodes):
    """Latents of odd size (9x7: 72x56 pixels) invert and edit at their size, with propagation,
    extended attention and PnP; a latent without frames is refused at the inverter."""
    _, model, conds = tiny
    inverter, sampler = nodes
    odd = {"samples": torch.randn(3, 4, 9, 7, generator=torch.Generator().manual_seed(2))}
    inv, noised = inverter.execute(model, conds["source"], odd, 2, "normal", 0, 16).result
    assert inv.trajectory.shape == (3, 3, 4, 9, 7) and noised["samples"].shape == (3, 4, 9, 7)
    out = _sample(sampler, model, conds, inv, frames_per_chunk=2)
    assert out.shape == (3, 4, 9, 7) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="^latent: the clip has zero frames; connect frames of a video"):  # checked_node
        inverter.execute(model, conds["source"], {"samples": torch.zeros(0, 4, 8, 8)}, 2, "normal", 0, 16)


def test_mismatches_are_refused_naming_what_differs(comfy, tiny, nodes, inverted):
    import comfy.samplers
    from harness.fixtures import build_model, tiny_unet_config
    base, model, conds = tiny
    _, sampler = nodes
    inv, noised = inverted
    with pytest.raises(ValueError, match=r"inversion: it was made with a different model than the one connected here "
                                         r"\(weights: another checkpoint / UNet file .*\); connect the model"):
        _sample(sampler, _gaussian_wrapped(build_model(tiny_unet_config(), seed=4)), conds, inv)
    # the same weights in another load (as after /free or a restart) are the same model
    _sample(sampler, _gaussian_wrapped(build_model(tiny_unet_config(), seed=3)), conds, inv, **NEUTRAL)
    with pytest.raises(ValueError, match="inversion: it carries no model identity.*invert the video again"):
        _sample(sampler, model, conds, dataclasses.replace(inv, model_id="3f2a9c0d1e2b4a5f"))
    with pytest.raises(ValueError, match="inversion: its latents have 3 channels, this model works on 4"):
        _sample(sampler, model, conds, dataclasses.replace(inv, trajectory=inv.trajectory[:, :, :3]))
    other = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", 5)
    with pytest.raises(ValueError, match=f"sigmas: 5 steps.*made with {inv.steps} steps"):
        _sample(sampler, model, conds, inv, sigmas=other)
    other = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "karras", inv.steps)
    with pytest.raises(ValueError, match="sigmas: they differ"):
        _sample(sampler, model, conds, inv, sigmas=other)
    _sample(sampler, model, conds, inv, sigmas=inv.sigmas.clone(), **{k: v for k, v in NEUTRAL.items()
                                                                      if k != "frames_per_chunk"})
    with pytest.raises(ValueError, match="start_latent: 3 frames.*holds 5"):
        _sample(sampler, model, conds, inv, start_latent=_latent(n=3))
    with pytest.raises(ValueError, match="start_latent: size"):
        _sample(sampler, model, conds, inv, start_latent=_latent(size=16))
    for name in ("euler_ancestral", "dpmpp_sde", "dpmpp_2m"):
        with pytest.raises(ValueError, match="sampler: .*not supported"):
            _sample(sampler, model, conds, inv, sampler=comfy.samplers.sampler_object(name))
    for name in ("ddim", "euler"):
        _sample(sampler, model, conds, inv, sampler=comfy.samplers.sampler_object(name), **NEUTRAL)
    with pytest.raises(ValueError, match="positive: TokenFlow needs exactly one"):
        sampler.execute(model, conds["edit"] + conds["source"], conds["neg"], inv, **DEFAULTS)


def test_instructpix2pix_image_conditioning_follows_the_chunks(comfy, tiny, nodes):
    """Per-frame image conditioning (InstructPix2PixConditioning's concat latent, one per frame)
    must reach each chunk's own frames, in the inverter and in the sampler: chunked results
    equal whole-batch ones, and the whole-batch neutral sampler equals core DDIM exactly."""
    from harness.fixtures import build_model, tiny_unet_config
    _, _, conds = tiny
    inverter, sampler = nodes
    model = _gaussian_wrapped(build_model(tiny_unet_config(ip2p=True), ip2p=True, seed=6), share=0.3)
    images = _latent(n=5, seed=9)["samples"]

    def with_image(cond):
        return [[c, dict(extra, concat_latent_image=images)] for c, extra in cond]
    ip = {k: with_image(v) for k, v in conds.items()}
    inv_whole, noised = inverter.execute(model, ip["source"], _latent(), 3, "normal", 1, 16).result
    inv_chunk, _ = inverter.execute(model, ip["source"], _latent(), 3, "normal", 1, 2).result
    torch.testing.assert_close(inv_chunk.trajectory, inv_whole.trajectory, atol=1e-5, rtol=1e-5)
    core = _core_ddim(model, ip["edit"], ip["neg"], 3.0, noised["samples"], inv_whole.sigmas)
    assert torch.equal(_sample(sampler, model, ip, inv_whole, **NEUTRAL), core)
    torch.testing.assert_close(_sample(sampler, model, ip, inv_whole, **dict(NEUTRAL, frames_per_chunk=2)), core,
                               atol=1e-4, rtol=1e-4)
    whole = _sample(sampler, model, ip, inv_whole)
    torch.testing.assert_close(_sample(sampler, model, ip, inv_whole, frames_per_chunk=2), whole,
                               atol=1e-4, rtol=1e-4)


def test_cancel_stops_within_one_chunk(tiny, nodes, inverted):
    """ComfyUI's interrupt (the Cancel button) is honoured at the next chunk, not after the run."""
    import comfy.model_management as mm
    import comfy.utils
    _, model, conds = tiny
    _, sampler = nodes
    inv, _ = inverted
    seen = []

    def hook(value, total, preview, node_id=None):
        seen.append((value, total))
        if value == 5:  # after the keyframe pass (3 keyframes) and the first chunk (2 frames)
            mm.interrupt_current_processing(True)
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _sample(sampler, model, conds, inv, frames_per_chunk=2)
    finally:
        mm.interrupt_current_processing(False)
        comfy.utils.set_progress_bar_global_hook(None)
    total = seen[0][1]
    assert total == inv.steps * (3 + 5)  # frame passes: 3 keyframes and 5 frames (chunks of 2), per step
    assert [v for v, _ in seen] == [3, 5]


def test_keyframe_window_covering_the_clip_is_the_papers_edit_and_a_narrow_one_is_not(tiny, nodes):
    """keyframe_attention: auto on a short clip and a window that reaches every keyframe give the
    all-keyframes edit bit for bit; a window of 1 frame around keyframes 3 frames apart leaves each
    keyframe attending to itself only, i.e. plain self-attention in the keyframe pass."""
    _, model, conds = tiny
    inverter, sampler = nodes
    inv, _ = inverter.execute(model, conds["source"], _latent(), 2, "ddim_uniform", 0, 16).result  # step 0: PnP
    paper = _sample(sampler, model, conds, inv, keyframe_attention="all")  # 5 frames, interval 2: 3 keyframes
    assert torch.equal(_sample(sampler, model, conds, inv), paper)  # auto, window 48: all keyframes
    wide = _sample(sampler, model, conds, inv, keyframe_attention="window", keyframe_window=4, window_anchor=False)
    assert torch.equal(wide, paper)
    narrow = _sample(sampler, model, conds, inv, keyframe_attention="window", keyframe_window=1, window_anchor=False)
    assert float((narrow - paper).abs().max()) > 1e-4
    # auto switches by length: 5 frames > 2 * 1 + 1, so window 1 is applied
    assert torch.equal(_sample(sampler, model, conds, inv, keyframe_window=1, window_anchor=False), narrow)
    even = dict(keyframes="even", keyframe_interval=3)  # keyframes 1 and 4
    self_only = _sample(sampler, model, conds, inv, keyframe_attention="window", keyframe_window=1,
                        window_anchor=False, **even)
    plain = _sample(sampler, model, conds, inv, extended_attention=False, **even)
    torch.testing.assert_close(self_only, plain, atol=1e-5, rtol=1e-5)
    # with the anchor the second keyframe also attends to the first (the first only to itself)
    anchored = _sample(sampler, model, conds, inv, keyframe_attention="window", keyframe_window=1, **even)
    assert float((anchored - self_only).abs().max()) > 1e-4
    with pytest.raises(ValueError, match="keyframe_attention"):
        _sample(sampler, model, conds, inv, keyframe_attention="nearest")

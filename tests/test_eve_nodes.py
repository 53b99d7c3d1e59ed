"""EVE nodes on tiny random models: stacker vs core per-frame ControlNet sampling, frame
mixing, anchoring, sliding windows, input MODEL untouched, bad inputs."""
from __future__ import annotations

import os

import pytest
import torch

F, SIZE = 6, 32  # frames, pixels (latent 4x4)


@pytest.fixture(scope="module")
def parts(comfy):
    from harness.fixtures import build_clip, build_model, tiny_controlnet, tiny_unet_config
    nc = comfy.node_classes
    model = build_model(tiny_unet_config(), seed=3)
    clip = build_clip(tiny=True)
    enc = nc["CLIPTextEncode"]()
    pos = enc.encode(clip, "make it winter")[0]
    neg = enc.encode(clip, "")[0]
    return dict(model=model, pos=pos, neg=neg, control=tiny_controlnet(tiny_unet_config()))


def _tiny_ad_file(comfy, name="mm_tiny_random.safetensors", seed=31):
    """An AnimateDiff-format motion module for the tiny UNet, in models/animatediff_models."""
    import folder_paths
    from safetensors.torch import save_file
    from harness.fixtures import _motion_module_sd
    from videoedit.nodes.eve.temporal_adapter import unet_layout
    folder = folder_paths.get_folder_paths("animatediff_models")[0]
    os.makedirs(folder, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for prefix, pl in unet_layout(32, (1, 2, 2), 2, temporal_conv=False).items():
        sd.update(_motion_module_sd(pl.channels, prefix, gen, 32))
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(folder, name))
    return name


def _images(n=F, seed=0):
    return torch.rand(n, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(seed))


def _latent(n=F, seed=1):
    return {"samples": torch.randn(n, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(seed))}


def _sample(comfy, model, pos, neg, latent, denoise=1.0):
    return comfy.node_classes["KSampler"]().sample(model, 7, 2, 3.0, "euler", "normal", pos, neg, latent,
                                                   denoise=denoise)[0]["samples"]


def _core(comfy, parts, images, latent, denoise=1.0):
    pos, neg = comfy.node_classes["ControlNetApplyAdvanced"]().apply_controlnet(
        parts["pos"], parts["neg"], parts["control"], images, 1.0, 0.0, 1.0)
    return _sample(comfy, parts["model"], pos, neg, latent, denoise)


def _stack(comfy, parts, adapter, images, length=8, overlap=4, anchor=True, schedule="backbone default", model=None):
    node = comfy.node_classes["VideoEditEVEAdapterStacker"]
    return node.execute(model or parts["model"], adapter, parts["control"], images, parts["pos"], parts["neg"], 1.0,
                        length, overlap, anchor, schedule, "none", 1.0).result


def _fresh(comfy, parts, conv=True):
    return comfy.node_classes["VideoEditEVEInitVideoAdapter"].execute(parts["model"], conv, 32, 0).result[0]


def _loaded(comfy, name=None):
    return comfy.node_classes["VideoEditEVELoadVideoAdapter"].execute(name or _tiny_ad_file(comfy)).result[0]


def _run(comfy, stacked, latent, denoise=1.0):
    m, pos, neg = stacked
    return _sample(comfy, m, pos, neg, latent, denoise)


def test_zero_adapter_reproduces_core_per_frame_controlnet(comfy, parts):
    images, latent = _images(), _latent()
    core = _core(comfy, parts, images, latent)
    ours = _run(comfy, _stack(comfy, parts, _fresh(comfy, parts), images), latent)
    assert torch.equal(ours, core)
    # in windows (4 frames, overlap 2, anchor prepended): each window gets its own frames' hints
    win = _run(comfy, _stack(comfy, parts, _fresh(comfy, parts), images, length=4, overlap=2), latent)
    diff = (win - core).abs().max().item()
    print(f"zero adapter in windows vs core: max abs diff {diff:.3g}")
    # windows run the UNet on 5-frame batches instead of 8: CPU GEMM blocking (and the CPU's vector
    # path) then rounds differently, and 2 steps at cfg 3 on a random model whose outputs reach ~240
    # amplify it (measured 1.8e-5 relative on one machine, below 1e-5 on another). A wrong hint per
    # window would differ by O(1) of the output scale, far above this bound.
    assert diff <= 1e-4 * core.abs().max().item()


def test_loaded_module_changes_output_and_mixes_frames(comfy, parts):
    adapter = _loaded(comfy)
    images, latent = _images(), _latent()
    bumped = {"samples": latent["samples"].clone()}
    bumped["samples"][3] += torch.randn(4, 4, 4, generator=torch.Generator().manual_seed(5))
    core_a, core_b = _core(comfy, parts, images, latent, 0.7), _core(comfy, parts, images, bumped, 0.7)
    stacked = _stack(comfy, parts, adapter, images, length=0, anchor=False)
    ours_a, ours_b = _run(comfy, stacked, latent, 0.7), _run(comfy, stacked, bumped, 0.7)
    others = [0, 1, 2, 4, 5]
    assert torch.equal(core_a[others], core_b[others])  # without the adapter: frames independent
    assert (ours_a - core_a).abs().max() > 1e-3  # the module changes the output
    for f in others:  # and carries frame 3's change to every other frame
        assert (ours_a[f] - ours_b[f]).abs().max() > 1e-5, f


def test_anchor_keeps_frame0_on_image_edit_trajectory(comfy, parts):
    images, latent = _images(), _latent()
    core = _core(comfy, parts, images, latent)
    ours = _run(comfy, _stack(comfy, parts, _loaded(comfy), images, length=0, anchor=True), latent)
    scale = core.abs().max().item()
    assert (ours[0] - core[0]).abs().max().item() <= 1e-6 * scale
    assert (ours[1:] - core[1:]).abs().max().item() > 1e-3 * scale


def test_sliding_windows_long_clip_and_single_window(comfy, parts):
    adapter = _loaded(comfy)
    images, latent = _images(10), _latent(10)
    full = _run(comfy, _stack(comfy, parts, adapter, images, length=0), latent)
    win = _run(comfy, _stack(comfy, parts, adapter, images, length=4, overlap=2), latent)
    assert win.shape == full.shape and torch.isfinite(win).all()
    scale = full.abs().max().item()
    # anchor: frame 0 is on the image-edit path in both (up to batch-size rounding)
    assert (win[0] - full[0]).abs().max().item() <= 1e-5 * scale
    assert (win[1:] - full[1:]).abs().max().item() > 1e-3 * scale  # windows limit what frames see
    # a clip of exactly one window: same as no windowing; a window longer than the clip too
    one_img, one_lat = _images(4), _latent(4)
    plain = _run(comfy, _stack(comfy, parts, adapter, one_img, length=0), one_lat)
    exact = _run(comfy, _stack(comfy, parts, adapter, one_img, length=4, overlap=2), one_lat)
    longer = _run(comfy, _stack(comfy, parts, adapter, one_img, length=16, overlap=4), one_lat)
    assert torch.equal(plain, exact) and torch.equal(plain, longer)


def test_windows_blend_every_frame_once(comfy, parts, monkeypatch):
    from harness.pack import pack_module
    nodes_eve = pack_module(comfy.node_classes["VideoEditEVEAdapterStacker"], "eve.engine_video_adapter")  # the loaded pack
    seen = []
    orig = nodes_eve.EVEWindows.combine_context_window_results

    def spy(self, x_in, sub_conds_out, sub_conds, window, window_idx, *rest):
        seen.append((window_idx, list(window.index_list), list(self.plan(x_in.shape[0])[window_idx].weights)))
        return orig(self, x_in, sub_conds_out, sub_conds, window, window_idx, *rest)

    monkeypatch.setattr(nodes_eve.EVEWindows, "combine_context_window_results", spy)
    _run(comfy, _stack(comfy, parts, _loaded(comfy), _images(10), length=4, overlap=2), _latent(10))
    assert [s[0] for s in seen] == [0, 1, 2, 3] * 2  # 2 steps, 4 windows each (starts 0, 2, 4, 6)
    step = seen[:4]
    assert [fr for _, fr, _ in step] == [[0, 1, 2, 3], [0, 2, 3, 4, 5], [0, 4, 5, 6, 7], [0, 6, 7, 8, 9]]
    sums = [0.0] * 10
    for _, frames, weights in step:
        for f, w in zip(frames, weights):
            sums[f] += w
        assert len(frames) <= 5
    assert all(abs(s - 1) < 1e-9 for s in sums)
    overlapped = [f for f in range(10) if sum(f in fr for _, fr, _ in step if fr[0] != 0 or f != 0) > 1]
    assert overlapped  # some frames are blended from two windows


def test_stacker_leaves_input_model_untouched(comfy, parts):
    images, latent = _images(), _latent()
    before = _core(comfy, parts, images, latent)
    patches_before = dict(parts["model"].object_patches)
    stacked = _stack(comfy, parts, _loaded(comfy), images, length=4, overlap=2)
    _run(comfy, stacked, latent)  # the stacked model is loaded and used
    after = _core(comfy, parts, images, latent)  # another branch uses the input MODEL
    assert torch.equal(before, after)
    assert parts["model"].object_patches == patches_before
    assert "context_handler" not in parts["model"].model_options


def test_zero_terminal_snr_uses_core_model_sampling(comfy, parts):
    m = _stack(comfy, parts, _fresh(comfy, parts), _images(), schedule="zero-terminal SNR (eps)")[0]
    ms = m.get_model_object("model_sampling")
    base = parts["model"].get_model_object("model_sampling")
    assert ms.zsnr and not getattr(base, "zsnr", False)
    assert ms.sigma_max > 100 * base.sigma_max


def test_bad_inputs_name_the_problem(comfy, parts):
    import folder_paths
    from harness.fixtures import tiny_controlnet, tiny_unet_config
    wrong_cn = dict(parts, control=tiny_controlnet(tiny_unet_config(model_channels=64)))
    with pytest.raises(ValueError, match="control_net: .*another backbone.*model_channels 64 vs backbone 32"):
        _stack(comfy, wrong_cn, _fresh(comfy, parts), _images())
    folder = folder_paths.get_folder_paths("animatediff_models")[0]
    os.makedirs(folder, exist_ok=True)  # when this test runs alone
    with open(os.path.join(folder, "corrupt_mm.safetensors"), "wb") as f:
        f.write(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="corrupt_mm.safetensors"):
        _loaded(comfy, "corrupt_mm.safetensors")
    from harness.fixtures import _motion_module_sd
    from safetensors.torch import save_file
    sd = _motion_module_sd(320, "down_blocks.0.motion_modules.0", torch.Generator().manual_seed(0), 32)
    save_file(sd, os.path.join(folder, "mm_other_family.safetensors"))
    with pytest.raises(ValueError, match="mm_other_family.safetensors.*320 channels"):
        _stack(comfy, parts, _loaded(comfy, "mm_other_family.safetensors"), _images())
    with pytest.raises(ValueError, match="context_length"):
        _stack(comfy, parts, _loaded(comfy), _images(40), length=32, overlap=4)
    # a motion module picked as the LoRA: core's loader applies none of it (the output equals no
    # LoRA, one log line per key); the stacker names the file and the fraction
    import shutil
    loras = folder_paths.get_folder_paths("loras")[0]
    os.makedirs(loras, exist_ok=True)
    shutil.copy(os.path.join(folder, _tiny_ad_file(comfy)), os.path.join(loras, "mm_as_lora.safetensors"))
    node = comfy.node_classes["VideoEditEVEAdapterStacker"]
    with pytest.raises(ValueError, match=r"^lora_name: only 0 of the \d+ UNet keys of 'mm_as_lora\.safetensors' "
                                         r"\(0%\) apply to this model.*motion module belongs in video_adapter"):
        node.execute(parts["model"], _fresh(comfy, parts), parts["control"], _images(), parts["pos"], parts["neg"],
                     1.0, 0, 4, True, "backbone default", "mm_as_lora.safetensors", 1.0)


def test_control_net_on_the_conditionings_equals_core_controlnet_apply_advanced(comfy, parts):
    """The stacker's ControlNet step against core ControlNetApplyAdvanced (the oracle): the same
    conditionings, hints, strengths and chaining; the sampled output is compared bit for bit in
    test_zero_adapter_reproduces_core_per_frame_controlnet."""
    from videoedit.nodes.eve.engine_video_adapter import apply_control_net
    core_apply = comfy.node_classes["ControlNetApplyAdvanced"]().apply_controlnet
    images = _images()
    first = core_apply(parts["pos"], parts["neg"], parts["control"], _images(seed=3), 0.5, 0.0, 1.0)
    for pos, neg in ((parts["pos"], parts["neg"]), first):  # without, and on top of, a previous ControlNet
        ours = apply_control_net(pos, neg, parts["control"], images, 0.8)
        core = core_apply(pos, neg, parts["control"], images, 0.8, 0.0, 1.0)
        nets = {}
        for o_conds, c_conds, inputs in zip(ours, core, (pos, neg)):
            assert len(o_conds) == len(c_conds) == len(inputs)
            for o, c, given in zip(o_conds, c_conds, inputs):
                assert o[0] is c[0] is given[0] and o[1].keys() == c[1].keys()
                assert all(o[1][k] is c[1][k] for k in o[1] if k != "control")
                a, b = o[1]["control"], c[1]["control"]
                assert type(a) is type(b) and a is not parts["control"]
                assert torch.equal(a.cond_hint_original, b.cond_hint_original)
                assert (a.strength, a.timestep_percent_range) == (b.strength, b.timestep_percent_range) == (0.8, (0.0, 1.0))
                assert a.previous_controlnet is b.previous_controlnet is given[1].get("control")
                assert a.control_model is b.control_model
                assert o[1]["control_apply_to_uncond"] is c[1]["control_apply_to_uncond"] is False
                nets.setdefault(id(a), set()).add(id(b))
        assert all(len(v) == 1 for v in nets.values())  # shared exactly where core shares
    assert apply_control_net(parts["pos"], parts["neg"], parts["control"], images, 0.0) == (parts["pos"], parts["neg"])


def test_save_and_reload_adapter(comfy, parts):
    import folder_paths
    fresh = _fresh(comfy, parts)
    target = os.path.join(folder_paths.get_folder_paths("animatediff_models")[0], "eve_test_adapter.safetensors")
    if os.path.exists(target):  # an earlier session's: this test saves a new one (no overwrite)
        os.remove(target)
    out = comfy.node_classes["VideoEditEVESaveVideoAdapter"].execute(fresh, "eve_test_adapter")
    assert out.result == (target,) and out.ui["text"] == [f"saved {target}"]  # the path written is shown
    assert "eve_test_adapter.safetensors" in folder_paths.get_filename_list("animatediff_models")
    back = _loaded(comfy, "eve_test_adapter.safetensors")
    a, b = fresh.adapter_state_dict(), back.adapter_state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_full_size_animatediff_fixture_fits_sd15_layout():
    from harness.fixtures import animatediff_motion_module
    from safetensors.torch import load_file
    from videoedit.nodes.eve.temporal_adapter import adapter_from_state_dict, check_adapter, unet_layout
    path = animatediff_motion_module("v2")
    adapter = adapter_from_state_dict(load_file(str(path)), path.name)
    check_adapter(adapter, unet_layout(320, (1, 2, 4, 4), 2))
    assert len(adapter.items()) == 21 and adapter.max_frames == 32


def test_ckpt_motion_module_loads_through_weights_only(comfy):
    import folder_paths
    from safetensors.torch import load_file
    name = _tiny_ad_file(comfy, "mm_tiny_for_ckpt.safetensors", seed=32)
    folder = folder_paths.get_folder_paths("animatediff_models")[0]
    torch.save(load_file(os.path.join(folder, name)), os.path.join(folder, "mm_tiny.ckpt"))
    a = _loaded(comfy, name).adapter_state_dict()
    b = _loaded(comfy, "mm_tiny.ckpt").adapter_state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_lora_stacks_on_top_and_resolves_through_the_adapter_blocks(comfy, parts):
    """A LoRA on output_blocks.2.1 (the upsampler, after which names would shift if the adapter
    renumbered the block) is applied on the stacked model."""
    import folder_paths
    from safetensors.torch import save_file
    unet = parts["model"].model.diffusion_model
    conv = unet.output_blocks[2][1].conv
    g = torch.Generator().manual_seed(9)
    out_c, in_c = conv.weight.shape[:2]
    lora = {"lora_unet_output_blocks_2_1_conv.lora_down.weight": torch.randn(2, in_c, 3, 3, generator=g),
            "lora_unet_output_blocks_2_1_conv.lora_up.weight": torch.randn(out_c, 2, 1, 1, generator=g),
            "lora_unet_output_blocks_2_1_conv.alpha": torch.tensor(2.0)}
    folder = folder_paths.get_folder_paths("loras")[0]
    os.makedirs(folder, exist_ok=True)
    save_file(lora, os.path.join(folder, "eve_test_lora.safetensors"))
    images, latent = _images(), _latent()
    node = comfy.node_classes["VideoEditEVEAdapterStacker"]
    adapter = _loaded(comfy)
    args = (parts["model"], adapter, parts["control"], images, parts["pos"], parts["neg"], 1.0, 0, 4, True,
            "backbone default")
    plain = _run(comfy, node.execute(*args, "none", 1.0).result, latent)
    stacked = node.execute(*args, "eve_test_lora.safetensors", 1.0).result
    assert "diffusion_model.output_blocks.2.1.conv.weight" in stacked[0].patches
    with_lora = _run(comfy, stacked, latent)
    assert (with_lora - plain).abs().max() > 1e-3
    after = _run(comfy, node.execute(*args, "none", 1.0).result, latent)
    assert torch.equal(after, plain)  # the LoRA was on a clone only


@pytest.mark.slow
def test_shipped_eve_workflow_in_sliding_windows(comfy_server, object_info, sample_clip, tmp_path):
    """The shipped template with 4-frame windows overlapping by 2 on the 8-frame sample clip:
    several windows, every frame out, on the full-size random SD1.5 + ControlNet + motion module."""
    import json
    from pathlib import Path
    from harness.sample_clip import read_video
    from harness.workflow_api import apply_overrides, to_api
    wf = Path(__file__).resolve().parent.parent / "example_workflows" / "eve_plug_and_play_edit.json"
    prompt = to_api(json.loads(wf.read_text()), object_info)
    stacker = next(nid for nid, n in prompt.items() if n["class_type"] == "VideoEditEVEAdapterStacker")
    assert prompt[stacker]["inputs"]["context_length"] == 8  # EVE's window
    prompt = apply_overrides(prompt, [f"{stacker}.context_length=4", f"{stacker}.context_overlap=2"])
    result = comfy_server.run(prompt, timeout=300)
    assert result.events("execution_success"), result.messages
    out = tmp_path / "eve.mp4"
    out.write_bytes(comfy_server.view(**result.videos()[0]))
    frames, _ = read_video(out)
    assert frames.shape == (8, 64, 64, 3) and frames.std() > 0


def test_second_video_adapter_is_refused(comfy, parts):
    apply = comfy.node_classes["VideoEditEVEApplyVideoAdapter"]
    once = apply.execute(parts["model"], _fresh(comfy, parts), False).result[0]
    with pytest.raises(ValueError, match="already carries a video adapter"):
        apply.execute(once, _fresh(comfy, parts), False)


def test_stacking_again_after_a_stacked_run_builds_from_the_plain_backbone(comfy, parts):
    """The live UNet still holds the last stacked clone's blocks after it ran; a new stack must
    start from the backbone's own blocks (one set of temporal layers, same result)."""
    images, latent = _images(), _latent()
    first = _run(comfy, _stack(comfy, parts, _loaded(comfy), images, length=0), latent)
    again = _stack(comfy, parts, _fresh(comfy, parts), images, length=0)  # built while the first is patched in
    assert torch.equal(_run(comfy, again, latent), _core(comfy, parts, images, latent))
    assert not torch.equal(first, _core(comfy, parts, images, latent))

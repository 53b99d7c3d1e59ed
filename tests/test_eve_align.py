"""EVE LoRA alignment (FDD) on a tiny random stack (tiny SD-shaped UNet + tiny ControlNet +
random AnimateDiff-format motion module, 32x32 pixels = 4x4 latents, 3 frames): gradients
through all k steps, teachers and frozen weights untouched, the SDS residuals go down, the LoRA
file loads through core LoraLoader and changes the output, exact resume, bad inputs.
(K-bin sampling, SDS gradient and the hinge / FDD combinations: tests/test_distillation.py.)"""
from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch

F, SIZE = 3, 32


def _tiny_adapter(seed=31):
    from harness.fixtures import tiny_motion_module_sd
    from videoedit.nodes.eve.temporal_adapter import adapter_from_state_dict
    return adapter_from_state_dict(tiny_motion_module_sd(seed=seed), "tiny motion module")


@pytest.fixture(scope="module")
def stack(comfy):
    """Everything built under inference mode, as the server loads models."""
    from harness.fixtures import build_clip, build_model, tiny_controlnet, tiny_unet_config
    from videoedit.nodes.eve import engine_align_trainer as et
    from videoedit.nodes.eve.engine_video_adapter import apply_video_adapter
    with torch.inference_mode():
        model = build_model(tiny_unet_config(), seed=3)
        clip = build_clip(tiny=True)
        control = tiny_controlnet(tiny_unet_config())
        video = apply_video_adapter(model, _tiny_adapter(), anchor=True)
        enc = lambda t: clip.encode_from_tokens_scheduled(clip.tokenize(t))[0][0]
        g = torch.Generator().manual_seed(0)
        data = et.AlignData(torch.randn(2, F, 4, SIZE // 8, SIZE // 8, generator=g),
                            torch.rand(2, F, SIZE, SIZE, 3, generator=g),
                            torch.cat([enc("make it winter"), enc("turn it into a painting")]),
                            torch.cat([enc("a snowy street"), enc("a painting of a street")]), enc(""),
                            ["a", "b"])
    return dict(model=model, clip=clip, control=control, video=video, data=data)


def _cfg(**kw):
    from videoedit.nodes.eve.engine_align_trainer import AlignConfig
    return AlignConfig(**{"steps": 3, "batch_size": 1, "learning_rate": 1e-3, "rank": 2, "k": 3,
                          "schedule_steps": 1000, "teacher_steps": 2, "sds_fraction": 2 / 3, "seed": 1,
                          "checkpoint_every": 0, **kw})


def _hash(tensors) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def _aligner(stack, video=True, **kw):
    from videoedit.nodes.eve.engine_align_trainer import Aligner
    return Aligner(stack["model"], stack["control"], stack["video"] if video else None, stack["data"], _cfg(**kw))


def _frozen(stack) -> dict[str, torch.Tensor]:
    """Every frozen weight: backbone, ControlNet, video adapter (the teachers are made of them)."""
    out = {f"unet.{k}": v for k, v in stack["model"].model.diffusion_model.state_dict().items() if ".eve_" not in k}
    out.update({f"control.{k}": v for k, v in stack["control"].control_model.state_dict().items()})
    for path, block in stack["video"].object_patches.items():
        out.update({f"video.{path}.{k}": v for k, v in block.state_dict().items() if "eve_" in k})
    return out


# ------------------------------------------------------------------- pure math

def test_gradient_reaches_a_parameter_used_only_in_the_first_step():
    from videoedit.nodes.eve import align as eve_align
    ac = torch.linspace(0.999, 0.01, 1000)
    ts = torch.tensor([900, 500, 100])
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 4, 4, 4, generator=g)
    first = torch.nn.Parameter(torch.zeros(()))
    later = torch.nn.Parameter(torch.zeros(()))
    w = torch.randn(4, 4, generator=g) * 0.3

    def eps_fn(x, t):  # a linear "UNet"; `first` is used only at the first (noisiest) step
        out = torch.einsum("oc,bchw->bohw", w, x)
        return out + (first if int(t[0]) == 900 else later * 0) * x

    grads = []
    for ckpt in (False, True):
        first.grad = None
        x0 = eve_align.ddim_generate(eps_fn, noise, ts, ac, checkpointing=ckpt)
        x0.pow(2).sum().backward()
        grads.append(first.grad.clone())
    assert grads[0].abs() > 1e-4, "no gradient through the first of k steps"
    torch.testing.assert_close(grads[0], grads[1])  # checkpointing recomputes the same graph



def test_teacher_ddim_matches_diffusers_ddim_scheduler():
    """The teachers' evenly spaced DDIM (teacher_timesteps + ddim_generate, eta 0, the last step to
    x_0) = diffusers' DDIMScheduler stepping through the same timesteps (the oracle: our own DDIM,
    not a runtime path), for a nonlinear eps model on SD1.x's schedule."""
    from diffusers import DDIMScheduler
    from videoedit.nodes.eve import align as eve_align
    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          clip_sample=False, set_alpha_to_one=True)
    steps = 8
    sched.set_timesteps(steps)  # step ratio 125, as teacher_timesteps' spacing
    ts = eve_align.teacher_timesteps(steps, 1000)
    sched.timesteps = ts.clone()
    sched.alphas_cumprod = acp = sched.alphas_cumprod.double()
    g = torch.Generator().manual_seed(0)
    w = torch.randn(2, 4, 4, 4, generator=g, dtype=torch.float64) * 0.3
    model = lambda x, t: torch.tanh(w * x) * (0.5 + t.double().view(-1, 1, 1, 1) / 1000)  # noqa: E731
    noise = torch.randn(2, 4, 4, 4, generator=g, dtype=torch.float64)
    ref = noise
    for t in ts.tolist():
        ref = sched.step(model(ref, torch.full((2,), t)), t, ref, eta=0.0).prev_sample
    torch.testing.assert_close(eve_align.ddim_generate(model, noise, ts, acp), ref, rtol=1e-9, atol=1e-9)

def test_k_bin_timesteps_descend_one_per_bin():
    from videoedit.nodes.eve import align as eve_align
    s = eve_align.AlignSettings(k=3, schedule_steps=1000)
    for seed in range(50):
        d = eve_align.draw(torch.Generator().manual_seed(seed), (3, 4, 4, 4), 3, s, 1000)
        t = d.student_t.tolist()
        assert t == sorted(t, reverse=True)
        assert [x * 3 // 1000 for x in t] == [2, 1, 0]  # noisiest bin first
        assert d.sds_t.unique().numel() == 1  # one t per clip, repeated over its frames


def test_kohya_lora_layout_matches_core_lora_math(comfy):
    from videoedit.nodes.core.weight_deltas import LoRADelta
    from videoedit.nodes.eve import align as eve_align
    import comfy.lora
    d = LoRADelta((8, 4, 3, 3), rank=2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        d.up.normal_()
    sd = eve_align.lora_state_dict({"diffusion_model.input_blocks.1.0.in_layers.2.weight": d})
    key_map = {"lora_unet_input_blocks_1_0_in_layers_2": "diffusion_model.input_blocks.1.0.in_layers.2.weight"}
    patches = comfy.lora.load_lora(sd, key_map)
    w = torch.randn(8, 4, 3, 3)
    got = comfy.lora.calculate_weight([(1.0, v, 1.0, None, None) for v in patches.values()], w.clone(),
                                      "diffusion_model.input_blocks.1.0.in_layers.2.weight")
    torch.testing.assert_close(got, d(w))


# ----------------------------------------------------------- alignment on the tiny stack

def test_only_the_lora_and_discriminator_heads_change(stack):
    before = _hash(_frozen(stack))
    a = _aligner(stack, steps=2, sds_fraction=0.5)  # step 1 SDS only, step 2 adversarial
    heads = lambda: {k: v.detach().clone() for k, v in a.params().items() if not k.startswith("lora.")}
    a._load()
    a._build_discriminators()
    initial, at_1 = heads(), {}
    a.run(on_step=lambda step, loss: step == 1 and at_1.update(heads()))
    assert _hash(_frozen(stack)) == before, "a frozen weight (backbone, ControlNet or video adapter) changed"
    for name, t in _frozen(stack).items():
        assert not getattr(t, "requires_grad", False) or t.grad is None, f"gradient reached {name}"
    still = {k for k, d in a.deltas.items() if not d.up.abs().max() > 0}
    # at 32x32 pixels the middle block works on 1x1 latent tokens: softmax over a single key is 1
    # whatever q and k are, so that self-attention's q/k LoRA gets exactly zero gradient (whether
    # the attention kernel returns exact zeros or float dust depends on the backend); every other
    # delta must move
    one_token_qk = {k for k in a.deltas if "middle_block" in k and (".attn1.to_q." in k or ".attn1.to_k." in k)}
    assert still <= one_token_qk, f"LoRA deltas did not move: {sorted(still - one_token_qk)}"
    assert len(a.deltas) - len(one_token_qk) > 100
    assert {k.split(".")[0] for k in initial} == {"d_edit", "d_video"}
    assert all(torch.equal(initial[k], at_1[k]) for k in initial), "heads moved in the SDS-only phase"
    moved = {k.split(".")[0] for k, v in heads().items() if not torch.equal(initial[k], v)}
    assert moved == {"d_edit", "d_video"}, "the discriminator heads did not train in the adversarial phase"


def test_killed_run_resumes_exactly(stack, tmp_path):
    class Killed(Exception):
        pass

    ck = str(tmp_path / "ck.safetensors")
    full = _aligner(stack, steps=2, sds_fraction=0.5, checkpoint_every=1)  # step 2 adversarial
    full_losses = full.run()

    def kill(step, loss):
        if step == 1:
            raise Killed

    with pytest.raises(Killed):
        _aligner(stack, steps=2, sds_fraction=0.5, checkpoint_every=1).run(ck, on_step=kill)
    resumed = _aligner(stack, steps=2, sds_fraction=0.5, checkpoint_every=1)
    losses = resumed.run(ck)
    assert losses == full_losses
    p1, p2 = full.params(), resumed.params()
    assert p1.keys() == p2.keys() and all(torch.equal(p1[k], p2[k]) for k in p1)


def test_sds_alignment_lowers_the_residuals_of_both_teachers():
    """FDD's generator loop (K-bin k-step generation with checkpointing, SDS from two teachers,
    Adam) with teachers whose optimum is known: the exact eps-predictors of two Gaussian data
    distributions N(mu_e, s^2), N(mu_v, s^2). SDS must pull the student's clips toward them, so
    c(t)||eps_hat - eps||^2 of both teachers drops on held-out draws. (Random-weight UNet teachers
    define no distribution to move toward: there this is noise, see the report in README.)"""
    from videoedit.nodes.eve import align as ea
    T = 1000
    abar = torch.cumprod(1 - torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, T) ** 2, 0)  # SD1.5 schedule
    g = torch.Generator().manual_seed(0)
    shape = (F, 4, 4, 4)
    mu_e, mu_v = torch.randn(shape, generator=g), torch.randn(shape, generator=g)

    def teacher(mu, s2=0.05):
        def eps(x, t):
            a = abar[t].view(-1, 1, 1, 1)
            return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * s2 + 1 - a)
        return eps

    offset = torch.nn.Parameter(torch.zeros(shape))  # the student's trainable part

    def student(x, t):  # a fixed "denoiser" plus the trainable offset
        return x * (1 - abar[t].view(-1, 1, 1, 1)).sqrt() + 0.1 * offset

    s = ea.AlignSettings(k=3, checkpointing=True)
    m = ea.AlignModels(student, teacher(mu_e), teacher(mu_v), None, None, None, None, F)

    def held_out():
        gen, tot = torch.Generator().manual_seed(99), {}
        for _ in range(8):
            with torch.no_grad():
                log = ea.generator_losses(m, ea.draw(gen, shape, F, s, T), abar, s, None, None)[2]
            for k in ("residual_edit", "residual_video"):
                tot[k] = tot.get(k, 0.0) + log[k] / 8
        return tot

    before = held_out()
    opt = torch.optim.Adam([offset], lr=5e-2)
    for step in range(40):
        loss = ea.generator_losses(m, ea.draw(torch.Generator().manual_seed(step), shape, F, s, T), abar, s,
                                   None, None)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_out()
    for k in before:
        assert after[k] < 0.9 * before[k], f"{k}: {before[k]:.4g} -> {after[k]:.4g}"


def test_the_lora_loads_in_core_and_changes_the_output(comfy, stack):
    import folder_paths
    from videoedit.nodes.eve.engine_align_data import save_lora
    a = _aligner(stack, steps=1, sds_fraction=1.0, learning_rate=3e-3, rank=4)
    a.run()
    name = "test_eve_align_lora"
    path = os.path.join(folder_paths.get_folder_paths("loras")[0], f"{name}.safetensors")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_lora(a, path)
    nc = comfy.node_classes
    lat = {"samples": torch.randn(F, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(2))}
    enc = nc["CLIPTextEncode"]()
    pos, neg = enc.encode(stack["clip"], "make it winter")[0], enc.encode(stack["clip"], "")[0]
    sample = lambda m: nc["KSampler"]().sample(m, 7, 2, 1.0, "euler", "normal", pos, neg, lat)[0]["samples"]
    from harness.fixtures import tiny_motion_module_sd
    from harness.pack import pack_module
    stacker = nc["VideoEditEVEAdapterStacker"]
    with torch.inference_mode():  # the running copy of the pack's adapter class
        adapter = pack_module(stacker, "eve.temporal_adapter").adapter_from_state_dict(tiny_motion_module_sd(), "t")
        for base in (stack["model"], stack["video"]):  # the backbone, and the stacked model
            with_lora = nc["LoraLoaderModelOnly"]().load_lora_model_only(base, f"{name}.safetensors", 1.0)[0]
            assert len(with_lora.patches) == len(a.deltas)  # every LoRA key resolved
            assert (sample(with_lora) - sample(base)).abs().max() > 1e-4
        stacked = stacker.execute(
            stack["model"], adapter, stack["control"], stack["data"].hints[0], pos, neg, 1.0, 0, 0, True,
            "backbone default", f"{name}.safetensors", 1.0).result
        plain = stacker.execute(
            stack["model"], adapter, stack["control"], stack["data"].hints[0], pos, neg, 1.0, 0, 0, True,
            "backbone default", "none", 1.0).result
        out = lambda r: nc["KSampler"]().sample(r[0], 7, 2, 1.0, "euler", "normal", r[1], r[2], lat)[0]["samples"]
        assert (out(stacked) - out(plain)).abs().max() > 1e-4


# ------------------------------------------------------------------------ the node

def _dataset(folder, entries, frames=2, seed=0):
    from PIL import Image
    import numpy as np
    g = np.random.default_rng(seed)
    lines = []
    for i, e in enumerate(entries):
        clip_dir = folder / f"clip{i}"
        clip_dir.mkdir(parents=True)
        for f in range(frames):
            Image.fromarray(g.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(clip_dir / f"{f:03d}.png")
        lines.append(json.dumps({"video": f"clip{i}", **e}))
    (folder / "dataset.jsonl").write_text("\n".join(lines) + "\n")
    return str(folder)


def _listed(monkeypatch, folder):
    """``folder`` as a listed training-data folder (a videoedit_datasets entry of extra_model_paths.yaml)."""
    import folder_paths
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "videoedit_datasets", ([str(folder)], set()))


def test_node_end_to_end_image_only(comfy, stack, tmp_path, monkeypatch):
    import comfy.utils as cu
    import folder_paths
    from harness.pack import pack_module
    _listed(monkeypatch, tmp_path)
    nc = comfy.node_classes
    node = nc["VideoEditEVELoRAAligner"]
    mod = pack_module(node, "host.training_ui")  # the running pack's
    sent, seen = [], []
    monkeypatch.setattr(mod, "send_to_ui", lambda e, d: sent.append((e, d)))
    old = cu.PROGRESS_BAR_HOOK
    cu.set_progress_bar_global_hook(lambda v, t, p, node_id=None: seen.append((v, t)))
    folder = _dataset(tmp_path / "data", [{"instruction": "make it winter", "caption": "a snowy street"},
                                          {"instruction": "make it red", "caption": "a red street"}])
    name = "test_eve_align_node"
    vae = nc["VAELoader"]().load_vae("taesd")[0]
    try:
        with torch.inference_mode():
            student, curve, info = node.execute(
                stack["model"], stack["control"], stack["clip"], vae, "dataset folder", folder, "", "", 2, SIZE,
                2, 1, 1e-3, 2, 2, 1000, 1, 0.5, 1.0, 0, 1, name, False, overwrite=True).result
    finally:
        cu.set_progress_bar_global_hook(old)
    assert seen[-1] == (2, 2)
    steps = [d for e, d in sent if e == "videoedit.training" and "loss" in d]
    assert [d["step"] for d in steps] == [1, 2]
    assert curve.shape[0] == 1 and curve.shape[-1] == 3
    assert "image-only" in info and "2 clips" in info and "loss_d" in info  # step 2 was adversarial (D_e only)
    path = os.path.join(folder_paths.get_folder_paths("loras")[0], f"{name}.safetensors")
    assert os.path.exists(path)
    with torch.inference_mode():
        loaded = nc["LoraLoaderModelOnly"]().load_lora_model_only(stack["model"], f"{name}.safetensors", 1.0)[0]
    assert set(loaded.patches) == set(student.patches) and len(loaded.patches) > 0


def test_bad_inputs(comfy, stack, tmp_path, monkeypatch):
    from harness.fixtures import build_model, tiny_unet_config
    _listed(monkeypatch, tmp_path)
    from videoedit.nodes.eve.engine_align_trainer import Aligner
    from videoedit.nodes.eve.engine_video_adapter import apply_video_adapter
    from videoedit.nodes.eve.engine_align_data import scan_dataset
    with torch.inference_mode():
        other = apply_video_adapter(build_model(tiny_unet_config(), seed=4), _tiny_adapter(), anchor=True)
    with pytest.raises(ValueError, match=r"video_teacher: built on another backbone .*than edit_teacher"):
        Aligner(stack["model"], stack["control"], other, stack["data"], _cfg())
    with pytest.raises(ValueError, match=r"k: 5 student steps .* schedule of 4 steps"):
        _aligner(stack, k=5, schedule_steps=4).run()
    node = comfy.node_classes["VideoEditEVELoRAAligner"]
    with pytest.raises(ValueError, match=r"k: 5 student steps .* schedule of 4 steps"):
        node.execute(stack["model"], stack["control"], stack["clip"], None, "dataset folder", str(tmp_path), "", "",
                     2, SIZE, 1, 1, 1e-3, 2, 5, 4, 1, 0.5, 1.0, 0, 1, "x", False)
    for missing in ("caption", "instruction"):
        entry = {"instruction": "make it red", "caption": "a red street"}
        entry.pop(missing)
        folder = _dataset(tmp_path / missing, [{"instruction": "ok", "caption": "ok"}, entry])
        with pytest.raises(ValueError, match=rf"entry dataset.jsonl line 2 \(video 'clip1'\) has no '{missing}'"):
            scan_dataset(folder)


def test_headless_ddp_two_cpu_processes_end_identical(tmp_path):
    """harness.train with "trainer": "eve_align" under torchrun (2 gloo processes): one LoRA."""
    import subprocess
    import sys
    from safetensors.torch import load_file
    from harness.embedded import prepare_base_dir
    from harness.fixtures import install_taesd
    folder = _dataset(tmp_path / "data", [{"instruction": "make it winter", "caption": "a snowy street"},
                                          {"instruction": "make it red", "caption": "a red street"}])
    cfg = {"trainer": "eve_align", "model": "fixture:tiny", "video_adapter": "fixture", "vae": "taesd",
           "dataset_folder": folder, "frames": 2, "resolution": SIZE, "steps": 2, "learning_rate": 1e-3,
           "lora_rank": 2, "teacher_steps": 1, "sds_only_fraction": 0.5, "seed": 1, "checkpoint_every": 1,
           "output_dir": str(tmp_path / "run"), "base": str(tmp_path / "base")}
    (tmp_path / "run.json").write_text(json.dumps(cfg))
    prepare_base_dir(tmp_path / "base")  # once, before two processes would race to create it
    install_taesd(tmp_path / "base")
    root = os.path.dirname(os.path.dirname(__file__))
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": root}
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "harness.train", str(tmp_path / "run.json")],
                       cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    w0 = load_file(str(tmp_path / "run" / "rank0_lora.safetensors"))
    w1 = load_file(str(tmp_path / "run" / "rank1_lora.safetensors"))
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    assert any(w0[k].abs().max() > 0 for k in w0 if k.endswith("lora_up.weight"))
    assert '"world": 2' in r.stdout and "loss_d" in r.stdout  # step 2 ran the discriminators
    assert (tmp_path / "run" / "loss_curve.png").exists() and (tmp_path / "run" / "lora.safetensors").exists()


# ------------------------------------------------------------------ DINOv2 feature network

def _tiny_dinov2(path, seed=5):
    """A random DINOv2 in the Hugging Face layout (64-dim single head, 3 layers, patch 4, 16 px)."""
    from safetensors.torch import save_file
    from transformers import Dinov2Config, Dinov2Model
    torch.manual_seed(seed)
    m = Dinov2Model(Dinov2Config(hidden_size=64, num_hidden_layers=3, num_attention_heads=1, mlp_ratio=2,
                                 patch_size=4, image_size=16, layerscale_value=0.5)).eval()
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    return m


def test_dinov2_feature_network_loads_exactly_and_serves_the_discriminators(comfy, stack, tmp_path):
    """EVE's feature network: the file's architecture is read off its tensors (same outputs as the
    model it came from); the student's x_0 reaches it through the VAE decode with gradients; the
    heads train on its levels; DINOv2 and every frozen weight stay bit-identical."""
    from videoedit.nodes.eve import dino_features as df
    ref = _tiny_dinov2(tmp_path / "dino.safetensors")
    with torch.inference_mode():  # as the node runs
        feats = df.DinoFeatures(df.load_dinov2(str(tmp_path / "dino.safetensors")), levels=4, size=16)
    cfg = feats.model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.patch_size, cfg.image_size, cfg.mlp_ratio) == (64, 3, 4, 16, 2)
    assert feats.layers == [1, 2, 3]  # levels capped at the depth, the last layer included
    img = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    maps = feats(img)
    with torch.no_grad():
        x = (img - torch.tensor(df.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(df.IMAGENET_STD).view(1, 3, 1, 1)
        hs = ref(pixel_values=x, output_hidden_states=True).hidden_states
    for got, i in zip(maps, feats.layers):
        assert got.shape == (2, 64, 4, 4)
        assert torch.allclose(got, hs[i][:, 1:].transpose(1, 2).reshape(2, 64, 4, 4), atol=1e-5)

    dino_before = _hash(feats.model.state_dict())
    frozen_before = _hash(_frozen(stack))
    vae = comfy.node_classes["VAELoader"]().load_vae("taesd")[0]
    from videoedit.nodes.eve.engine_align_trainer import Aligner
    a = Aligner(stack["model"], stack["control"], stack["video"], stack["data"], _cfg(steps=2, sds_fraction=0.5),
                feats, vae, "dino.safetensors")
    with torch.inference_mode(False):
        a._load()
        x0 = torch.randn(F, 4, SIZE // 8, SIZE // 8, requires_grad=True)
        sum(f.square().mean() for f in a.features(x0)).backward()
        assert x0.grad is not None and x0.grad.abs().max() > 0  # the decode + DINOv2 path passes gradients
    a._build_discriminators()
    initial = {k: v.detach().clone() for k, v in a.params().items() if not k.startswith("lora.")}
    a.run()
    moved = {k.split(".")[0] for k, v in a.params().items() if k in initial and not torch.equal(initial[k], v)}
    assert moved == {"d_edit", "d_video"}
    assert a.config_record()["feature_network"] == "dino.safetensors"
    assert _hash(feats.model.state_dict()) == dino_before and _hash(_frozen(stack)) == frozen_before


def test_dinov2_bad_files(comfy, stack, tmp_path):
    from safetensors.torch import save_file
    import folder_paths
    from videoedit.nodes.eve import dino_features as df
    from videoedit.nodes.eve.engine_align_trainer import Aligner
    from videoedit.nodes.eve.engine_align_data import FEATURES_FOLDER, load_feature_network
    (tmp_path / "dino.pth").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match=r"feature_network: 'dino.pth' is not a .safetensors file; pickle"):
        df.load_dinov2(str(tmp_path / "dino.pth"))
    save_file({"blocks.0.attn.qkv.weight": torch.zeros(3, 3)}, str(tmp_path / "timm.safetensors"))
    with pytest.raises(ValueError, match=r"not a DINOv2 checkpoint in the Hugging Face layout .*timm"):
        df.load_dinov2(str(tmp_path / "timm.safetensors"))
    sd = _tiny_dinov2(tmp_path / "dino.safetensors").state_dict()
    save_file({**sd, "embeddings.register_tokens": torch.zeros(1, 4, 64)}, str(tmp_path / "reg.safetensors"))
    with pytest.raises(ValueError, match=r"with registers"):
        df.load_dinov2(str(tmp_path / "reg.safetensors"))
    with pytest.raises(ValueError, match=rf"feature_network: 'missing.safetensors' is not in models/{FEATURES_FOLDER}"):
        load_feature_network("missing.safetensors")
    assert load_feature_network("backbone UNet encoder")[0] is None
    target = os.path.join(folder_paths.get_folder_paths(FEATURES_FOLDER)[0], "test_dino.safetensors")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.replace(tmp_path / "dino.safetensors", target)
    try:
        net, name = load_feature_network("test_dino.safetensors")
        assert isinstance(net, df.DinoFeatures) and name == "test_dino.safetensors"
    finally:
        os.remove(target)
    with pytest.raises(ValueError, match=r"vae: the DINOv2 feature network sees pixels"):
        Aligner(stack["model"], stack["control"], None, stack["data"], _cfg(), net, None)

"""CFG distillation training (MoViE Alg. 1) on a tiny random InstructPix2Pix on CPU: exact
resume after a kill, cancel, the node end to end (progress, live-chart messages, adapter file,
loss curve), bad inputs, DDP through the headless command (2 gloo processes); and, on a tiny
*trained* InstructPix2Pix (harness.movie_toy), what distillation must achieve: held-out
student-vs-Eq. 1 error halved and knobs that move the output the way they move Eq. 1's."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from harness.pack import pack_module


@pytest.fixture(scope="module")
def tiny(comfy):
    from harness.fixtures import build_clip, build_model, tiny_unet_config
    model = build_model(tiny_unet_config(ip2p=True), ip2p=True, seed=3)
    clip = build_clip(tiny=True)
    return model, clip


def _data(clip, frames=4, seed=0):
    from videoedit.nodes.movie import engine_cfg_distill as md
    enc = lambda t: clip.encode_from_tokens_scheduled(clip.tokenize(t))[0][0]
    lat = torch.randn(frames, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
    return md.DistillData(lat, lat, enc("make it snowy").expand(frames, -1, -1), enc(""))


def _cfg(**kw):
    from videoedit.nodes.movie import engine_cfg_distill as md
    return md.DistillConfig(**{"steps": 8, "batch_size": 2, "learning_rate": 1e-3, "rank": 2, "seed": 5,
                               "checkpoint_every": 3, **kw})


class Killed(Exception):
    pass


def test_killed_run_resumes_exactly(tiny, tmp_path):
    from videoedit.nodes.movie import engine_cfg_distill as md
    model, clip = tiny
    data = _data(clip)
    full = md.Distiller(model, data, _cfg())
    full_losses = full.run(str(tmp_path / "a.safetensors"))
    ref = {k: v.clone() for k, v in full.adapter.state_dict().items()}

    ck = str(tmp_path / "b.safetensors")
    def kill_at_7(step, loss):
        if step == 7:
            raise Killed  # like SIGKILL after step 7: steps 7 (and 4-6 since the checkpoint) are lost
    with pytest.raises(Killed):
        md.Distiller(model, data, _cfg()).run(ck, on_step=kill_at_7)
    from safetensors import safe_open
    with safe_open(ck, framework="pt") as f:
        assert f.metadata()["step"] == "6"
    resumed = md.Distiller(model, data, _cfg())  # a fresh process would build this from scratch
    losses = resumed.run(ck, resume=True)
    assert losses == full_losses  # same loss at the same step, for every step
    for k, v in resumed.adapter.state_dict().items():
        assert torch.equal(v, ref[k]), k
    assert any(v.abs().max() > 0 for k, v in ref.items() if k.endswith(".up"))  # it did train
    with pytest.raises(ValueError, match="different settings"):
        md.Distiller(model, data, _cfg(learning_rate=2e-3)).run(ck, resume=True)


def test_cancel_stops_and_keeps_a_checkpoint(comfy, tiny, tmp_path):
    import comfy.model_management as mm
    from videoedit.nodes.movie import engine_cfg_distill as md
    model, clip = tiny
    ck = str(tmp_path / "c.safetensors")

    def cancel_at_2(step, loss):
        if step == 2:
            mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            md.Distiller(model, _data(clip), _cfg(checkpoint_every=100)).run(
                ck, on_step=cancel_at_2, interrupted=mm.throw_exception_if_processing_interrupted)
    finally:
        mm.interrupt_current_processing(False)
    from safetensors import safe_open
    with safe_open(ck, framework="pt") as f:
        assert f.metadata()["step"] == "2"


def test_train_node_end_to_end(comfy, tiny, monkeypatch):
    import comfy.utils as cu
    import folder_paths
    model, clip = tiny
    node = comfy.node_classes["VideoEditCFGDistillTrain"]
    mod = pack_module(node, "host.training_ui")
    sent = []
    monkeypatch.setattr(mod, "send_to_ui", lambda e, d: sent.append((e, d)))
    seen = []
    old = cu.PROGRESS_BAR_HOOK
    cu.set_progress_bar_global_hook(lambda v, t, p, node_id=None: seen.append((v, t)))
    vae = comfy.node_classes["VAELoader"]().load_vae("taesd")[0]
    frames = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    name = "test_node_train"
    ck = os.path.join(folder_paths.get_output_directory(), "videoedit_training", "cfg_distill", name,
                      "checkpoint.safetensors")
    saved = os.path.join(folder_paths.get_folder_paths("videoedit_guidance")[0], f"{name}.safetensors")
    for old_file in (ck, saved):  # a fresh run (an earlier session's adapter would be refused, not replaced)
        if os.path.exists(old_file):
            os.remove(old_file)
    try:
        with torch.inference_mode():  # as the server loads models and runs nodes: all inference tensors
            from harness.fixtures import build_model, tiny_unet_config
            model = build_model(tiny_unet_config(ip2p=True), ip2p=True, seed=3)
            frames = frames.clone()
            student, curve, info = node.execute(model, clip, vae, "my frames (data-free)", "make it snowy\nmake it red", "",
                                                256, 3, 2, 1e-3, "lora", 2, 0, 2, name, True, frames=frames).result
    finally:
        cu.set_progress_bar_global_hook(old)
    assert seen[-1] == (3, 3)
    steps = [d for e, d in sent if e == "videoedit.training" and "loss" in d]
    assert [d["step"] for d in steps] == [1, 2, 3] and all(d["total"] == 3 for d in steps)
    assert curve.shape[0] == 1 and curve.shape[-1] == 3
    assert "after 3 steps" in info and "4 training pairs" in info
    assert os.path.exists(os.path.join(folder_paths.get_folder_paths("videoedit_guidance")[0], f"{name}.safetensors"))
    # the saved adapter loads and gives the same student outputs as the one the node returned
    loaded, _ = comfy.node_classes["VideoEditLoadGuidanceAdapter"].execute(model, f"{name}.safetensors").result
    from videoedit.nodes.movie.engine_guidance import guidance_adapter_of
    sd1 = guidance_adapter_of(student).state_dict()
    sd2 = guidance_adapter_of(loaded).state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)


def test_train_node_bad_inputs(comfy, tiny, tmp_path, monkeypatch):
    import folder_paths
    from harness.fixtures import build_model, tiny_unet_config
    model, clip = tiny
    node = comfy.node_classes["VideoEditCFGDistillTrain"]
    vae = comfy.node_classes["VAELoader"]().load_vae("taesd")[0]
    # tmp_path as a listed training-data folder (what a videoedit_datasets entry of extra_model_paths.yaml does)
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "videoedit_datasets", ([str(tmp_path)], set()))
    args = lambda **kw: {**dict(model=model, clip=clip, vae=vae, data_mode="dataset folder", instructions="",
                                dataset_folder=str(tmp_path), resolution=64, steps=1, batch_size=1,
                                learning_rate=1e-3, adapter="lora", lora_rank=2, seed=0, checkpoint_every=1,
                                output_name="t", resume=False), **kw}
    with pytest.raises(ValueError, match="output_name: '../evil' is not a plain file name"):
        node.execute(**args(output_name="../evil"))
    with pytest.raises(ValueError, match="no samples"):
        node.execute(**args())
    from PIL import Image
    for i in ("a", "b"):
        (tmp_path / f"{i}.txt").write_text("make it snowy")
        Image.new("RGB", (64, 64)).save(tmp_path / f"{i}_source.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "b_edited.png")
    with pytest.raises(ValueError, match=r"sample 'a' \(a.txt\) has no a_edited"):
        node.execute(**args())
    with pytest.raises(ValueError, match="model: not an InstructPix2Pix model"):
        node.execute(**args(model=build_model(tiny_unet_config(), seed=4)))
    with pytest.raises(ValueError, match="frames: data-free mode needs"):
        node.execute(**args(data_mode="my frames (data-free)", instructions="x"))


def test_ddp_two_cpu_processes_end_identical(tiny, tmp_path):
    from safetensors.torch import load_file, save_file
    model, clip = tiny
    d = _data(clip, frames=6)
    save_file({"x0": d.x0.clone(), "source": d.source.clone(), "context": d.context.contiguous(), "empty": d.empty.contiguous()},
              str(tmp_path / "lat.safetensors"))
    cfg = {"model": "fixture:tiny_ip2p", "data_mode": "latents", "latents": str(tmp_path / "lat.safetensors"),
           "steps": 4, "batch_size": 2, "learning_rate": 1e-3, "lora_rank": 2, "seed": 1, "checkpoint_every": 2,
           "output_dir": str(tmp_path / "run"), "base": str(tmp_path / "base")}
    (tmp_path / "run.json").write_text(json.dumps(cfg))
    from harness.embedded import prepare_base_dir
    prepare_base_dir(tmp_path / "base")  # once, before two processes would race to create it
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(os.path.dirname(os.path.dirname(__file__)))}
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "harness.train",
                        str(tmp_path / "run.json")], cwd=os.path.dirname(os.path.dirname(__file__)), env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    w0 = load_file(str(tmp_path / "run" / "rank0_weights.safetensors"))
    w1 = load_file(str(tmp_path / "run" / "rank1_weights.safetensors"))
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    assert any(w0[k].abs().max() > 0 for k in w0 if k.endswith(".up"))
    assert '"world": 2' in r.stdout
    assert (tmp_path / "run" / "loss_curve.png").exists() and (tmp_path / "run" / "adapter.safetensors").exists()


def test_loss_chart_extension_is_served(comfy):
    """WEB_DIRECTORY registers js/ with ComfyUI; the chart listens to the trainer's message."""
    import nodes
    from pathlib import Path
    dirs = [Path(p) for p in nodes.EXTENSION_WEB_DIRS.values()]
    ours = [d for d in dirs if (d / "videoedit_loss_chart.js").exists()]
    assert ours, dirs
    src = (ours[0] / "videoedit_loss_chart.js").read_text()
    node = comfy.node_classes["VideoEditCFGDistillTrain"]
    assert pack_module(node, "host.training_ui").MESSAGE in src and "VideoEditCFGDistillTrain" in src


@pytest.fixture(scope="module")
def distilled(comfy):
    """Alg. 1 on a tiny *trained* InstructPix2Pix (harness.movie_toy: random weights give Eq. 1
    terms that are arbitrary functions of the input, a real IP2P's are structured), data-free on
    the panned sample clip with one instruction, trained on the even frames; the odd frames
    are held out, with (t, s_I, s_T, noise) draws the training never saw."""
    from harness.fixtures import build_clip
    from harness.movie_toy import encode_instructions, toy_ip2p, toy_latents
    from harness.sample_clip import panned_frames
    from videoedit.nodes.movie import engine_cfg_distill as md
    teacher, clip = toy_ip2p(), build_clip(tiny=True)
    lat = toy_latents(panned_frames(8, 64, shift=(2, 1))[0])
    ctx, empty = encode_instructions(clip, ["make it snowy"]).expand(8, -1, -1), encode_instructions(clip, [""])
    tr, ho = list(range(0, 8, 2)), list(range(1, 8, 2))
    cfg = _cfg(steps=200, batch_size=8, rank=8, learning_rate=1e-3, seed=0, checkpoint_every=0)
    d = md.Distiller(teacher, md.DistillData(lat[tr], lat[tr], ctx[tr], empty), cfg)
    held = md.Distiller(teacher, md.DistillData(lat[ho], lat[ho], ctx[ho], empty), cfg, adapter=d.adapter)
    before = held.error(128)
    losses = d.run()
    return held, before, held.error(128), losses, cfg


@pytest.mark.slow
def test_distillation_reduces_held_out_error(distilled):
    """Student-vs-Eq. 1 error on held-out frames with fresh (t, s, noise) draws."""
    held, before, after, losses, cfg = distilled
    reduction = 1 - after / before
    print(f"CFG distillation, tiny trained IP2P, {cfg.steps} steps: held-out student-vs-Eq.1 MSE {before:.4g} -> "
          f"{after:.4g} ({100 * reduction:.1f}% lower); mean loss first 20 steps {sum(losses[:20]) / 20:.4g}, "
          f"last 20 {sum(losses[-20:]) / 20:.4g}")
    assert reduction >= 0.5


@pytest.mark.slow
def test_distilled_knobs_move_output_like_eq1(distilled):
    """Raising s_T (then s_I) moves the student's prediction the way it moves Eq. 1's: the two
    changes, over held-out draws, are positively correlated (cosine of the flattened changes)."""
    held = distilled[0]
    cos = torch.nn.functional.cosine_similarity
    for (a, b) in (((1.5, 4.0), (1.5, 12.0)), ((1.2, 7.5), (2.8, 7.5))):
        s0, t0 = held.predictions(*a)
        s1, t1 = held.predictions(*b)
        c = cos((s1 - s0).flatten(), (t1 - t0).flatten(), dim=0).item()
        print(f"knobs {a} -> {b}: cosine(student change, Eq. 1 change) = {c:.3f}")
        assert c > 0.3

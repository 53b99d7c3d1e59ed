"""Headless EVE LoRA alignment (``"trainer": "eve_align"`` in harness/train.py's JSON config),
alone or under torchrun (DDP, one process per GPU; gloo on CPU).

Config keys:
  model           SD1.5 checkpoint path (single file), or "fixture:tiny" (tests: tiny random stack)
  control_net     ControlNet path (the image-edit adapter, e.g. control_v11e_sd15_ip2p.pth)
  video_adapter   motion module path (AnimateDiff format); omit or null for image-only alignment
  vae             "checkpoint" (default) or a TAESD variant name ("taesd")
  feature_network the discriminators' feature network: omit for the backbone's UNet encoder, or the
                  path of a DINOv2 model.safetensors (HF layout; it sees the clips decoded by vae)
  dataset_folder  a folder with one .jsonl: {"video", "instruction", "caption"} per line (absolute, or
                  relative to the base's input folder; its clips must lie inside it)
  frames, resolution, steps, batch_size (per process), learning_rate, lora_rank, k, schedule_steps,
  teacher_steps, sds_only_fraction, control_strength, seed, checkpoint_every, resume (default true)
  output_dir      checkpoint.safetensors, lora.safetensors (kohya layout), loss_curve.png,
                  rank<r>_lora.safetensors (every rank's final LoRA)
  base            ComfyUI base directory (default .comfy/train-base)
"""
from __future__ import annotations

import os
from pathlib import Path

from .embedded import REPO_ROOT, boot_in_process
from .pack import running_pack_module
from .train import (allow_config_data_folder, end_process_group, load_vae, run_printing_steps, save_loss_curve,
                    start_process_group)

DEFAULTS = {"vae": "checkpoint", "frames": 8, "resolution": 256, "steps": 1500, "batch_size": 1,
            "learning_rate": 1e-5, "lora_rank": 16, "k": 3, "schedule_steps": 1000, "teacher_steps": 8,
            "sds_only_fraction": 2 / 3, "control_strength": 1.0, "seed": 0, "checkpoint_every": 100,
            "resume": True, "video_adapter": None}


def _pack(name: str):
    """``eve.<name>`` of the pack as ComfyUI loaded it."""
    return running_pack_module(f"eve.{name}")


def _models(cfg, nodes_eve):
    """(edit teacher, control net, video teacher or None, clip, vae)."""
    if cfg["model"] == "fixture:tiny":
        from .fixtures import build_clip, build_model, tiny_controlnet, tiny_motion_module_sd, tiny_unet_config
        ta = _pack("temporal_adapter")
        model = build_model(tiny_unet_config(), seed=3)
        video = None
        if cfg["video_adapter"]:
            adapter = ta.adapter_from_state_dict(tiny_motion_module_sd(), "tiny motion module")
            video = nodes_eve.apply_video_adapter(model, adapter, True)
        return model, tiny_controlnet(tiny_unet_config()), video, build_clip(tiny=True), None
    import comfy.controlnet
    import comfy.sd
    import comfy.utils
    model, clip, vae, *_ = comfy.sd.load_checkpoint_guess_config(cfg["model"], output_vae=True, output_clip=True)
    control = comfy.controlnet.load_controlnet(cfg["control_net"])
    video = None
    if cfg["video_adapter"]:
        ta = _pack("temporal_adapter")
        sd = comfy.utils.load_torch_file(cfg["video_adapter"], safe_load=True)
        video = nodes_eve.apply_video_adapter(model, ta.adapter_from_state_dict(sd, os.path.basename(cfg["video_adapter"])), True)
    return model, control, video, clip, vae


def run(cfg: dict) -> dict:
    cfg = {**DEFAULTS, **cfg}
    base = Path(cfg.get("base") or REPO_ROOT / ".comfy" / "train-base")
    boot_in_process(base)
    et, nea, ne = (_pack(n) for n in ("engine_align_trainer", "engine_align_data", "engine_video_adapter"))
    rank, world = start_process_group()
    model, control, video, clip, vae = _models(cfg, ne)
    if cfg["vae"] != "checkpoint" or vae is None:
        vae = load_vae(cfg["vae"] if cfg["vae"] != "checkpoint" else "taesd")
    allow_config_data_folder(cfg["dataset_folder"])
    data = nea.dataset_data(clip, vae, cfg["dataset_folder"], int(cfg["frames"]), int(cfg["resolution"]))
    out = Path(cfg["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    ac = et.AlignConfig(steps=int(cfg["steps"]), batch_size=int(cfg["batch_size"]),
                        learning_rate=float(cfg["learning_rate"]), rank=int(cfg["lora_rank"]), k=int(cfg["k"]),
                        schedule_steps=int(cfg["schedule_steps"]), teacher_steps=int(cfg["teacher_steps"]),
                        sds_fraction=float(cfg["sds_only_fraction"]), control_strength=float(cfg["control_strength"]),
                        seed=int(cfg["seed"]), checkpoint_every=int(cfg["checkpoint_every"]))
    dino = None
    if cfg.get("feature_network"):
        df = _pack("dino_features")
        dino = df.DinoFeatures(df.load_dinov2(str(cfg["feature_network"])))
    a = et.Aligner(model, control, video, data, ac, dino, vae, os.path.basename(str(cfg.get("feature_network") or "")))

    history = run_printing_steps(a.run, ac.steps, out, bool(cfg["resume"]), rank, "loss_g", lambda: " ".join(
        f"{k} {v:.4g}" for k, v in a.last_log.items() if k != "loss_g"))
    nea.save_lora(a, str(out / f"rank{rank}_lora.safetensors"))
    if rank == 0:
        nea.save_lora(a, str(out / "lora.safetensors"))
        save_loss_curve(history, "FDD generator loss", out / "loss_curve.png")
    end_process_group(world)
    return {"rank": rank, "world": world, "steps": a.steps, "final_loss": history[-1] if history else None,
            "image_only": video is None}

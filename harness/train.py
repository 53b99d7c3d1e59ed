"""Headless training: the pack's trainers from a JSON config, on a GPU server, alone or under
torchrun (DDP, one process per GPU; gloo on CPU):

    python -m harness.train run.json
    torchrun --nproc_per_node=4 -m harness.train run.json

Config keys (CFG distillation, ``"trainer": "cfg_distill"``):
  model          InstructPix2Pix checkpoint path (single file), or "fixture:tiny_ip2p" (tests)
  vae            "checkpoint" (default: the checkpoint's VAE) or a TAESD variant name ("taesd")
  data_mode      "frames" (data-free: a folder of frame images + "instructions": [...]),
                 "folder" ("dataset_folder": <id>.txt/<id>_source.png/<id>_edited.png triples,
                 "resolution"), or "latents" ("latents": safetensors with x0/source/context/empty)
  steps, batch_size (per process), learning_rate, adapter ("lora"/"full"), lora_rank, seed,
  checkpoint_every, resume (default true)
  output_dir     checkpoint.safetensors, adapter.safetensors, loss_curve.png,
                 rank<r>_weights.safetensors (every rank's final adapter weights)
  base           ComfyUI base directory (default .comfy/train-base)

A killed run started again with the same config resumes from output_dir/checkpoint.safetensors.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from .embedded import REPO_ROOT, boot_in_process

DEFAULTS = {"trainer": "cfg_distill", "vae": "checkpoint", "data_mode": "frames", "steps": 500, "batch_size": 4,
            "learning_rate": 1e-5, "adapter": "lora", "lora_rank": 16, "seed": 0, "checkpoint_every": 100,
            "resume": True, "resolution": 256, "instructions": []}


def _pack():
    """The pack's modules (imported as ComfyUI imported them)."""
    name = next((m for m in sys.modules if m.endswith(".nodes.movie_distill")), None)
    if name is None:
        raise RuntimeError("the pack was not loaded by ComfyUI")
    pkg = name[: -len(".nodes.movie_distill")]
    import importlib
    return (importlib.import_module(f"{pkg}.nodes.movie_distill"), importlib.import_module(f"{pkg}.nodes.training"),
            importlib.import_module(f"{pkg}.nodes.nodes_movie"), importlib.import_module(f"{pkg}.nodes.nodes_movie_train"))


def _load_model(cfg):
    spec = cfg["model"]
    if spec == "fixture:tiny_ip2p":
        from .fixtures import build_clip, build_model, tiny_unet_config
        return build_model(tiny_unet_config(ip2p=True), ip2p=True, seed=3), build_clip(tiny=True), None
    import comfy.sd
    model, clip, vae, *_ = comfy.sd.load_checkpoint_guess_config(spec, output_vae=True, output_clip=True)
    return model, clip, vae


def _data(cfg, clip, vae, md, tr, nt):
    mode = cfg["data_mode"]
    if mode == "latents":
        from safetensors.torch import load_file
        t = load_file(cfg["latents"])
        return md.DistillData(t["x0"], t["source"], t["context"], t["empty"])
    if mode == "folder":
        return nt.folder_data(clip, vae, cfg["dataset_folder"], int(cfg["resolution"]))
    if mode == "frames":
        folder = Path(cfg["frames"])
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in tr.IMAGE_EXTS)
        if not files:
            raise ValueError(f"frames: no images in {folder}")
        from PIL import Image
        import numpy as np
        frames = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255)
                              for p in files])
        return nt.frames_data(clip, vae, frames, "\n".join(cfg["instructions"]))
    raise ValueError(f"data_mode: '{mode}' is not one of frames, folder, latents")


def run(cfg: dict) -> dict:
    if cfg.get("trainer") == "onestep":  # MoViE one-step student (Stage 4): keys in harness/train_onestep.py
        from .train_onestep import run as run_onestep
        return run_onestep(cfg)
    if cfg.get("trainer") == "eve_align":  # EVE LoRA alignment: keys in harness/train_eve_align.py
        from .train_eve_align import run as run_eve_align
        return run_eve_align(cfg)
    cfg = {**DEFAULTS, **cfg}
    if cfg["trainer"] != "cfg_distill":
        raise ValueError(f"trainer: '{cfg['trainer']}' is not known (cfg_distill, onestep, eve_align)")
    base = Path(cfg.get("base") or REPO_ROOT / ".comfy" / "train-base")
    boot_in_process(base)
    md, tr, nm, nt = _pack()
    rank, world = tr.ddp_init_from_env()
    if torch.cuda.is_available() and world > 1:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    model, clip, vae = _load_model(cfg)
    if cfg["vae"] != "checkpoint" and cfg["data_mode"] != "latents":
        import nodes as comfy_nodes  # TAESD files go in <base>/models/vae_approx
        vae = comfy_nodes.VAELoader().load_vae(cfg["vae"])[0]
    data = _data(cfg, clip, vae, md, tr, nt)
    out = Path(cfg["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    dc = md.DistillConfig(steps=int(cfg["steps"]), batch_size=int(cfg["batch_size"]),
                          learning_rate=float(cfg["learning_rate"]), kind=cfg["adapter"], rank=int(cfg["lora_rank"]),
                          seed=int(cfg["seed"]), checkpoint_every=int(cfg["checkpoint_every"]))
    d = md.Distiller(model, data, dc)

    def on_step(step, loss):
        if rank == 0:
            print(f"step {step}/{dc.steps} loss {loss:.6g}", flush=True)

    history = d.run(str(out / "checkpoint.safetensors"), bool(cfg["resume"]), on_step=on_step)
    sd, meta = d.adapter.to_state()
    tr.atomic_save_safetensors(sd, str(out / f"rank{rank}_weights.safetensors"), meta)
    if rank == 0:
        tr.atomic_save_safetensors(sd, str(out / "adapter.safetensors"), meta)
        img = tr.render_loss_curve(history, title="CFG distillation loss")
        import io as _io
        buf = _io.BytesIO()
        img.save(buf, format="PNG")
        tr.atomic_write_bytes(buf.getvalue(), str(out / "loss_curve.png"))
    if world > 1:
        import torch.distributed as dist
        dist.barrier()
        dist.destroy_process_group()
    return {"rank": rank, "world": world, "steps": d.adapter.steps, "final_loss": history[-1] if history else None}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", type=Path, help="JSON config (see harness/train.py)")
    a = ap.parse_args(argv)
    print(json.dumps(run(json.loads(a.config.read_text()))), flush=True)


if __name__ == "__main__":
    main()

"""Headless training: the pack's trainers from a JSON config, on a GPU server, alone or under
torchrun (DDP, one process per GPU; gloo on CPU):

    python -m harness.train run.json
    torchrun --nproc_per_node=4 -m harness.train run.json

Config keys (CFG distillation, ``"trainer": "cfg_distill"``):
  model          InstructPix2Pix checkpoint path (single file), or "fixture:tiny_ip2p" (tests)
  vae            "checkpoint" (default: the checkpoint's VAE) or a TAESD variant name ("taesd")
  data_mode      "frames" (data-free: a folder of frame images + "instructions": [...]),
                 "folder" ("dataset_folder": <id>.txt/<id>_source.png/<id>_edited.png triples, absolute
                 or relative to the base's input folder,
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
from pathlib import Path

import torch

from .embedded import REPO_ROOT, boot_in_process
from .pack import import_pack, running_pack_module

import_pack()  # the pure helpers below need no ComfyUI
from videoedit.nodes.core.atomic_file import atomic_save_safetensors, atomic_write_bytes  # noqa: E402
from videoedit.nodes.core.ddp import ddp_init_from_env  # noqa: E402
from videoedit.nodes.core.edit_datasets import IMAGE_EXTS  # noqa: E402
from videoedit.nodes.core.loss_curve import render_loss_curve  # noqa: E402

DEFAULTS = {"trainer": "cfg_distill", "vae": "checkpoint", "data_mode": "frames", "steps": 500, "batch_size": 4,
            "learning_rate": 1e-5, "adapter": "lora", "lora_rank": 16, "seed": 0, "checkpoint_every": 100,
            "resume": True, "resolution": 256, "instructions": []}


def _pack():
    """The pack's modules (imported as ComfyUI imported them): the CFG distillation engine, the
    guidance engine, the MoViE training data."""
    return tuple(running_pack_module(n) for n in ("movie.engine_cfg_distill", "movie.engine_guidance",
                                                  "movie.engine_training_data"))


def start_process_group() -> tuple[int, int]:
    """Join torchrun's process group (one process: rank 0 of 1) and pin this rank's GPU."""
    rank, world = ddp_init_from_env()
    if torch.cuda.is_available() and world > 1:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    return rank, world


def end_process_group(world: int) -> None:
    if world > 1:
        import torch.distributed as dist
        dist.barrier()
        dist.destroy_process_group()


def load_vae(name: str):
    """Core VAELoader's VAE (a TAESD variant: its files go in <base>/models/vae_approx)."""
    import nodes as comfy_nodes
    return comfy_nodes.VAELoader().load_vae(name)[0]



def run_printing_steps(run, total: int, out: Path, resume: bool, rank: int, label: str = "loss", extra=None):
    """``run(checkpoint, resume, on_step=)`` with output_dir/checkpoint.safetensors; rank 0 prints
    every step (and ``extra()``, e.g. the other losses). Returns the loss history."""
    def on_step(step, loss):
        if rank == 0:
            print(f"step {step}/{total} {label} {loss:.6g}" + (f" {extra()}" if extra else ""), flush=True)
    return run(str(out / "checkpoint.safetensors"), resume, on_step=on_step)

def save_loss_curve(history: list[float], title: str, path: Path) -> None:
    import io as _io
    buf = _io.BytesIO()
    render_loss_curve(history, title=title).save(buf, format="PNG")
    atomic_write_bytes(buf.getvalue(), str(path))


def allow_config_data_folder(folder: str) -> None:
    """An absolute dataset_folder of the config is a training-data folder the user listed (the nodes
    read data only from the input folder and such folders); a relative one is in the base's input folder."""
    if os.path.isabs(folder):
        running_pack_module("host.folders").allow_data_folder(folder)


def _load_model(cfg):
    spec = cfg["model"]
    if spec == "fixture:tiny_ip2p":
        from .fixtures import build_clip, build_model, tiny_unet_config
        return build_model(tiny_unet_config(ip2p=True), ip2p=True, seed=3), build_clip(tiny=True), None
    import comfy.sd
    model, clip, vae, *_ = comfy.sd.load_checkpoint_guess_config(spec, output_vae=True, output_clip=True)
    return model, clip, vae


def _data(cfg, clip, vae, md, nt):
    mode = cfg["data_mode"]
    if mode == "latents":
        from safetensors.torch import load_file
        t = load_file(cfg["latents"])
        return md.DistillData(t["x0"], t["source"], t["context"], t["empty"])
    if mode == "folder":
        allow_config_data_folder(cfg["dataset_folder"])
        return nt.folder_data(clip, vae, cfg["dataset_folder"], int(cfg["resolution"]))
    if mode == "frames":
        folder = Path(cfg["frames"])
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)
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
    md, nm, nt = _pack()
    rank, world = start_process_group()
    model, clip, vae = _load_model(cfg)
    if cfg["vae"] != "checkpoint" and cfg["data_mode"] != "latents":
        vae = load_vae(cfg["vae"])
    data = _data(cfg, clip, vae, md, nt)
    out = Path(cfg["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    dc = md.DistillConfig(steps=int(cfg["steps"]), batch_size=int(cfg["batch_size"]),
                          learning_rate=float(cfg["learning_rate"]), kind=cfg["adapter"], rank=int(cfg["lora_rank"]),
                          seed=int(cfg["seed"]), checkpoint_every=int(cfg["checkpoint_every"]))
    d = md.Distiller(model, data, dc)
    history = run_printing_steps(d.run, dc.steps, out, bool(cfg["resume"]), rank)
    sd, meta = d.adapter.to_state()
    atomic_save_safetensors(sd, str(out / f"rank{rank}_weights.safetensors"), meta)
    if rank == 0:
        atomic_save_safetensors(sd, str(out / "adapter.safetensors"), meta)
        save_loss_curve(history, "CFG distillation loss", out / "loss_curve.png")
    end_process_group(world)
    return {"rank": rank, "world": world, "steps": d.adapter.steps, "final_loss": history[-1] if history else None}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", type=Path, help="JSON config (see harness/train.py)")
    a = ap.parse_args(argv)
    print(json.dumps(run(json.loads(a.config.read_text()))), flush=True)


if __name__ == "__main__":
    main()

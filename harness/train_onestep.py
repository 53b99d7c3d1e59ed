"""Headless MoViE one-step distillation (Stage 4: v-prediction conversion + Alg. 2), called by
``python -m harness.train run.json`` (alone or under torchrun) when ``"trainer": "onestep"``.

Config keys: those of harness/train.py (model, vae, data_mode + its keys, batch_size, lora_rank,
adapter, seed, checkpoint_every, resume, output_dir, base), plus
  guidance_adapter  the teacher's guidance adapter (a CFG Distill (train) file), or "fixture:random"
                    (tests: a seeded random adapter on the tiny fixture model)
  v_steps, steps, v_learning_rate, learning_rate, disc_learning_rate, lambda_mse, lambda_gen,
  lambda_r1, embed_lr_scale
Writes to output_dir: checkpoint.safetensors, student.safetensors (the Load One-Step Student
format), loss_curve.png, rank<r>_weights.safetensors (every rank's final student + head weights).
"""
from __future__ import annotations

from pathlib import Path

from . import train
from .embedded import REPO_ROOT, boot_in_process
from .pack import running_pack_module
from .train import (atomic_save_safetensors, end_process_group, load_vae, run_printing_steps, save_loss_curve,
                    start_process_group)

DEFAULTS = {"v_steps": 100, "steps": 500, "v_learning_rate": 1e-6, "learning_rate": 1e-5, "disc_learning_rate": 1e-5,
            "lambda_mse": 1.0, "lambda_gen": 0.1, "lambda_r1": 0.1, "embed_lr_scale": 1.0}


def _teacher(cfg, model, nm):
    spec = cfg.get("guidance_adapter")
    if spec == "fixture:random":
        from .onestep_fixture import random_teacher_adapter
        return nm.make_student(model, random_teacher_adapter(model))
    if not spec:
        raise ValueError("guidance_adapter: the one-step student starts from the guidance-distilled teacher; give "
                         "the CFG Distill (train) adapter file of this model")
    return nm.make_student(model, nm.load_guidance_adapter(spec))


def run(cfg: dict) -> dict:
    cfg = {**train.DEFAULTS, **DEFAULTS, **cfg}
    boot_in_process(Path(cfg.get("base") or REPO_ROOT / ".comfy" / "train-base"))
    md, nm, nt = train._pack()
    od, nmo = running_pack_module("movie.engine_onestep_distill"), running_pack_module("movie.engine_onestep")
    rank, world = start_process_group()
    model, clip, vae = train._load_model(cfg)
    if cfg["vae"] != "checkpoint" and cfg["data_mode"] != "latents":
        vae = load_vae(cfg["vae"])
    teacher = _teacher(cfg, model, nm)
    data = train._data(cfg, clip, vae, md, nt)
    out = Path(cfg["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    oc = od.OneStepConfig(v_steps=int(cfg["v_steps"]), steps=int(cfg["steps"]), batch_size=int(cfg["batch_size"]),
                          v_learning_rate=float(cfg["v_learning_rate"]), learning_rate=float(cfg["learning_rate"]),
                          disc_learning_rate=float(cfg["disc_learning_rate"]), lambda_mse=float(cfg["lambda_mse"]),
                          lambda_gen=float(cfg["lambda_gen"]), lambda_r1=float(cfg["lambda_r1"]),
                          embed_lr_scale=float(cfg["embed_lr_scale"]), kind=cfg["adapter"], rank=int(cfg["lora_rank"]),
                          seed=int(cfg["seed"]), checkpoint_every=int(cfg["checkpoint_every"]))
    d = od.OneStepDistiller(teacher, data, oc)
    history = run_printing_steps(d.run, oc.v_steps + oc.steps, out, bool(cfg["resume"]), rank)
    sd, meta = d.adapter.to_state()
    sd.update({f"heads.{k}": v.detach().float().contiguous().cpu() for k, v in d.heads.state_dict().items()})
    atomic_save_safetensors(sd, str(out / f"rank{rank}_weights.safetensors"), meta)
    if rank == 0:
        nmo.save_onestep_student(d.adapter, d.fingerprint, oc, str(out / "student.safetensors"))
        save_loss_curve(history, "one-step distillation loss", out / "loss_curve.png",
                        **od.loss_curve_series(history, d))
    end_process_group(world)
    return {"rank": rank, "world": world, "steps": d.adapter.steps, "final_loss": history[-1] if history else None}

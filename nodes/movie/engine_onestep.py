"""MoViE's one-step student on a ComfyUI model (engine): the student file (adapter A2 in the
guidance-adapter layout, marked v-prediction and tied to its teacher), the student model (teacher
+ A2 + v-prediction sampling, its settings attached where clones keep them) and the one-step
sampler (LCM-style, 1 UNet pass per frame, both knobs live). Training is
``engine_onestep_distill.py``, the math ``onestep.py``.
"""
from __future__ import annotations

import json
import os
from types import SimpleNamespace

import torch

import comfy.model_management
import comfy.samplers
import comfy.utils

from ..core.atomic_file import atomic_save_safetensors
from ..core.weight_files import read_weights
from ..host.attach import attach, attached
from ..host.folders import model_file_names, model_file_path, register_model_folder
from ..host.model_family import require_ip2p
from ..host.model_sampling import with_discrete_sampling
from . import guidance as movie, onestep as mo
import comfy.model_sampling

from .engine_guidance import (ONESTEP_FORMAT, check_source, distilled_guider, guidance_adapter_of, make_student,
                              student_patch)

STUDENT_FOLDER = "videoedit_onestep"
STUDENT_FORMAT = ONESTEP_FORMAT
TRAINED_STEPS = 1  # the student is trained to go from noise to x_0 in one pass
ONESTEP_KEY = "videoedit.movie.onestep_student"  # attachment: a one-step student's settings

register_model_folder(STUDENT_FOLDER)


# ----------------------------------------------------------------- the teacher

def teacher_adapter(model, input_name: str = "model") -> movie.GuidanceAdapter:
    """The guidance adapter of a guidance-distilled teacher, or a clear error."""
    require_ip2p(model, input_name)
    ad = guidance_adapter_of(model)
    if student_patch(model) is None or ad is None:
        raise ValueError(f"{input_name}: not the guidance-distilled teacher (no guidance embedding): the one-step "
                         "student starts from the CFG-distilled model (MoViE Stage 3). Connect the MODEL output of "
                         "Load Guidance Adapter or CFG Distill (train)")
    if onestep_info(model) is not None or \
            isinstance(model.get_model_object("model_sampling"), comfy.model_sampling.V_PREDICTION):
        raise ValueError(f"{input_name}: this is already a v-prediction (one-step) model; connect the "
                         "guidance-distilled epsilon-prediction teacher it came from")
    return ad



# ----------------------------------------------------------------- the student file

def save_onestep_student(adapter: movie.GuidanceAdapter, fingerprint: str, cfg, path: str,
                         extra_meta: dict | None = None) -> None:
    """The student's adapter A2 in the guidance-adapter layout, marked as a v-prediction one-step
    student of the teacher whose adapter hashes to ``fingerprint`` (``cfg``: the run's OneStepConfig)."""
    sd, meta = adapter.to_state()
    meta.update({"format": STUDENT_FORMAT, "teacher_adapter": fingerprint, "prediction": "v",
                 "trained_steps": str(TRAINED_STEPS), "v_steps": str(cfg.v_steps), "adversarial_steps": str(cfg.steps),
                 "student_timesteps": json.dumps(mo.euler_discrete_timesteps().tolist()), **(extra_meta or {})})
    atomic_save_safetensors(sd, path, meta)


def load_onestep_student(path: str, input_name: str = "student_name") -> tuple[movie.GuidanceAdapter, dict]:
    """A one-step student file (core.weight_files: safetensors only, every failure named)."""
    sd, meta = read_weights(path, input_name, "pick a file written by One-Step Distill (train), or copy it again")
    name = os.path.basename(path)
    if meta.get("format") != STUDENT_FORMAT:
        raise ValueError(f"{input_name}: '{name}' is not a one-step student (metadata format "
                         f"{meta.get('format')!r}); pick a file written by One-Step Distill (train). Guidance "
                         "adapters load with Load Guidance Adapter")
    ad = movie.GuidanceAdapter.from_state(sd, {**meta, "format": movie.ADAPTER_FORMAT}, source=f"{input_name}: '{name}'")
    if not meta.get("trained_steps", str(TRAINED_STEPS)).isdigit():
        raise ValueError(f"{input_name}: '{name}' has corrupt metadata (trained_steps {meta['trained_steps']!r}); "
                         "pick a file written by One-Step Distill (train), or copy it again")
    return ad, meta


def make_onestep_student(teacher, adapter: movie.GuidanceAdapter, meta: dict):
    """Teacher + A2 merged at load + v-prediction sampling (the discrete schedule's object patch)."""
    fp = mo.adapter_fingerprint(teacher_adapter(teacher))
    if meta.get("teacher_adapter") not in (None, fp):
        raise ValueError(f"model: this one-step student was trained on another guidance-distilled teacher (adapter "
                         f"{meta['teacher_adapter']}, this model's is {fp}); load the guidance adapter it was "
                         "distilled from (see the training run's info) before Load One-Step Student")
    v_model = with_discrete_sampling(teacher, "v_prediction", zsnr=False)
    m = make_student(v_model, adapter)
    attach(m, ONESTEP_KEY, {
        "trained_steps": int(meta.get("trained_steps", TRAINED_STEPS)), "steps": adapter.steps, "teacher_adapter": fp,
        "s_i_range": list(adapter.s_i_range), "s_t_range": list(adapter.s_t_range)})
    return m


def onestep_info(model) -> dict | None:
    """The settings a one-step student carries (None for any other model)."""
    return attached(model, ONESTEP_KEY)


def onestep_student_names() -> list[str]:
    return model_file_names(STUDENT_FOLDER)


def load_onestep_model(teacher, student_name: str):
    """Load One-Step Student: (the student model, its adapter, the file's metadata)."""
    ad, meta = load_onestep_student(model_file_path(STUDENT_FOLDER, student_name, "student_name"))
    return make_onestep_student(teacher, ad, meta), ad, meta


# ------------------------------------------------------------------------ sampling

def sample_onestep(model, instruction, source_latent, s_i: float, s_t: float, steps: int, seed: int):
    """One-Step Sampler: LCM-style sampling of the student from pure noise at its trained timesteps,
    with progress and cancel. Returns (LATENT samples, info lines)."""
    require_ip2p(model)
    meta = onestep_info(model)
    if meta is None:
        raise ValueError("model: not a one-step student; connect the MODEL output of One-Step Distill (train) or "
                         "Load One-Step Student (a CFG-distilled model samples with CFG-Distilled Guider)")
    src = check_source(source_latent)
    guider = distilled_guider(model, instruction, src, s_i, s_t)
    ms = model.get_model_object("model_sampling")
    ts = mo.lcm_timesteps(steps)
    sigmas = torch.cat([ms.sigmas.float().cpu()[ts], torch.zeros(1)])
    noise = torch.randn(src.shape, generator=torch.Generator().manual_seed(seed))
    pbar = comfy.utils.ProgressBar(steps)

    def callback(i, denoised, x, total):
        comfy.model_management.throw_exception_if_processing_interrupted()
        pbar.update_absolute(i + 1, steps)

    out = guider.sample(noise, torch.zeros_like(src), comfy.samplers.sampler_object("lcm"), sigmas,
                        callback=callback, disable_pbar=True, seed=seed)
    lines = [f"one-step student: {steps} UNet pass(es) per frame at timesteps {ts.tolist()}, "
             f"image_guidance={s_i:g}, text_guidance={s_t:g}"]
    trained = int(meta.get("trained_steps", TRAINED_STEPS))
    if steps > trained:
        lines.append(f"note: the student was trained for {trained} step; {steps} steps run LCM-style (re-noising "
                     "its x_0 between passes) at timesteps it was not trained to chain: allowed, but may not "
                     f"improve the edit and costs {steps} UNet passes per frame")
    ranges = SimpleNamespace(s_i_range=meta["s_i_range"], s_t_range=meta["s_t_range"])
    lines += movie.GuidanceAdapter.in_range(ranges, s_i, s_t)
    return {"samples": out.float().cpu()}, "\n".join(lines)

"""MoViE one-step student (Stage 4): One-Step Distill (train), Load One-Step Student and the
One-Step Sampler (LCM-style, 1 UNet pass per frame, both knobs live). The loop is
movie_onestep_distill.py, the math movie_onestep.py.
"""
from __future__ import annotations

import json
import os
from types import SimpleNamespace

import torch
from safetensors import safe_open
from safetensors.torch import load_file

import comfy.model_management
import comfy.samplers
import comfy.utils
import folder_paths
from comfy_api.v0_0_2 import io
from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete

from . import movie, movie_onestep as mo, training
from .movie_onestep_distill import OneStepConfig, OneStepDistiller, teacher_adapter
from .nodes_movie import (CATEGORY, DistilledGuider, _S_I_TOOLTIP, _S_T_TOOLTIP, check_source, make_student,
                          register_folder, require_ip2p, with_image)
from .nodes_movie_train import DATA_MODES, folder_data, frames_data, run_with_live_chart

STUDENT_FOLDER = "videoedit_onestep"
STUDENT_FORMAT = "videoedit.movie.onestep_student"
TRAINED_STEPS = 1  # the student is trained to go from noise to x_0 in one pass
ONESTEP_KEY = "videoedit_onestep"  # transformer_options entry marking a one-step student


register_folder(STUDENT_FOLDER)


# ----------------------------------------------------------------- the student file

def save_student(adapter: movie.GuidanceAdapter, fingerprint: str, cfg: OneStepConfig, path: str) -> None:
    """The student's adapter A2 in the guidance-adapter layout, marked as a v-prediction one-step
    student of the teacher whose adapter hashes to ``fingerprint``."""
    sd, meta = adapter.to_state()
    meta.update({"format": STUDENT_FORMAT, "teacher_adapter": fingerprint, "prediction": "v",
                 "trained_steps": str(TRAINED_STEPS), "v_steps": str(cfg.v_steps), "adversarial_steps": str(cfg.steps),
                 "student_timesteps": json.dumps(mo.euler_discrete_timesteps().tolist())})
    training.atomic_save_safetensors(sd, path, meta)


def load_student(path: str) -> tuple[movie.GuidanceAdapter, dict]:
    with safe_open(path, framework="pt") as f:
        meta = dict(f.metadata() or {})
    if meta.get("format") != STUDENT_FORMAT:
        raise ValueError(f"student_name: {os.path.basename(path)} is not a one-step student (metadata format "
                         f"{meta.get('format')!r}); pick a file written by One-Step Distill (train). Guidance "
                         "adapters load with Load Guidance Adapter")
    ad = movie.GuidanceAdapter.from_state(load_file(path), {**meta, "format": movie.ADAPTER_FORMAT},
                                          source=os.path.basename(path))
    return ad, meta


def make_onestep_student(teacher, adapter: movie.GuidanceAdapter, meta: dict):
    """Teacher + A2 merged at load + v-prediction sampling (core ModelSamplingDiscrete's patch)."""
    fp = mo.adapter_fingerprint(teacher_adapter(teacher))
    if meta.get("teacher_adapter") not in (None, fp):
        raise ValueError(f"model: this one-step student was trained on another guidance-distilled teacher (adapter "
                         f"{meta['teacher_adapter']}, this model's is {fp}); load the guidance adapter it was "
                         "distilled from (see the training run's info) before Load One-Step Student")
    v_model = ModelSamplingDiscrete().patch(teacher, "v_prediction", False)[0]
    m = make_student(v_model, adapter)
    # in transformer_options so that it survives clone() (Cross-Frame Attention and other patches)
    m.model_options["transformer_options"][ONESTEP_KEY] = {
        "trained_steps": int(meta.get("trained_steps", TRAINED_STEPS)), "steps": adapter.steps, "teacher_adapter": fp,
        "s_i_range": list(adapter.s_i_range), "s_t_range": list(adapter.s_t_range)}
    return m


def onestep_info(model) -> dict | None:
    return model.model_options.get("transformer_options", {}).get(ONESTEP_KEY)


def student_names() -> list[str]:
    return [n for n in folder_paths.get_filename_list(STUDENT_FOLDER) if n.endswith(".safetensors")]


def paths_for(name: str) -> tuple[str, str]:
    name = training.check_output_name(name)
    ckpt = os.path.join(folder_paths.get_output_directory(), "videoedit_training", name, "onestep_checkpoint.safetensors")
    return ckpt, os.path.join(folder_paths.get_folder_paths(STUDENT_FOLDER)[0], f"{name}.safetensors")


# ------------------------------------------------------------------------ training

def run_training(teacher, data, cfg: OneStepConfig, ckpt, resume, node=None, name="", feature_model=None):
    """OneStepDistiller.run with ComfyUI's progress bar, cancel and the live-chart messages."""
    d = OneStepDistiller(teacher, data, cfg, feature_model=feature_model)
    history, start = run_with_live_chart(d.run, cfg.v_steps + cfg.steps, ckpt, resume, node, name)
    return d, history, start


class OneStepDistillTrain(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditOneStepDistillTrain",
            display_name="One-Step Distill (train) (MoViE)",
            category=CATEGORY,
            description=(
                "MoViE Stage 4: turns the guidance-distilled InstructPix2Pix into a ONE-step student that keeps both "
                "knobs. First fine-tunes it to v-prediction (matching the teacher's v), then adversarial distillation "
                "(Alg. 2): the student denoises at 8 EulerDiscrete timesteps to x_0 in one pass given the knobs; the "
                "teacher makes x_0 in 5 LCM steps; a discriminator (frozen teacher encoder + trainable spatial heads "
                "conditioned on the knobs, t and the prompt; noise t' ~ logit-normal(-1, 1); hinge + R1) judges; the "
                "student loss is lambda_mse MSE + lambda_gen GAN. Progress, live loss chart, cancel, checkpoints, "
                "exact resume; saves the student to models/videoedit_onestep."),
            inputs=[
                io.Model.Input("model", tooltip="The guidance-distilled teacher: the MODEL output of Load Guidance "
                                                "Adapter or CFG Distill (train)."),
                io.Clip.Input("clip", tooltip="The teacher's CLIP, to encode the instructions and the empty prompt."),
                io.Vae.Input("vae", tooltip="VAE (or TAESD) to encode images to latents; the one you will edit with."),
                io.Combo.Input("data_mode", options=list(DATA_MODES), default=DATA_MODES[0],
                               tooltip="'my frames': your own frames and instructions (the teacher makes the targets). "
                                       "'dataset folder': (source, instruction, edited) triples."),
                io.String.Input("instructions", multiline=True, default="make it look like a watercolor painting",
                                tooltip="Data-free mode: the edit instructions you will use, one per line."),
                io.String.Input("dataset_folder", default="",
                                tooltip="Dataset mode: folder (absolute, or inside ComfyUI's input folder) with "
                                        "<id>.txt + <id>_source.png + <id>_edited.png per sample."),
                io.Int.Input("resolution", default=256, min=64, max=2048, step=8,
                             tooltip="Dataset mode: images are center-cropped and resized to this square size."),
                io.Int.Input("v_steps", default=100, min=0, max=1_000_000,
                             tooltip="Steps of the v-prediction conversion before the adversarial stage (0: skip)."),
                io.Int.Input("steps", default=500, min=0, max=1_000_000,
                             tooltip="Adversarial (Alg. 2) steps (the paper: 20k)."),
                io.Int.Input("batch_size", default=4, min=1, max=512, tooltip="Samples per step; as large as memory allows."),
                io.Float.Input("v_learning_rate", default=1e-6, min=1e-9, max=1.0, step=1e-7, round=1e-9,
                               tooltip="Adam learning rate of the v-prediction conversion (the paper: 1e-6)."),
                io.Float.Input("learning_rate", default=1e-5, min=1e-9, max=1.0, step=1e-6, round=1e-9,
                               tooltip="Adam learning rate of the student in Alg. 2 (the paper: 1e-5)."),
                io.Float.Input("disc_learning_rate", default=1e-5, min=1e-9, max=1.0, step=1e-6, round=1e-9,
                               tooltip="Adam learning rate of the discriminator's spatial heads."),
                io.Float.Input("lambda_mse", default=1.0, min=0.0, max=100.0, step=0.01,
                               tooltip="Weight of the MSE between the student's and the teacher's x_0."),
                io.Float.Input("lambda_gen", default=0.1, min=0.0, max=100.0, step=0.01,
                               tooltip="Weight of the adversarial (GAN) term of the student's loss."),
                io.Float.Input("lambda_r1", default=0.1, min=0.0, max=100.0, step=0.01,
                               tooltip="Weight of the R1 gradient penalty on real samples (0: off)."),
                io.Combo.Input("adapter", options=["lora", "full"], default="lora",
                               tooltip="Train LoRA deltas on every UNet layer (small file) or full fine-tune deltas."),
                io.Int.Input("lora_rank", default=16, min=1, max=512, tooltip="LoRA rank (adapter = lora)."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Seed of the draws; same seed = same run."),
                io.Int.Input("checkpoint_every", default=100, min=1, max=1_000_000,
                             tooltip="Write a checkpoint (atomically) every this many steps; a killed run resumes there."),
                io.String.Input("output_name", default="movie_onestep",
                                tooltip="File name (no folders) of the student in models/videoedit_onestep; its "
                                        "checkpoint goes to output/videoedit_training/<name>."),
                io.Boolean.Input("resume", default=True,
                                 tooltip="Continue from this output name's checkpoint if there is one (same settings)."),
                io.Image.Input("frames", optional=True, tooltip="Data-free mode: frames of your clip (IMAGE batch)."),
                io.Model.Input("discriminator_model", optional=True,
                               tooltip="Feature network of the discriminator (its frozen encoder arm); empty: the "
                                       "teacher's own UNet, as in MoViE. Must be an InstructPix2Pix UNet."),
            ],
            outputs=[io.Model.Output(tooltip="The one-step student; sample it with One-Step Sampler at 1 step."),
                     io.Image.Output(display_name="loss_curve", tooltip="The loss per step (v-MSE, then the generator loss)."),
                     io.String.Output(display_name="info", tooltip="Where the student was saved and the final losses.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, clip, vae, data_mode, instructions, dataset_folder, resolution, v_steps, steps,
                batch_size, v_learning_rate, learning_rate, disc_learning_rate, lambda_mse, lambda_gen, lambda_r1,
                adapter, lora_rank, seed, checkpoint_every, output_name, resume, frames=None,
                discriminator_model=None) -> io.NodeOutput:
        ckpt, path = paths_for(output_name)
        teacher_adapter(model)
        if v_steps + steps < 1:
            raise ValueError("steps: v_steps + steps is 0; train at least one step")
        if data_mode == DATA_MODES[0]:
            data = frames_data(clip, vae, frames, instructions)
        else:
            data = folder_data(clip, vae, dataset_folder, resolution)
        cfg = OneStepConfig(v_steps=v_steps, steps=steps, batch_size=batch_size, v_learning_rate=v_learning_rate,
                            learning_rate=learning_rate, disc_learning_rate=disc_learning_rate, lambda_mse=lambda_mse,
                            lambda_gen=lambda_gen, lambda_r1=lambda_r1, kind=adapter, rank=lora_rank, seed=seed,
                            checkpoint_every=checkpoint_every)
        node = cls.hidden.unique_id if cls.hidden is not None else None
        d, history, start = run_training(model, data, cfg, ckpt, resume, node, output_name, discriminator_model)
        save_student(d.adapter, d.fingerprint, cfg, path)
        student = make_onestep_student(model, d.adapter, {"teacher_adapter": d.fingerprint})
        curve = training.image_to_tensor(training.render_loss_curve(history, title="one-step distillation loss"))
        last = f"{history[-1]:.5g}" if history else "n/a"
        last_d = f"{d.d_losses[-1]:.4g}" if d.d_losses else "n/a"
        text = (f"saved {path} after {d.adapter.steps} steps ({cfg.v_steps} v-prediction + {cfg.steps} adversarial, "
                f"{len(data.x0)} training pairs); final loss {last}, discriminator loss {last_d}; teacher adapter "
                f"{d.fingerprint}" + (f"; resumed at step {start}" if start else ""))
        return io.NodeOutput(student, curve, text)


class LoadOneStepStudent(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditLoadOneStepStudent",
            display_name="Load One-Step Student (MoViE)",
            category=CATEGORY,
            description=(f"Turns the guidance-distilled teacher into its one-step student with a file from "
                         f"models/{STUDENT_FOLDER} (written by One-Step Distill (train)): weight deltas + scale "
                         "embedding on top of the teacher, v-prediction. Sample it with One-Step Sampler."),
            inputs=[
                io.Model.Input("model", tooltip="The guidance-distilled teacher the student was trained on (the MODEL "
                                                "output of Load Guidance Adapter with the same adapter)."),
                io.Combo.Input("student_name", options=student_names(),
                               tooltip=f"One-step student file in models/{STUDENT_FOLDER}."),
            ],
            outputs=[io.Model.Output(tooltip="The one-step student."),
                     io.String.Output(display_name="info", tooltip="What the student was trained on.")],
        )

    @classmethod
    def execute(cls, model, student_name) -> io.NodeOutput:
        path = folder_paths.get_full_path(STUDENT_FOLDER, student_name)
        if path is None:
            raise FileNotFoundError(f"student_name: '{student_name}' is not in models/{STUDENT_FOLDER} "
                                    f"({', '.join(folder_paths.get_folder_paths(STUDENT_FOLDER))}); refresh the list")
        ad, meta = load_student(path)
        student = make_onestep_student(model, ad, meta)
        info = (f"{student_name}: one-step student ({ad.kind}, rank {ad.rank}), {meta.get('v_steps')} v-prediction + "
                f"{meta.get('adversarial_steps')} adversarial steps, trained image_guidance {ad.s_i_range}, "
                f"text_guidance {ad.s_t_range}")
        return io.NodeOutput(student, info)


class OneStepSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditOneStepSampler",
            display_name="One-Step Sampler (MoViE)",
            category=CATEGORY,
            description=(
                "Edits with the one-step student: ONE UNet pass per frame (LCM-style, from pure noise at t = 999), "
                "image and text guidance still as knobs. More steps are allowed (LCM re-noising between passes) but "
                "the student was trained for one; the info output says so. Put Cross-Frame Attention on the model "
                "for a consistent clip; decode with TAESD Decode."),
            inputs=[
                io.Model.Input("model", tooltip="The one-step student (One-Step Distill (train) or Load One-Step Student)."),
                io.Conditioning.Input("instruction", tooltip="The edit instruction, from CLIP Text Encode."),
                io.Latent.Input("source_latent", tooltip="Latents of the source frames (TAESD Encode / VAE Encode)."),
                io.Float.Input("image_guidance", default=1.5, min=0.0, max=30.0, step=0.05, tooltip=_S_I_TOOLTIP),
                io.Float.Input("text_guidance", default=7.5, min=0.0, max=30.0, step=0.1, tooltip=_S_T_TOOLTIP),
                io.Int.Input("steps", default=1, min=1, max=mo.LCM_ORIGINAL_STEPS,
                             tooltip="UNet passes per frame. The student is trained for 1 (MoViE); more run LCM-style."),
                io.Int.Input("seed", default=0, min=0, max=2**63 - 1, control_after_generate=True,
                             tooltip="Seed of the starting noise."),
            ],
            outputs=[io.Latent.Output(tooltip="The edited latents; decode with TAESD Decode."),
                     io.String.Output(display_name="info", tooltip="Settings and notes (steps beyond the trained one, "
                                                                   "knobs outside the trained range).")],
        )

    @classmethod
    def execute(cls, model, instruction, source_latent, image_guidance, text_guidance, steps, seed) -> io.NodeOutput:
        require_ip2p(model)
        meta = onestep_info(model)
        if meta is None:
            raise ValueError("model: not a one-step student; connect the MODEL output of One-Step Distill (train) or "
                             "Load One-Step Student (a CFG-distilled model samples with CFG-Distilled Guider)")
        src = check_source(source_latent)
        guider = DistilledGuider(model)
        guider.set_conds(with_image(instruction, src))
        guider.set_scales(image_guidance, text_guidance)
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
                 f"image_guidance={image_guidance:g}, text_guidance={text_guidance:g}"]
        trained = int(meta.get("trained_steps", TRAINED_STEPS))
        if steps > trained:
            lines.append(f"note: the student was trained for {trained} step; {steps} steps run LCM-style (re-noising "
                         "its x_0 between passes) at timesteps it was not trained to chain: allowed, but may not "
                         f"improve the edit and costs {steps} UNet passes per frame")
        ranges = SimpleNamespace(s_i_range=meta["s_i_range"], s_t_range=meta["s_t_range"])
        lines += movie.GuidanceAdapter.in_range(ranges, image_guidance, text_guidance)
        return io.NodeOutput({"samples": out.float().cpu()}, "\n".join(lines))


NODES = [OneStepDistillTrain, LoadOneStepStudent, OneStepSampler]

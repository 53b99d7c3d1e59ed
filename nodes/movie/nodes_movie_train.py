"""MoViE's trainer nodes (V3): CFG Distill (train), Alg. 1, and One-Step Distill (train), Stage 4.
Both show progress and a live loss chart, stop at cancel, checkpoint atomically and resume
exactly (host/training_ui.py, core/trainer_loop.py); the trainers are ``engine_cfg_distill.py``
and ``engine_onestep_distill.py``, their data ``engine_training_data.py``.
"""
from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..host.model_family import require_ip2p
from ..host.trainer_inputs import node_id, overwrite_input, run_inputs, trainer_outputs
from ..host.training_ui import loss_curve_image, resumed_note
from . import CATEGORY, engine_cfg_distill as cfg_distill, engine_onestep_distill as onestep_distill
from .engine_guidance import ADAPTER_FOLDER
from .engine_onestep import STUDENT_FOLDER, teacher_adapter
from .engine_training_data import DATA_MODES, training_data


def data_inputs() -> list:
    """clip, vae, data_mode, instructions, dataset_folder, resolution (both trainers, in this order)."""
    return [
        io.Clip.Input("clip", tooltip="The teacher's CLIP, to encode the instructions and the empty prompt."),
        io.Vae.Input("vae", tooltip="VAE (or TAESD) to encode images to latents; the one you will edit with."),
        io.Combo.Input("data_mode", options=list(DATA_MODES), default=DATA_MODES[0],
                       tooltip="'my frames': targets come from the teacher on your own frames and instructions "
                               "(no dataset needed). 'dataset folder': (source, instruction, edited) triples."),
        io.String.Input("instructions", multiline=True, default="make it look like a watercolor painting",
                        tooltip="Data-free mode: the edit instructions you will use, one per line."),
        io.String.Input("dataset_folder", default="",
                        tooltip="Dataset mode: folder inside ComfyUI's input folder (or in a folder listed under "
                                "videoedit_datasets in extra_model_paths.yaml) with "
                                "<id>.txt + <id>_source.png + <id>_edited.png per sample."),
        io.Int.Input("resolution", default=256, min=64, max=2048, step=8,
                     tooltip="Dataset mode: images are center-cropped and resized to this square size."),
    ]


def batch_size_input():
    return io.Int.Input("batch_size", default=4, min=1, max=512, tooltip="Samples per step; as large as memory allows.")


def adapter_inputs() -> list:
    """adapter (lora / full), lora_rank."""
    return [io.Combo.Input("adapter", options=["lora", "full"], default="lora",
                           tooltip="Train LoRA deltas on every UNet layer (small file) or full fine-tune deltas."),
            io.Int.Input("lora_rank", default=16, min=1, max=512, tooltip="LoRA rank (adapter = lora).")]


def frames_input():
    return io.Image.Input("frames", optional=True, tooltip="Data-free mode: frames of your clip (IMAGE batch).")


class CFGDistillTrain(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditCFGDistillTrain",
            display_name="CFG Distill (train) (MoViE)",
            category=CATEGORY,
            description=(
                "Multimodal guidance distillation (MoViE Alg. 1): trains a guidance adapter so the InstructPix2Pix "
                "student predicts the 3-pass two-knob guidance (Eq. 1) in ONE pass, for any image guidance in "
                "[1, 3] and text guidance in [2, 14]. Shows progress and a live loss chart, stops at cancel, "
                "checkpoints every N steps and resumes exactly; saves the adapter to models/videoedit_guidance."),
            inputs=[
                io.Model.Input("model", tooltip="The InstructPix2Pix teacher (8 input channels, epsilon prediction)."),
                *data_inputs(),
                io.Int.Input("steps", default=500, min=1, max=1_000_000, tooltip="Total optimizer steps (the paper: 5k)."),
                batch_size_input(),
                io.Float.Input("learning_rate", default=1e-5, min=1e-8, max=1.0, step=1e-6, round=1e-8,
                               tooltip="Adam learning rate (the paper: 1e-5)."),
                *adapter_inputs(),
                *run_inputs("movie_guidance", f"the adapter in models/{ADAPTER_FOLDER}", cfg_distill.TRAINER_KIND),
                frames_input(),
                overwrite_input(f"models/{ADAPTER_FOLDER}"),
            ],
            outputs=trainer_outputs("The distilled student; sample it with CFG-Distilled Guider.", "The loss per step.",
                                    "Where the adapter was saved and the final loss."),
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, clip, vae, data_mode, instructions, dataset_folder, resolution, steps, batch_size,
                learning_rate, adapter, lora_rank, seed, checkpoint_every, output_name, resume,
                frames=None, overwrite=False) -> io.NodeOutput:
        require_ip2p(model)
        ckpt, adapter_path, run_meta = cfg_distill.run_paths(output_name, resume, overwrite)  # before any work
        data = training_data(clip, vae, data_mode, frames, instructions, dataset_folder, resolution)
        cfg = cfg_distill.DistillConfig(steps=steps, batch_size=batch_size, learning_rate=learning_rate, kind=adapter,
                                        rank=lora_rank, seed=seed, checkpoint_every=checkpoint_every)
        student, ad, history, start = cfg_distill.train_and_save(model, data, cfg, ckpt, adapter_path, resume,
                                                                 node_id(cls), output_name, run_meta)
        last = f"{history[-1]:.5g}" if history else "n/a"
        text = (f"saved {adapter_path} after {ad.steps} steps ({len(data.x0)} training pairs); final loss {last}"
                + resumed_note(start))
        return io.NodeOutput(student, loss_curve_image(history, "CFG distillation loss"), text)


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
                *data_inputs(),
                io.Int.Input("v_steps", default=100, min=0, max=1_000_000,
                             tooltip="Steps of the v-prediction conversion before the adversarial stage (0: skip)."),
                io.Int.Input("steps", default=500, min=0, max=1_000_000,
                             tooltip="Adversarial (Alg. 2) steps (the paper: 20k)."),
                batch_size_input(),
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
                *adapter_inputs(),
                *run_inputs("movie_onestep", f"the student in models/{STUDENT_FOLDER}", onestep_distill.TRAINER_KIND),
                frames_input(),
                io.Model.Input("discriminator_model", optional=True,
                               tooltip="Feature network of the discriminator (its frozen encoder arm); empty: the "
                                       "teacher's own UNet, as in MoViE. Must be an InstructPix2Pix UNet."),
                overwrite_input(f"models/{STUDENT_FOLDER}"),
            ],
            outputs=trainer_outputs("The one-step student; sample it with One-Step Sampler at 1 step.",
                                    "The loss per step (v-MSE, then the generator loss).",
                                    "Where the student was saved and the final losses."),
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, clip, vae, data_mode, instructions, dataset_folder, resolution, v_steps, steps,
                batch_size, v_learning_rate, learning_rate, disc_learning_rate, lambda_mse, lambda_gen, lambda_r1,
                adapter, lora_rank, seed, checkpoint_every, output_name, resume, frames=None,
                discriminator_model=None, overwrite=False) -> io.NodeOutput:
        teacher_adapter(model)
        if v_steps + steps < 1:
            raise ValueError("steps: v_steps + steps is 0; train at least one step")
        ckpt, path, run_meta = onestep_distill.run_paths(output_name, resume, overwrite)  # before any work
        data = training_data(clip, vae, data_mode, frames, instructions, dataset_folder, resolution)
        cfg = onestep_distill.OneStepConfig(
            v_steps=v_steps, steps=steps, batch_size=batch_size, v_learning_rate=v_learning_rate,
            learning_rate=learning_rate, disc_learning_rate=disc_learning_rate, lambda_mse=lambda_mse,
            lambda_gen=lambda_gen, lambda_r1=lambda_r1, kind=adapter, rank=lora_rank, seed=seed,
            checkpoint_every=checkpoint_every)
        student, d, history, start = onestep_distill.train_and_save(model, data, cfg, ckpt, path, resume, node_id(cls),
                                                                    output_name, discriminator_model, run_meta)
        last = f"{history[-1]:.5g}" if history else "n/a"
        last_d = f"{d.d_losses[-1]:.4g}" if d.d_losses else "n/a"
        text = (f"saved {path} after {d.adapter.steps} steps ({cfg.v_steps} v-prediction + {cfg.steps} adversarial, "
                f"{len(data.x0)} training pairs); final loss {last}, discriminator loss {last_d}; teacher adapter "
                f"{d.fingerprint}" + resumed_note(start))
        return io.NodeOutput(student, loss_curve_image(history, "one-step distillation loss"), text)


NODES = [CFGDistillTrain, OneStepDistillTrain]

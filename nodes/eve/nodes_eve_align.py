"""LoRA Aligner (train) (V3 node): EVE's Factorized Diffusion Distillation with the pack's training
infrastructure (progress, live loss chart, cancel, atomic checkpoints, exact resume, loss-curve
image). Data and files: ``engine_align_data.py``; the trainer ``engine_align_trainer.py``; the
math ``align.py``.

Data: a folder with one ``.jsonl`` file, one clip per line:
``{"video": "clip.mp4" | "frames_folder", "instruction": "...", "caption": "..."}`` (paths
relative to the folder). No edited videos: the teachers supervise.
"""
from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..host.trainer_inputs import node_id, overwrite_input, run_inputs, trainer_outputs
from ..host.training_ui import loss_curve_image, resumed_note
from . import CATEGORY, engine_align_data as data
from .engine_align_trainer import AlignConfig


class LoRAAligner(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditEVELoRAAligner",
            display_name="LoRA Aligner (train) (EVE)",
            category=CATEGORY,
            description=(
                "EVE Factorized Diffusion Distillation (Sec. 3.2-3.3): trains a small LoRA on the backbone so the "
                "stacked image-edit adapter (ControlNet) and video adapter work together, with no edited videos. "
                "The student (backbone + both frozen adapters + LoRA) edits each clip from noise in k K-bin steps; "
                "SDS from the edit teacher (backbone + ControlNet) and the video teacher (backbone + video adapter), "
                "then hinge adversarial losses with two discriminators. Without a video teacher it aligns image-only "
                "(Sec. 4.4). Progress, live loss chart, cancel, checkpoints with exact resume; saves the LoRA to "
                "models/loras (load it with LoraLoader or the Adapter Stacker)."),
            inputs=[
                io.Model.Input("edit_teacher", tooltip="The frozen backbone the edit adapter runs on (SD1.5 checkpoint); "
                                                        "the LoRA is trained on it. Never changed."),
                io.ControlNet.Input("control_net", tooltip="The image-edit adapter, e.g. control_v11e_sd15_ip2p; with the "
                                                           "backbone it is the edit teacher psi."),
                io.Clip.Input("clip", tooltip="The backbone's CLIP, for instructions and captions."),
                io.Vae.Input("vae", tooltip="The VAE (or TAESD) that encodes the source clips to latents."),
                io.Combo.Input("data_mode", options=list(data.DATA_MODES), default=data.DATA_MODES[0],
                               tooltip="'dataset folder': clips + instructions + captions from a JSONL folder (the "
                                       "paper's unsupervised data). 'my clip': align on the connected frames only."),
                io.String.Input("dataset_folder", default="eve_align_data",
                                tooltip="Dataset mode: folder inside ComfyUI's input folder (or in a folder listed under "
                                        "videoedit_datasets in extra_model_paths.yaml) with " + data.LAYOUT + "."),
                io.String.Input("instruction", default="make it a snowy winter scene",
                                tooltip="'my clip' mode: the edit instruction for the connected clip."),
                io.String.Input("caption", default="a snowy winter scene",
                                tooltip="'my clip' mode: a caption of the edited clip (the video teacher's prompt)."),
                io.Int.Input("frames", default=8, min=1, max=64,
                             tooltip="Frames per clip (the paper: 8); the first frames of every clip are used."),
                io.Int.Input("resolution", default=256, min=64, max=2048, step=8,
                             tooltip="Clips are center-cropped and resized to this square size (the paper: 512)."),
                io.Int.Input("steps", default=1500, min=1, max=1_000_000,
                             tooltip="Alignment iterations (the paper: 1500, the first 2/3 SDS only)."),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Clips per iteration (the paper: 64)."),
                io.Float.Input("learning_rate", default=1e-5, min=1e-8, max=1.0, step=1e-6, round=1e-8,
                               tooltip="Adam learning rate of the LoRA and the discriminator heads (the paper: 1e-5, no warm-up)."),
                io.Int.Input("lora_rank", default=16, min=1, max=256, tooltip="Rank of the alignment LoRA."),
                io.Int.Input("k", default=3, min=1, max=50,
                             tooltip="Student steps per generation, one drawn from each of k equal bins of the schedule "
                                     "(the paper: 3); the loss backpropagates through all of them."),
                io.Int.Input("schedule_steps", default=1000, min=1, max=1000,
                             tooltip="Steps of the schedule the k bins split (1000 = every training timestep)."),
                io.Int.Input("teacher_steps", default=8, min=1, max=1000,
                             tooltip="DDIM steps the teachers take to make the discriminators' real samples."),
                io.Float.Input("sds_only_fraction", default=2 / 3, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the iterations trained with SDS only before the adversarial "
                                       "losses join (the paper: 1000 of 1500)."),
                io.Float.Input("control_strength", default=1.0, min=0.0, max=10.0, step=0.01,
                               tooltip="Strength of the ControlNet in the edit teacher and the student."),
                *run_inputs("eve_align_lora", "the LoRA in models/loras", data.TRAINER_KIND),
                io.Model.Input("video_teacher", optional=True,
                               tooltip="The video teacher rho: the same backbone with the video adapter (Apply Video "
                                       "Adapter). Leave empty to align image-only (D_v and the video teacher off)."),
                io.Image.Input("images", optional=True, tooltip="'my clip' mode: the clip's frames (IMAGE batch)."),
                io.Combo.Input("feature_network", options=data.feature_network_names(),
                               default=data.UNET_FEATURES, optional=True,
                               tooltip="The discriminators' frozen feature network: the backbone's UNet encoder "
                                       "(on latents, as MoViE and LADD), or a DINOv2 (EVE's choice) from "
                                       f"models/{data.FEATURES_FOLDER} (model.safetensors of facebook/dinov2-*); DINOv2 "
                                       "sees the clips decoded by the vae input, so use TAESD there to keep it cheap."),
                overwrite_input("models/loras"),
            ],
            outputs=trainer_outputs("The student: the video teacher (or the backbone) with the aligned LoRA.",
                                    "The generator loss per step.", "Where the LoRA was saved and the last losses."),
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, edit_teacher, control_net, clip, vae, data_mode, dataset_folder, instruction, caption, frames,
                resolution, steps, batch_size, learning_rate, lora_rank, k, schedule_steps, teacher_steps,
                sds_only_fraction, control_strength, seed, checkpoint_every, output_name, resume, video_teacher=None,
                images=None, feature_network=None, overwrite=False) -> io.NodeOutput:
        if k > schedule_steps:
            raise ValueError(f"k: {k} student steps cannot be drawn from a schedule of {schedule_steps} steps "
                             "(one per bin); lower k or raise schedule_steps")
        ckpt, lora_path, run_meta = data.run_paths(output_name, resume, overwrite)  # before any work
        if data_mode == data.DATA_MODES[1]:
            clips = data.clip_data(clip, vae, images, instruction, caption, frames)
        else:
            clips = data.dataset_data(clip, vae, dataset_folder, frames, resolution)
        cfg = AlignConfig(steps=steps, batch_size=batch_size, learning_rate=learning_rate, rank=lora_rank, k=k,
                          schedule_steps=schedule_steps, teacher_steps=teacher_steps, sds_fraction=sds_only_fraction,
                          control_strength=control_strength, seed=seed, checkpoint_every=checkpoint_every)
        student, aligner, history, start = data.train_and_save(
            edit_teacher, control_net, video_teacher, clips, cfg, feature_network, vae, ckpt, lora_path, resume,
            node_id(cls), output_name, run_meta)
        last = ", ".join(f"{k_} {v:.4g}" for k_, v in aligner.last_log.items())
        text = (f"saved {lora_path} after {aligner.steps} steps ({len(clips.names)} clips, "
                f"{'image-only' if video_teacher is None else 'edit + video teachers'}); last step: {last or 'n/a'}"
                + resumed_note(start))
        return io.NodeOutput(student, loss_curve_image(history, "FDD generator loss"), text)


NODES = [LoRAAligner]

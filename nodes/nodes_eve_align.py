"""LoRA Aligner (train): EVE's Factorized Diffusion Distillation as a node, with the MoViE
training infrastructure (progress, live loss chart, cancel, atomic checkpoints, exact resume,
loss-curve image). The loop is nodes/eve_align_train.py, the math nodes/eve_align.py.

Data: a folder with one ``.jsonl`` file, one clip per line:
``{"video": "clip.mp4" | "frames_folder", "instruction": "...", "caption": "..."}`` (paths
relative to the folder). No edited videos: the teachers supervise.
"""
from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as Fn

import comfy.sd
import comfy.utils
import folder_paths
from comfy_api.v0_0_2 import io

from . import dino_features, training
from .eve_align_train import AlignConfig, AlignData, Aligner
from .nodes_eve import CATEGORY
from .nodes_movie import register_folder
from .nodes_movie_train import encode_images, encode_text, run_with_live_chart
from .atomic_file import atomic_save_safetensors

VIDEO_EXTS = (".mp4", ".webm", ".mov", ".mkv", ".gif", ".avi")
LAYOUT = ('one .jsonl file with a line per clip: {"video": "<file or frames folder>", "instruction": "...", '
          '"caption": "..."}')
FEATURES_FOLDER = "videoedit_features"  # models/videoedit_features: DINOv2 model.safetensors files
UNET_FEATURES = "backbone UNet encoder"
register_folder(FEATURES_FOLDER)


def load_feature_network(name: str | None):
    """(DinoFeatures or None, name) for the feature_network widget."""
    if not name or name == UNET_FEATURES:
        return None, UNET_FEATURES
    path = folder_paths.get_full_path(FEATURES_FOLDER, name)
    if path is None:
        raise ValueError(f"feature_network: '{name}' is not in models/{FEATURES_FOLDER}; put a DINOv2 "
                         "model.safetensors there (facebook/dinov2-small/base/large) or pick "
                         f"'{UNET_FEATURES}'")
    return dino_features.DinoFeatures(dino_features.load_dinov2(path)), name


# ------------------------------------------------------------------------- dataset

def scan_dataset(folder: str, input_name: str = "dataset_folder") -> list[dict]:
    """The JSONL entries (video path made absolute); errors name the entry and the fix."""
    if not folder or not os.path.isdir(folder):
        raise ValueError(f"{input_name}: '{folder}' is not a folder; expected a folder with {LAYOUT}")
    files = sorted(n for n in os.listdir(folder) if n.endswith(".jsonl"))
    if len(files) != 1:
        raise ValueError(f"{input_name}: '{folder}' holds {len(files)} .jsonl files; expected {LAYOUT}")
    entries = []
    with open(os.path.join(folder, files[0]), encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{files[0]} line {line_no}"
            try:
                e = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{input_name}: {where} is not JSON ({err}); expected {LAYOUT}") from None
            if not isinstance(e, dict):
                raise ValueError(f"{input_name}: {where} is not a JSON object; expected {LAYOUT}")
            for key in ("video", "instruction", "caption"):
                if not isinstance(e.get(key), str) or not e[key].strip():
                    raise ValueError(f"{input_name}: entry {where} (video {e.get('video')!r}) has no '{key}'; "
                                     f"every clip needs a video, an edit instruction and an output caption")
            path = os.path.join(folder, e["video"])
            if not os.path.exists(path):
                raise ValueError(f"{input_name}: entry {where}: video '{e['video']}' does not exist in '{folder}'")
            entries.append({"video": path, "instruction": e["instruction"].strip(),
                            "caption": e["caption"].strip(), "name": e["video"]})
    if not entries:
        raise ValueError(f"{input_name}: {files[0]} has no entries; expected {LAYOUT}")
    return entries


def _square(frames: torch.Tensor, size: int) -> torch.Tensor:
    """[F, H, W, 3] -> center crop to a square, bicubic resize to size x size."""
    h, w = frames.shape[1:3]
    s = min(h, w)
    x = frames[:, (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s, :3].movedim(-1, 1).float()
    return Fn.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1).movedim(1, -1)


def load_clip_frames(path: str, frames: int, size: int, name: str) -> torch.Tensor:
    """The first ``frames`` frames of a video file or of a folder of images (sorted)."""
    if os.path.isdir(path):
        files = sorted(n for n in os.listdir(path) if n.lower().endswith(training.IMAGE_EXTS))[:frames]
        imgs = [training.load_image_square(os.path.join(path, n), size) for n in files]
        out = torch.stack(imgs) if imgs else torch.zeros(0, size, size, 3)
    else:
        if not path.lower().endswith(VIDEO_EXTS):
            raise ValueError(f"dataset_folder: '{name}' is neither a frames folder nor a video ({', '.join(VIDEO_EXTS)})")
        from comfy_api.input_impl import VideoFromFile
        try:
            out = _square(VideoFromFile(path).get_components().images[:frames], size)
        except Exception as e:
            raise ValueError(f"dataset_folder: cannot read video '{name}' ({type(e).__name__}: {e}); replace it") from None
    if out.shape[0] < frames:
        raise ValueError(f"dataset_folder: clip '{name}' has {out.shape[0]} frames, fewer than frames = {frames}; "
                         "lower frames or use longer clips")
    return out


DATA_MODES = ("dataset folder", "my clip")


def clip_data(clip, vae, images, instruction: str, caption: str, frames: int) -> AlignData:
    """One clip given on the canvas (its first ``frames`` frames) with its instruction and caption."""
    if images is None or images.shape[0] == 0:
        raise ValueError("images: 'my clip' mode needs the clip's frames; connect an IMAGE batch (Get Video "
                         "Components) or switch data_mode to 'dataset folder'")
    if images.shape[0] < frames:
        raise ValueError(f"images: the clip has {images.shape[0]} frames, fewer than frames = {frames}; lower frames")
    for name, text in (("instruction", instruction), ("caption", caption)):
        if not (text or "").strip():
            raise ValueError(f"{name}: 'my clip' mode needs the edit instruction and the output caption; write the {name}")
    hints = images[:frames, ..., :3].clone()
    instr, capt = encode_text(clip, instruction.strip()), encode_text(clip, caption.strip())
    if instr.shape != capt.shape:
        raise ValueError("instruction / caption: they encode to different token counts; keep both under 75 tokens")
    return AlignData(encode_images(vae, hints)[None], hints[None], instr, capt, encode_text(clip, ""), ["my clip"])


def dataset_data(clip, vae, folder: str, frames: int, resolution: int) -> AlignData:
    path = folder if os.path.isabs(folder) else os.path.join(folder_paths.get_input_directory(), folder)
    if resolution % 8:
        raise ValueError(f"resolution: {resolution} is not a multiple of 8")
    entries = scan_dataset(path)
    hints = torch.stack([load_clip_frames(e["video"], frames, resolution, e["name"]) for e in entries])
    lat = torch.stack([encode_images(vae, h) for h in hints])
    instr = [encode_text(clip, e["instruction"]) for e in entries]
    capt = [encode_text(clip, e["caption"]) for e in entries]
    for texts, ctx in (("instruction", instr), ("caption", capt)):
        for e, c in zip(entries, ctx):
            if c.shape != instr[0].shape:
                raise ValueError(f"dataset_folder: the {texts} of '{e['name']}' encodes to {c.shape[1]} tokens, "
                                 f"others to {instr[0].shape[1]}; keep instructions and captions under 75 tokens")
    return AlignData(lat, hints, torch.cat(instr), torch.cat(capt), encode_text(clip, ""), [e["name"] for e in entries])


# ---------------------------------------------------------------------------- node

def paths_for(name: str) -> tuple[str, str]:
    name = training.check_output_name(name)
    ckpt = os.path.join(folder_paths.get_output_directory(), "videoedit_training", name, "checkpoint.safetensors")
    return ckpt, os.path.join(folder_paths.get_folder_paths("loras")[0], f"{name}.safetensors")


def save_lora(aligner: Aligner, path: str) -> None:
    meta = {"format": "kohya lora (lora_unet_*)", "videoedit": "EVE LoRA aligner (FDD)",
            "steps": str(aligner.steps), "rank": str(aligner.cfg.rank)}
    atomic_save_safetensors(aligner.lora_file(), path, meta)


def with_lora(model, path: str):
    """``model`` with the LoRA file through core's loader (what LoraLoaderModelOnly does)."""
    sd = comfy.utils.load_torch_file(path, safe_load=True)
    return comfy.sd.load_lora_for_models(model, None, sd, 1.0, 0)[0]


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
                io.Combo.Input("data_mode", options=list(DATA_MODES), default=DATA_MODES[0],
                               tooltip="'dataset folder': clips + instructions + captions from a JSONL folder (the "
                                       "paper's unsupervised data). 'my clip': align on the connected frames only."),
                io.String.Input("dataset_folder", default="eve_align_data",
                                tooltip="Dataset mode: folder (absolute, or inside ComfyUI's input folder) with " + LAYOUT + "."),
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
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Seed of the draws; same seed = same run."),
                io.Int.Input("checkpoint_every", default=100, min=1, max=1_000_000,
                             tooltip="Write a checkpoint (atomically) every this many steps; a killed run resumes there."),
                io.String.Input("output_name", default="eve_align_lora",
                                tooltip="File name (no folders) of the LoRA in models/loras; its checkpoint goes to "
                                        "output/videoedit_training/<name>."),
                io.Boolean.Input("resume", default=True,
                                 tooltip="Continue from this output name's checkpoint if there is one (same settings)."),
                io.Model.Input("video_teacher", optional=True,
                               tooltip="The video teacher rho: the same backbone with the video adapter (Apply Video "
                                       "Adapter). Leave empty to align image-only (D_v and the video teacher off)."),
                io.Image.Input("images", optional=True, tooltip="'my clip' mode: the clip's frames (IMAGE batch)."),
                io.Combo.Input("feature_network", options=[UNET_FEATURES, *folder_paths.get_filename_list(FEATURES_FOLDER)],
                               default=UNET_FEATURES, optional=True,
                               tooltip="The discriminators' frozen feature network: the backbone's UNet encoder "
                                       "(on latents, as MoViE and LADD), or a DINOv2 (EVE's choice) from "
                                       f"models/{FEATURES_FOLDER} (model.safetensors of facebook/dinov2-*); DINOv2 "
                                       "sees the clips decoded by the vae input, so use TAESD there to keep it cheap."),
            ],
            outputs=[io.Model.Output(tooltip="The student: the video teacher (or the backbone) with the aligned LoRA."),
                     io.Image.Output(display_name="loss_curve", tooltip="The generator loss per step."),
                     io.String.Output(display_name="info", tooltip="Where the LoRA was saved and the last losses.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, edit_teacher, control_net, clip, vae, data_mode, dataset_folder, instruction, caption, frames, resolution, steps, batch_size,
                learning_rate, lora_rank, k, schedule_steps, teacher_steps, sds_only_fraction, control_strength, seed,
                checkpoint_every, output_name, resume, video_teacher=None, images=None,
                feature_network=None) -> io.NodeOutput:
        ckpt, lora_path = paths_for(output_name)
        if k > schedule_steps:
            raise ValueError(f"k: {k} student steps cannot be drawn from a schedule of {schedule_steps} steps "
                             "(one per bin); lower k or raise schedule_steps")
        if data_mode == DATA_MODES[1]:
            data = clip_data(clip, vae, images, instruction, caption, frames)
        else:
            data = dataset_data(clip, vae, dataset_folder, frames, resolution)
        cfg = AlignConfig(steps=steps, batch_size=batch_size, learning_rate=learning_rate, rank=lora_rank, k=k,
                          schedule_steps=schedule_steps, teacher_steps=teacher_steps, sds_fraction=sds_only_fraction,
                          control_strength=control_strength, seed=seed, checkpoint_every=checkpoint_every)
        node = cls.hidden.unique_id if cls.hidden is not None else None
        features, fname = load_feature_network(feature_network)
        aligner = Aligner(edit_teacher, control_net, video_teacher, data, cfg, features, vae, fname)
        history, start = run_alignment(aligner, ckpt, resume, node, output_name)
        save_lora(aligner, lora_path)
        base = video_teacher if video_teacher is not None else edit_teacher
        student = with_lora(base, lora_path)
        curve = training.image_to_tensor(training.render_loss_curve(history, title="FDD generator loss"))
        last = ", ".join(f"{k_} {v:.4g}" for k_, v in aligner.last_log.items())
        text = (f"saved {lora_path} after {aligner.steps} steps ({len(data.names)} clips, "
                f"{'image-only' if video_teacher is None else 'edit + video teachers'}); last step: {last or 'n/a'}"
                + (f"; resumed at step {start}" if start else ""))
        return io.NodeOutput(student, curve, text)


def run_alignment(aligner: Aligner, ckpt: str, resume: bool, node=None, name: str = ""):
    """Aligner.run with ComfyUI's progress bar, cancel and the live-chart messages."""
    return run_with_live_chart(aligner.run, aligner.cfg.steps, ckpt, resume, node, name)


NODES = [LoRAAligner]

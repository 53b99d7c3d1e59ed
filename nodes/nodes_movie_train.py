"""CFG Distill (train): MoViE Alg. 1 as a node, with progress, a live loss chart on the node
(js/videoedit_loss_chart.js, fed by "videoedit.training" server messages), cancel, atomic
checkpoints every N steps, exact resume and a loss-curve image. The loop is movie_distill.py.
"""
from __future__ import annotations

import os

import torch

import comfy.model_management
import comfy.utils
import folder_paths
from comfy_api.v0_0_2 import io

from . import training
from .frame_chunks import frame_chunks
from .movie_distill import DistillConfig, DistillData, Distiller
from .nodes_movie import ADAPTER_FOLDER, CATEGORY, make_student, require_ip2p, save_adapter

MESSAGE = "videoedit.training"
DATA_MODES = ("my frames (data-free)", "dataset folder")


def send_to_ui(event: str, data: dict) -> None:
    """PromptServer message to the canvas (no-op when no server runs, e.g. headless)."""
    try:
        from server import PromptServer
    except ImportError:
        return
    inst = getattr(PromptServer, "instance", None)
    if inst is not None:
        inst.send_sync(event, data)


def encode_text(clip, text: str) -> torch.Tensor:
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))[0][0]


def encode_images(vae, images: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    out = [vae.encode(images[sl][..., :3]) for sl in frame_chunks(images.shape[0], chunk)]
    return torch.cat(out).float()


def frames_data(clip, vae, frames, instructions: str) -> DistillData:
    """Data-free mode: every (frame, instruction) pair; the noise goes on the source frame."""
    if frames is None or frames.shape[0] == 0:
        raise ValueError("frames: data-free mode needs the clip's frames; connect an IMAGE batch (e.g. Get Video "
                         "Components) or switch data_mode to 'dataset folder'")
    lines = [l.strip() for l in (instructions or "").splitlines() if l.strip()]
    if not lines:
        raise ValueError("instructions: write at least one edit instruction (one per line)")
    lat = encode_images(vae, frames)
    ctx = [encode_text(clip, l) for l in lines]
    _same_context(ctx, lines)
    n, k = lat.shape[0], len(lines)
    lat_rep = lat.repeat(k, 1, 1, 1)
    return DistillData(lat_rep, lat_rep, torch.cat([c.expand(n, -1, -1) for c in ctx]), encode_text(clip, ""),
                       [f"frame {i} / {l}" for l in lines for i in range(n)])


def _same_context(ctx, texts):
    for c, t in zip(ctx, texts):
        if c.shape != ctx[0].shape:
            raise ValueError(f"instructions: '{t[:40]}' encodes to {c.shape[1]} tokens, the others to "
                             f"{ctx[0].shape[1]}; keep every instruction under 75 tokens")


def folder_data(clip, vae, folder: str, resolution: int) -> DistillData:
    """(source, instruction, edited) triples from a folder (MoViE's data, as in InstructPix2Pix)."""
    path = folder if os.path.isabs(folder) else os.path.join(folder_paths.get_input_directory(), folder)
    triples = training.scan_edit_triples(path)
    if resolution % 8:
        raise ValueError(f"resolution: {resolution} is not a multiple of 8")
    src = torch.stack([training.load_image_square(s, resolution) for _, s, _, _ in triples])
    edt = torch.stack([training.load_image_square(e, resolution) for _, _, e, _ in triples])
    ctx = [encode_text(clip, t) for *_, t in triples]
    _same_context(ctx, [t for *_, t in triples])
    return DistillData(encode_images(vae, edt), encode_images(vae, src), torch.cat(ctx), encode_text(clip, ""),
                       [i for i, *_ in triples])


def paths_for(name: str) -> tuple[str, str]:
    name = training.check_output_name(name)
    ckpt = os.path.join(folder_paths.get_output_directory(), "videoedit_training", name, "checkpoint.safetensors")
    adapter = os.path.join(folder_paths.get_folder_paths(ADAPTER_FOLDER)[0], f"{name}.safetensors")
    return ckpt, adapter


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
                io.Clip.Input("clip", tooltip="The teacher's CLIP, to encode the instructions and the empty prompt."),
                io.Vae.Input("vae", tooltip="VAE (or TAESD) to encode images to latents; the one you will edit with."),
                io.Combo.Input("data_mode", options=list(DATA_MODES), default=DATA_MODES[0],
                               tooltip="'my frames': targets come from the teacher on your own frames and instructions "
                                       "(no dataset needed). 'dataset folder': (source, instruction, edited) triples."),
                io.String.Input("instructions", multiline=True, default="make it look like a watercolor painting",
                                tooltip="Data-free mode: the edit instructions you will use, one per line."),
                io.String.Input("dataset_folder", default="",
                                tooltip="Dataset mode: folder (absolute, or inside ComfyUI's input folder) with "
                                        "<id>.txt + <id>_source.png + <id>_edited.png per sample."),
                io.Int.Input("resolution", default=256, min=64, max=2048, step=8,
                             tooltip="Dataset mode: images are center-cropped and resized to this square size."),
                io.Int.Input("steps", default=500, min=1, max=1_000_000, tooltip="Total optimizer steps (the paper: 5k)."),
                io.Int.Input("batch_size", default=4, min=1, max=512, tooltip="Samples per step; as large as memory allows."),
                io.Float.Input("learning_rate", default=1e-5, min=1e-8, max=1.0, step=1e-6, round=1e-8,
                               tooltip="Adam learning rate (the paper: 1e-5)."),
                io.Combo.Input("adapter", options=["lora", "full"], default="lora",
                               tooltip="Train LoRA deltas on every UNet layer (small file) or full fine-tune deltas."),
                io.Int.Input("lora_rank", default=16, min=1, max=512, tooltip="LoRA rank (adapter = lora)."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Seed of the draws; same seed = same run."),
                io.Int.Input("checkpoint_every", default=100, min=1, max=1_000_000,
                             tooltip="Write a checkpoint (atomically) every this many steps; a killed run resumes there."),
                io.String.Input("output_name", default="movie_guidance",
                                tooltip="File name (no folders) of the adapter in models/videoedit_guidance; its "
                                        "checkpoint goes to output/videoedit_training/<name>."),
                io.Boolean.Input("resume", default=True,
                                 tooltip="Continue from this output name's checkpoint if there is one (same settings)."),
                io.Image.Input("frames", optional=True, tooltip="Data-free mode: frames of your clip (IMAGE batch)."),
            ],
            outputs=[io.Model.Output(tooltip="The distilled student; sample it with CFG-Distilled Guider."),
                     io.Image.Output(display_name="loss_curve", tooltip="The loss per step."),
                     io.String.Output(display_name="info", tooltip="Where the adapter was saved and the final loss.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, clip, vae, data_mode, instructions, dataset_folder, resolution, steps, batch_size,
                learning_rate, adapter, lora_rank, seed, checkpoint_every, output_name, resume,
                frames=None) -> io.NodeOutput:
        ckpt, adapter_path = paths_for(output_name)
        require_ip2p(model)
        if data_mode == DATA_MODES[0]:
            data = frames_data(clip, vae, frames, instructions)
        else:
            data = folder_data(clip, vae, dataset_folder, resolution)
        cfg = DistillConfig(steps=steps, batch_size=batch_size, learning_rate=learning_rate, kind=adapter,
                            rank=lora_rank, seed=seed, checkpoint_every=checkpoint_every)
        node = cls.hidden.unique_id if cls.hidden is not None else None
        losses = run_training(model, data, cfg, ckpt, resume, node, output_name)
        ad = losses.adapter
        save_adapter(ad, adapter_path)
        student = make_student(model, ad)
        curve = training.image_to_tensor(training.render_loss_curve(losses.history, title="CFG distillation loss"))
        last = f"{losses.history[-1]:.5g}" if losses.history else "n/a"
        text = (f"saved {adapter_path} after {ad.steps} steps ({len(data.x0)} training pairs); final loss {last}"
                + (f"; resumed at step {losses.resumed_at}" if losses.resumed_at else ""))
        return io.NodeOutput(student, curve, text)


class _Result:
    def __init__(self, adapter, history, resumed_at):
        self.adapter, self.history, self.resumed_at = adapter, history, resumed_at


def run_with_live_chart(run, total: int, ckpt: str, resume: bool, node=None, name: str = ""):
    """Run a trainer (``run(ckpt, resume, on_step=, interrupted=)``, the shape of every trainer of
    the pack) with ComfyUI's progress bar, cancel and the live-chart messages of
    js/videoedit_loss_chart.js. Returns (loss history, the step it resumed at)."""
    start = _checkpoint_step(ckpt) if resume else 0
    pbar = comfy.utils.ProgressBar(total)
    pbar.update_absolute(min(start, total), total)
    send_to_ui(MESSAGE, {"node": node, "name": name, "reset": True, "total": total})

    def on_step(step, loss):
        pbar.update_absolute(step, total)
        send_to_ui(MESSAGE, {"node": node, "name": name, "step": step, "total": total, "loss": loss})

    history = run(ckpt, resume, on_step=on_step,
                  interrupted=comfy.model_management.throw_exception_if_processing_interrupted)
    if start:  # the chart shows the resumed history too
        send_to_ui(MESSAGE, {"node": node, "name": name, "history": history, "total": total})
    return history, start


def run_training(model, data, cfg, ckpt, resume, node=None, name=""):
    """The CFG distillation (Distiller.run) with progress, cancel and the live chart."""
    d = Distiller(model, data, cfg)
    history, start = run_with_live_chart(d.run, cfg.steps, ckpt, resume, node, name)
    return _Result(d.adapter, history, start)


def _checkpoint_step(path: str) -> int:
    if not os.path.exists(path):
        return 0
    from safetensors import safe_open
    with safe_open(path, framework="pt") as f:
        return int((f.metadata() or {}).get("step", 0))


NODES = [CFGDistillTrain]

"""The LoRA Aligner's data, feature network and files (engine): clips with instructions and captions
(a JSONL dataset folder, or the clip on the canvas) encoded once, the DINOv2 feature network, the
run's checkpoint and the kohya LoRA file. The trainer is engine_align_trainer.py, the math
eve/align.py, the loop core/trainer_loop.py.

Data: a folder with one ``.jsonl`` file, one clip per line:
``{"video": "clip.mp4" | "frames_folder", "instruction": "...", "caption": "..."}`` (paths
relative to the folder). No edited videos: the teachers supervise. The folder, every entry and
every frame are resolved by ``host.folders.data_path``: nothing outside the data folders is read.
"""
from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as Fn

from ..core.atomic_file import atomic_save_safetensors
from ..core.edit_datasets import IMAGE_EXTS, load_image_square
from ..host.encoding import encode_images, encode_text
from ..host.folders import data_path, model_file_names, model_file_path, register_model_folder
from ..host.lora import load_model_lora
from ..host.training_ui import run_files, run_with_live_chart
from . import dino_features
from .engine_align_trainer import AlignData, Aligner

VIDEO_EXTS = (".mp4", ".webm", ".mov", ".mkv", ".gif", ".avi")
LAYOUT = ('one .jsonl file with a line per clip: {"video": "<file or frames folder>", "instruction": "...", '
          '"caption": "..."}')
FEATURES_FOLDER = "videoedit_features"  # models/videoedit_features: DINOv2 model.safetensors files
UNET_FEATURES = "backbone UNet encoder"
register_model_folder(FEATURES_FOLDER)


def load_feature_network(name: str | None):
    """(DinoFeatures or None, name) for the feature_network widget."""
    if not name or name == UNET_FEATURES:
        return None, UNET_FEATURES
    try:
        path = model_file_path(FEATURES_FOLDER, name, "feature_network",
                               "put a DINOv2 model.safetensors there (facebook/dinov2-small/base/large) or pick "
                               f"'{UNET_FEATURES}'")
    except FileNotFoundError as e:
        raise ValueError(str(e)) from None
    return dino_features.DinoFeatures(dino_features.load_dinov2(path)), name


# ------------------------------------------------------------------------- dataset

def scan_dataset(folder: str, input_name: str = "dataset_folder") -> list[dict]:
    """The JSONL entries (video path resolved inside the data folders); errors name the entry and the fix."""
    if not folder or not os.path.isdir(folder):
        raise ValueError(f"{input_name}: '{folder}' is not a folder; expected a folder with {LAYOUT}")
    files = sorted(n for n in os.listdir(folder) if n.endswith(".jsonl"))
    if len(files) != 1:
        raise ValueError(f"{input_name}: '{folder}' holds {len(files)} .jsonl files; expected {LAYOUT}")
    entries = []
    with open(data_path(files[0], input_name, base=folder, shown=f"'{files[0]}'"), encoding="utf-8") as f:
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
            path = data_path(e["video"], input_name, base=folder, shown=f"entry {where}: video {e['video']!r}")
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
        files = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTS))[:frames]
        imgs = [load_image_square(data_path(n, "dataset_folder", base=path, shown=f"frame '{n}' of clip '{name}'"),
                                  size) for n in files]
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
    path = data_path(folder, "dataset_folder")
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

TRAINER_KIND = "eve_align"  # its checkpoints: output/videoedit_training/eve_align/<name>/


def run_paths(output_name: str, resume: bool = True, overwrite: bool = False) -> tuple[str, str, dict]:
    """(checkpoint, LoRA file in models/loras, its run metadata) of the run ``output_name``
    (host.training_ui.run_files: an existing LoRA of that name is refused unless it is this resumed
    run's own or ``overwrite``); an old-layout checkpoint of an EVE alignment (its settings record
    has sds_fraction) is moved to the new place."""
    return run_files(TRAINER_KIND, output_name, "checkpoint.safetensors", "sds_fraction", "loras", resume, overwrite)


def save_lora(aligner: Aligner, path: str, extra_meta: dict | None = None) -> None:
    meta = {"format": "kohya lora (lora_unet_*)", "videoedit": "EVE LoRA aligner (FDD)",
            "steps": str(aligner.steps), "rank": str(aligner.cfg.rank), **(extra_meta or {})}
    atomic_save_safetensors(aligner.lora_file(), path, meta)


def with_lora(model, path: str):
    """``model`` with the LoRA file just written at strength 1 (what core LoraLoaderModelOnly gives;
    host.lora reads it through core.weight_files and checks every key applied)."""
    return load_model_lora(model, path, 1.0, "output_name")


def feature_network_names() -> list[str]:
    return [UNET_FEATURES, *model_file_names(FEATURES_FOLDER, None)]


def train_and_save(edit_teacher, control_net, video_teacher, data: AlignData, cfg, feature_network, vae, ckpt: str,
                   lora_path: str, resume: bool, node=None, name: str = "", run_meta: dict | None = None):
    """Align with progress, cancel and the live chart, save the LoRA; returns (the student: the
    video teacher or the backbone with the LoRA, the aligner, the loss history, the resumed step)."""
    features, fname = load_feature_network(feature_network)
    aligner = Aligner(edit_teacher, control_net, video_teacher, data, cfg, features, vae, fname)
    history, start = run_with_live_chart(aligner.run, cfg.steps, ckpt, resume, node, name)
    save_lora(aligner, lora_path, run_meta)
    base = video_teacher if video_teacher is not None else edit_teacher
    return with_lora(base, lora_path), aligner, history, start

"""The training data of MoViE's two trainers (engine): data-free pairs from the user's own frames
and instructions, or (source, instruction, edited) triples from a dataset folder, encoded once
with the given CLIP and VAE into a ``DistillData``. The folder and each of its files are resolved by
``host.folders.data_path``: nothing outside the data folders is read."""
from __future__ import annotations

import torch

from ..core.edit_datasets import load_image_square, scan_edit_triples
from ..host.encoding import encode_images, encode_text
from ..host.folders import data_path
from .engine_cfg_distill import DistillData

DATA_MODES = ("my frames (data-free)", "dataset folder")


def training_data(clip, vae, data_mode: str, frames, instructions: str, dataset_folder: str,
                  resolution: int) -> DistillData:
    """The data of the data_mode input."""
    if data_mode == DATA_MODES[0]:
        return frames_data(clip, vae, frames, instructions)
    return folder_data(clip, vae, dataset_folder, resolution)


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
    triples = scan_edit_triples(data_path(folder, "dataset_folder"), file_path=lambda base, name: data_path(
        name, "dataset_folder", base=base, shown=f"file {name!r} of the dataset"))
    if resolution % 8:
        raise ValueError(f"resolution: {resolution} is not a multiple of 8")
    src = torch.stack([load_image_square(s, resolution) for _, s, _, _ in triples])
    edt = torch.stack([load_image_square(e, resolution) for _, _, e, _ in triples])
    ctx = [encode_text(clip, t) for *_, t in triples]
    _same_context(ctx, [t for *_, t in triples])
    return DistillData(encode_images(vae, edt), encode_images(vae, src), torch.cat(ctx), encode_text(clip, ""),
                       [i for i, *_ in triples])

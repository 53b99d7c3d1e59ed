"""Image-edit datasets on disk (pure: os, PIL, torch): (source, instruction, edited) triples and
square image loading; errors name the input, the bad entry and the expected layout."""
from __future__ import annotations

import os
from typing import Callable

import torch

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def scan_edit_triples(folder: str, input_name: str = "dataset_folder",
                      file_path: Callable[[str, str], str] = os.path.join) -> list[tuple[str, str, str, str]]:
    """(id, source image, edited image, instruction) for every ``<id>.txt`` in ``folder`` with
    ``<id>_source.<ext>`` and ``<id>_edited.<ext>`` beside it. Errors name the first bad entry.
    ``file_path(folder, name)``: the path of a file of the folder before it is read (the node
    passes one that refuses a file whose symlink leads outside the data folders)."""
    layout = "<id>.txt (the instruction) + <id>_source.png + <id>_edited.png per sample"
    if not folder or not os.path.isdir(folder):
        raise ValueError(f"{input_name}: '{folder}' is not a folder; expected a folder of {layout}")
    names = sorted(os.listdir(folder))
    images = {os.path.splitext(n)[0]: n for n in names if n.lower().endswith(IMAGE_EXTS)}
    ids = [n[:-4] for n in names if n.endswith(".txt")]
    if not ids:
        raise ValueError(f"{input_name}: no samples in '{folder}' (no .txt instruction files); expected {layout}")
    out = []
    for i in ids:
        src, edt = images.get(f"{i}_source"), images.get(f"{i}_edited")
        if src is None or edt is None:
            missing = " and ".join(x for x, f in ((f"{i}_source.<png|jpg|webp>", src), (f"{i}_edited.<png|jpg|webp>", edt)) if f is None)
            raise ValueError(f"{input_name}: sample '{i}' ({i}.txt) has no {missing} in '{folder}'; "
                             f"expected {layout}")
        with open(file_path(folder, f"{i}.txt"), encoding="utf-8", errors="strict") as f:
            text = f.read().strip()
        if not text:
            raise ValueError(f"{input_name}: sample '{i}': {i}.txt is empty; write the edit instruction in it")
        out.append((i, file_path(folder, src), file_path(folder, edt), text))
    stray = sorted(k for k in images if not (k.endswith(("_source", "_edited")) and k.rsplit("_", 1)[0] in set(ids)))
    if stray:
        raise ValueError(f"{input_name}: image '{images[stray[0]]}' belongs to no sample (no matching .txt); "
                         f"expected {layout}")
    return out


def load_image_square(path: str, size: int) -> torch.Tensor:
    """An image file -> [size, size, 3] float in [0, 1] (center crop to square, bicubic resize)."""
    from PIL import Image
    import numpy as np
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = min(w, h)
            im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((size, size), Image.BICUBIC)
            return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)
    except OSError as e:
        raise ValueError(f"dataset_folder: cannot read image '{os.path.basename(path)}' ({e}); replace or remove it") from e

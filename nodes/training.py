"""Generic training-loop pieces (pure torch + safetensors + PIL, no ComfyUI import), shared by
the MoViE trainers (CFG distillation here, the one-step student and the EVE aligner later):

- checkpoints as one safetensors file: trainable tensors, optimizer state, RNG state, loss
  history (no pickle), for exact resume;
- per-step random generators derived from (seed, step, rank): a resumed run draws exactly the
  batches, timesteps and noise the uninterrupted run would have;
- loss-curve rendering (PIL), output-name checking, DDP helpers (torchrun, gloo/nccl).
"""
from __future__ import annotations

import json
import math
import os
from typing import Iterable

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from .atomic_file import atomic_save_safetensors, atomic_write_bytes  # noqa: F401  (harness/train.py uses both through this module)


def check_output_name(name: str, input_name: str = "output_name") -> str:
    """A plain file stem: no folders, no '..', not empty."""
    n = (name or "").strip()
    if not n or n in (".", "..") or any(c in n for c in ("/", "\\", "\0", ":")) or os.path.isabs(n) \
            or n.startswith("."):
        raise ValueError(f"{input_name}: '{name}' is not a plain file name (no folders, no path separators, "
                         "not starting with '.'); type a name like my_adapter")
    return n[:-len(".safetensors")] if n.endswith(".safetensors") else n


# -------------------------------------------------------------- randomness per step

def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The generator of one training step: depends only on (seed, step, rank)."""
    mixed = (int(seed) * 1_000_003 + int(step) * 7_919 + int(rank) * 104_729) % (2 ** 63 - 1)
    return torch.Generator().manual_seed(mixed)


# -------------------------------------------------------------------- checkpoints

def capture_state(step: int, params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                  losses: list[float], config: dict) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Everything a resumed run needs, as (tensors, string metadata)."""
    tensors = {f"param.{k}": v.detach().clone().cpu() for k, v in params.items()}
    osd = optimizer.state_dict()
    scalars = {}
    for idx, st in osd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{idx}.{k}"] = v.detach().clone().cpu()
            else:
                scalars[f"{idx}.{k}"] = v
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"step": str(step), "losses": json.dumps(losses), "config": json.dumps(config, sort_keys=True),
            "param_groups": json.dumps(osd["param_groups"]), "opt_scalars": json.dumps(scalars),
            "param_names": json.dumps(list(params))}
    return tensors, meta


def save_checkpoint(path: str, step: int, params, optimizer, losses, config) -> None:
    tensors, meta = capture_state(step, params, optimizer, losses, config)
    atomic_save_safetensors(tensors, path, meta)


def load_checkpoint(path: str, params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                    config: dict | None = None) -> tuple[int, list[float]]:
    """Restore params (in place), optimizer and RNG; return (step, losses)."""
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    tensors = load_file(path)
    if config is not None and "config" in meta:
        saved = json.loads(meta["config"])
        diff = [k for k in sorted(set(saved) | set(config)) if saved.get(k) != config.get(k)]
        if diff:
            raise ValueError(f"checkpoint {os.path.basename(path)} was written with different settings "
                             f"({', '.join(f'{k}: {saved.get(k)!r} vs {config.get(k)!r}' for k in diff)}); "
                             "use the same settings to resume, or another output name to start over")
    names = json.loads(meta["param_names"])
    if names != list(params):
        raise ValueError(f"checkpoint {os.path.basename(path)} holds other parameters than this run")
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(tensors[f"param.{k}"])
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, idx, k = key.split(".", 2)
            state.setdefault(int(idx), {})[k] = v
    for key, v in json.loads(meta["opt_scalars"]).items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    torch.set_rng_state(tensors["rng.torch"])
    return int(meta["step"]), json.loads(meta["losses"])


# --------------------------------------------------------------------- loss curve

def render_loss_curve(losses: list[float], width: int = 512, height: int = 256, title: str = "loss"):
    """The loss history as an RGB PIL image (log-scale y when it spans > 1 decade)."""
    from PIL import Image, ImageDraw
    img = Image.new("RGB", (width, height), (24, 24, 28))
    d = ImageDraw.Draw(img)
    left, right, top, bottom = 48, width - 10, 22, height - 24
    d.rectangle([left, top, right, bottom], outline=(90, 90, 100))
    vals = [v for v in losses if math.isfinite(v)]
    d.text((left, 4), f"{title}: {len(losses)} steps" + (f", last {vals[-1]:.4g}" if vals else ""), fill=(220, 220, 220))
    if len(vals) >= 1:
        use_log = min(vals) > 0 and max(vals) / max(min(vals), 1e-30) > 10
        f = (lambda v: math.log10(v)) if use_log else (lambda v: v)
        lo, hi = f(min(vals)), f(max(vals))
        hi = hi if hi > lo else lo + 1e-12
        n = max(len(losses) - 1, 1)
        pts = [(left + (right - left) * i / n, bottom - (bottom - top) * (f(v) - lo) / (hi - lo))
               for i, v in enumerate(losses) if math.isfinite(v)]
        if len(pts) == 1:
            d.ellipse([pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2], fill=(90, 170, 255))
        else:
            d.line(pts, fill=(90, 170, 255), width=2)
        d.text((2, top), f"{max(vals):.3g}", fill=(180, 180, 180))
        d.text((2, bottom - 10), f"{min(vals):.3g}", fill=(180, 180, 180))
        d.text((left, bottom + 6), "step 1" + (" (log y)" if use_log else ""), fill=(180, 180, 180))
        d.text((right - 60, bottom + 6), f"step {len(losses)}", fill=(180, 180, 180))
    return img


def image_to_tensor(img) -> torch.Tensor:
    """PIL RGB image -> ComfyUI IMAGE [1, H, W, 3] float in [0, 1]."""
    import numpy as np
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).unsqueeze(0)


# --------------------------------------------------------------------------- DDP

def ddp_info() -> tuple[int, int]:
    """(rank, world size) of this process (1 process without torchrun)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def ddp_init_from_env(backend: str | None = None) -> tuple[int, int]:
    """Join torchrun's process group (WORLD_SIZE > 1); nccl on GPUs, gloo otherwise."""
    import torch.distributed as dist
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    return ddp_info()


def ddp_broadcast_(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    import torch.distributed as dist
    if ddp_info()[1] > 1:
        with torch.no_grad():
            for t in tensors:
                dist.broadcast(t.data, src)


def ddp_average_grads_(params: Iterable[torch.Tensor]) -> None:
    """All-reduce and average gradients over ranks (what DistributedDataParallel does)."""
    import torch.distributed as dist
    rank, world = ddp_info()
    if world == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad.div_(world)


def ddp_mean(value: float) -> float:
    import torch.distributed as dist
    rank, world = ddp_info()
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item() / world)


# ------------------------------------------------------------------ edit datasets

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def scan_edit_triples(folder: str, input_name: str = "dataset_folder") -> list[tuple[str, str, str, str]]:
    """(id, source image, edited image, instruction) for every ``<id>.txt`` in ``folder`` with
    ``<id>_source.<ext>`` and ``<id>_edited.<ext>`` beside it. Errors name the first bad entry."""
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
        with open(os.path.join(folder, f"{i}.txt"), encoding="utf-8", errors="strict") as f:
            text = f.read().strip()
        if not text:
            raise ValueError(f"{input_name}: sample '{i}': {i}.txt is empty; write the edit instruction in it")
        out.append((i, os.path.join(folder, src), os.path.join(folder, edt), text))
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

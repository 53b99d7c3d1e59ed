"""torchvision's RAFT (Teed & Deng, ECCV 2020: the flow TokenFlow's evaluation uses) from a local
file: never downloaded by us (no ``weights=`` argument, no network). Pure torch/torchvision.

Files: torchvision's own checkpoints (``raft_large_C_T_SKHT_V2-ff5fadd5.pth`` ...), from the torch
hub cache (``torch.hub.get_dir()/checkpoints``, where torchvision's downloader keeps them) or any
folder; as ``.pth`` (read with ``torch.load(weights_only=True)``) or ``.safetensors``. The
architecture (large or small) is read off the tensors. TokenFlow does not say which RAFT checkpoint
it used; the results record the file.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from ..core.weight_files import read_weights

ARCHITECTURES = ("raft_large", "raft_small")
FLOW_UPDATES = 12           # torchvision's default and the RAFT demo's
MIN_SIDE = 128              # torchvision's 4-level correlation pyramid needs feature maps >= 16 px
DOWNLOAD_PAGE = "https://pytorch.org/vision/stable/models/raft.html"


def _weights_enums():
    from torchvision.models.optical_flow import Raft_Large_Weights, Raft_Small_Weights
    return {"raft_large": Raft_Large_Weights, "raft_small": Raft_Small_Weights}


def known_files() -> list[tuple[str, str, str]]:
    """[(file name, architecture, url)] of torchvision's RAFT checkpoints, each enum's DEFAULT first
    (large before small: the paper's RAFT is the large one)."""
    out = []
    for arch, enum in _weights_enums().items():
        members = [enum.DEFAULT] + [w for w in enum if w is not enum.DEFAULT]
        out += [(os.path.basename(w.url), arch, w.url) for w in members]
    return out


def hub_checkpoint_dir() -> Path:
    """Where torchvision's ``load_state_dict_from_url`` keeps downloads."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def hub_files() -> list[Path]:
    """torchvision's RAFT checkpoints present in the torch hub cache, in ``known_files`` order."""
    folder = hub_checkpoint_dir()
    return [folder / name for name, _, _ in known_files() if (folder / name).is_file()]


def where_to_put(folder: str | os.PathLike) -> str:
    """What to download by hand, and where to put it (nothing is downloaded for the user)."""
    name, _, url = known_files()[0]
    return (f"put torchvision's RAFT checkpoint {name} ({url}, 21 MB) in {folder} (or in the torch hub cache, "
            f"{hub_checkpoint_dir()}); raft_small's {known_files()[-1][0]} works too (less precise). "
            "Nothing is downloaded for you")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a plain state dict saved with torch.save (core.weight_files:
    ``torch.load(weights_only=True)``, so pickled code never runs); anything else is refused with a
    message that names the file."""
    sd, _ = read_weights(str(path), "raft_weights", f"use torchvision's RAFT .pth file (a plain state dict) or a "
                                                    f".safetensors copy of it ({DOWNLOAD_PAGE})", torch_files=True)
    return sd


def build(sd: dict[str, torch.Tensor], what: str = "RAFT weights") -> tuple[torch.nn.Module, str]:
    """The torchvision RAFT whose parameters are exactly ``sd``'s keys and shapes, loaded; and its
    architecture name. Random init is never used: every key must match."""
    from torchvision.models.optical_flow import raft_large, raft_small
    if any(k.startswith("module.") for k in sd):
        raise ValueError(f"{what}: this looks like the original RAFT repository's checkpoint (princeton-vl/RAFT, "
                         "keys 'module.*'); torchvision's RAFT uses other names: use torchvision's file, e.g. "
                         f"{known_files()[0][0]} ({DOWNLOAD_PAGE})")
    closest = None
    for arch, ctor in (("raft_large", raft_large), ("raft_small", raft_small)):
        model = ctor(weights=None, progress=False)
        want = model.state_dict()
        missing = [k for k in want if k not in sd]
        unexpected = [k for k in sd if k not in want]
        wrong = [k for k in want if k in sd and tuple(sd[k].shape) != tuple(want[k].shape)]
        if not (missing or unexpected or wrong):
            model.load_state_dict(sd, strict=True)
            return model.eval(), arch
        score = len(missing) + len(unexpected) + len(wrong)
        if closest is None or score < closest[0]:
            closest = (score, arch, missing, unexpected, wrong)
    _, arch, missing, unexpected, wrong = closest
    detail = "; ".join(f"{label} {len(keys)} (e.g. {keys[0]})" for label, keys in
                       (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys)
    raise ValueError(f"{what}: not a torchvision RAFT state dict (closest: {arch}; {detail}); use torchvision's "
                     f"RAFT checkpoint, e.g. {known_files()[0][0]} ({DOWNLOAD_PAGE})")


def load(path: str | os.PathLike) -> tuple[torch.nn.Module, str]:
    return build(read_state_dict(path), what=f"RAFT weights {Path(path).name}")


def _pad_to_raft(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Replicate-pad [B, 3, H, W] to sides divisible by 8, split evenly on both sides (the RAFT
    repository's InputPadder)."""
    h, w = x.shape[-2:]
    th, tw = -(-h // 8) * 8, -(-w // 8) * 8
    pad = ((tw - w) // 2, tw - w - (tw - w) // 2, (th - h) // 2, th - h - (th - h) // 2)
    return (F.pad(x, pad, mode="replicate") if any(pad) else x), pad


def flow(model: torch.nn.Module, frames_a: torch.Tensor, frames_b: torch.Tensor,
         updates: int = FLOW_UPDATES) -> torch.Tensor:
    """Flow from ``frames_a`` to ``frames_b`` ([B, 3, H, W] in 0..1): [B, 2, H, W] pixels, x then y,
    frames_a(p) ~ frames_b(p + flow(p)). Frames smaller than MIN_SIDE are upscaled for RAFT and the
    flow scaled back (as Lai et al. resize frames for FlowNet2 and rescale its flow)."""
    h, w = frames_a.shape[-2:]
    scale = max(1.0, MIN_SIDE / min(h, w))
    size = (max(MIN_SIDE, round(h * scale)), max(MIN_SIDE, round(w * scale))) if scale > 1 else (h, w)
    pair = torch.cat([frames_a, frames_b]) * 2.0 - 1.0   # torchvision's RAFT takes [-1, 1]
    if size != (h, w):
        pair = F.interpolate(pair, size=size, mode="bilinear", align_corners=False)
    pair, pad = _pad_to_raft(pair)
    a, b = pair.chunk(2)
    out = model(a.contiguous(), b.contiguous(), num_flow_updates=updates)[-1]
    ph, pw = out.shape[-2:]
    out = out[..., pad[2]:ph - pad[3], pad[0]:pw - pad[1]]
    if size != (h, w):
        out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
        out = out * torch.tensor([w / size[1], h / size[0]], device=out.device, dtype=out.dtype).view(1, 2, 1, 1)
    return out


def flow_fn(model: torch.nn.Module, updates: int = FLOW_UPDATES):
    """A ``warp_error.FlowFn``: forward and backward flow in one batch."""
    def flows(frames_t: torch.Tensor, frames_t1: torch.Tensor):
        both = flow(model, torch.cat([frames_t, frames_t1]), torch.cat([frames_t1, frames_t]), updates)
        return both[:frames_t.shape[0]], both[frames_t.shape[0]:]
    return flows

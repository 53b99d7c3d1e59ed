"""DINOv2 as the frozen feature network of EVE's discriminators (FDD Sec. 3.3: "a frozen DINOv2
feature network with trainable heads"), from a file the user already has. Pure torch +
safetensors + transformers and kornia (ComfyUI's own dependencies); no ComfyUI import.

The file is the Hugging Face layout of facebook/dinov2-{small,base,large} (``model.safetensors``);
the architecture is read off its tensors (hidden size, depth, patch size, MLP ratio, training
resolution; 64-dim heads as every DINOv2). Pickle checkpoints are refused (safetensors only), and
so are the register and SwiGLU variants, with what to use instead.
"""
from __future__ import annotations

import math
import os
import re

import torch
import torch.nn.functional as F
from einops import rearrange
from kornia.enhance import normalize
from torch import nn

from ..core.weight_files import read_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # DINOv2's input normalisation
IMAGENET_STD = (0.229, 0.224, 0.225)
HEAD_DIM = 64  # every released DINOv2 (S/B/L/g: 6/12/16/24 heads)


def dinov2_config(sd: dict[str, torch.Tensor], input_name: str = "feature_network"):
    """A transformers Dinov2Config matching the tensors of a HF-layout DINOv2 state dict."""
    from transformers import Dinov2Config
    if "embeddings.register_tokens" in sd:
        raise ValueError(f"{input_name}: a DINOv2 *with registers*; use the plain facebook/dinov2-small/base/large "
                         "model.safetensors")
    if any(".mlp.weights_in." in k for k in sd):
        raise ValueError(f"{input_name}: a SwiGLU DINOv2 (giant); use facebook/dinov2-small/base/large")
    need = ("embeddings.cls_token", "embeddings.position_embeddings", "embeddings.patch_embeddings.projection.weight")
    missing = [k for k in need if k not in sd]
    if missing:
        hint = " (timm/torch-hub key names: convert with transformers' DINOv2 conversion)" if any(
            k.startswith("blocks.") for k in sd) else ""
        raise ValueError(f"{input_name}: not a DINOv2 checkpoint in the Hugging Face layout (no {missing[0]}){hint}; "
                         "use model.safetensors of facebook/dinov2-small, -base or -large")
    hidden = sd["embeddings.cls_token"].shape[-1]
    patch = sd["embeddings.patch_embeddings.projection.weight"].shape[-1]
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.layer\.(\d+)\.", k)))
    grid = math.isqrt(sd["embeddings.position_embeddings"].shape[1] - 1)
    mlp = sd["encoder.layer.0.mlp.fc1.weight"].shape[0] / hidden
    return Dinov2Config(hidden_size=hidden, num_hidden_layers=depth, num_attention_heads=max(1, hidden // HEAD_DIM),
                        mlp_ratio=mlp, patch_size=patch, image_size=grid * patch, layerscale_value=1.0)


def load_dinov2(path: str, input_name: str = "feature_network") -> nn.Module:
    """A frozen transformers Dinov2Model from a safetensors file (never a pickle)."""
    from transformers import Dinov2Model
    if not path.endswith(".safetensors"):
        raise ValueError(f"{input_name}: '{os.path.basename(path)}' is not a .safetensors file; pickle checkpoints "
                         "are not loaded (they can run code). Download model.safetensors of facebook/dinov2-*")
    with torch.inference_mode(False):  # ComfyUI runs nodes in inference mode; backward passes through this
        sd, _ = read_weights(path, input_name, "download model.safetensors of facebook/dinov2-small, -base or -large "
                                               "again")
        model = Dinov2Model(dinov2_config(sd, input_name))
        got = model.load_state_dict(sd, strict=False)
    missing = [k for k in got.missing_keys if not k.startswith("embeddings.mask_token")]
    if missing or got.unexpected_keys:
        raise ValueError(f"{input_name}: tensors do not match a DINOv2 (missing {missing[:2]}, unexpected "
                         f"{got.unexpected_keys[:2]}); use model.safetensors of facebook/dinov2-small/base/large")
    return model.eval().requires_grad_(False)


class DinoFeatures(nn.Module):
    """images [B, 3, H, W] in [0, 1] -> ``levels`` patch-token maps [B, C, g, g] from evenly spaced
    layers (the last included), at ``size`` pixels (a multiple of the patch; LADD-style 4 levels)."""

    def __init__(self, model: nn.Module, levels: int = 4, size: int = 224):
        super().__init__()
        self.model = model
        depth = model.config.num_hidden_layers
        levels = max(1, min(levels, depth))
        self.layers = [round(depth * (i + 1) / levels) for i in range(levels)]  # hidden_states[0] = embeddings
        p = model.config.patch_size
        self.size = max(p, size // p * p)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = F.interpolate(images.float(), size=(self.size, self.size), mode="bilinear", align_corners=False)
        # constants made per call, in the caller's grad mode (a buffer made under a node's inference
        # mode could not be saved for the training backward)
        x = normalize(x, x.new_tensor(IMAGENET_MEAN), x.new_tensor(IMAGENET_STD))
        hidden = self.model(pixel_values=x, output_hidden_states=True).hidden_states
        g = self.size // self.model.config.patch_size
        return [rearrange(hidden[i][:, 1:], "b (gh gw) c -> b c gh gw", gh=g) for i in self.layers]  # no CLS token

"""Mobile-Pix2Pix (MoViE Sec. 3.2, stage 1): no attention at the UNet's highest resolution.

MoViE (after SnapFusion/BK-SDM) removes the self- and cross-attention layers at the
highest resolution of the UNet's encoder and decoder: -12% FLOPs, quality kept after a
fine-tune. In an SD1.x UNet each such layer pair lives in one SpatialTransformer (norm,
proj_in, self-attn, cross-attn, FF, proj_out) wrapped in a residual; we replace the whole
transformer by the identity, which is what removing the block from the residual stream
means. Pure torch: the UNet is inspected by structure (layers before the first Downsample /
after the last Upsample), no ComfyUI import.
"""
from __future__ import annotations

import torch


class RemovedAttention(torch.nn.Module):
    """Stands where a highest-resolution SpatialTransformer was: passes x through."""

    def forward(self, x, *args, **kwargs):
        return x


def _has(block, name: str) -> bool:
    return any(type(layer).__name__ == name for layer in block)


def highest_resolution_attention(unet: torch.nn.Module) -> list[str]:
    """Paths (relative to the UNet) of the SpatialTransformers at the highest resolution.

    Encoder: input blocks before the first Downsample; decoder: output blocks after the
    last Upsample. SD1.5: input_blocks.1.1, input_blocks.2.1, output_blocks.9.1, .10.1, .11.1.
    """
    if not all(hasattr(unet, a) for a in ("input_blocks", "output_blocks")):
        raise ValueError("model: Mobile-Pix2Pix needs a UNet model (SD1.x / SD2.x / InstructPix2Pix); "
                         f"got {type(unet).__name__}")
    paths = []
    for i, block in enumerate(unet.input_blocks):
        if _has(block, "Downsample"):
            break
        paths += [f"input_blocks.{i}.{j}" for j, layer in enumerate(block)
                  if type(layer).__name__ == "SpatialTransformer"]
    ups = [i for i, block in enumerate(unet.output_blocks) if _has(block, "Upsample")]
    for i in range((ups[-1] + 1) if ups else 0, len(unet.output_blocks)):
        paths += [f"output_blocks.{i}.{j}" for j, layer in enumerate(unet.output_blocks[i])
                  if type(layer).__name__ == "SpatialTransformer"]
    return paths

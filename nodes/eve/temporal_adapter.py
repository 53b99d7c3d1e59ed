"""The EVE video adapter: temporal layers over a frozen SD-style UNet (pure torch, no ComfyUI).

Emu Video / Make-A-Video add temporal layers to a text-to-image UNet: a temporal attention
after every spatial attention block and, optionally, a temporal 1-D convolution after every
spatial (ResNet) convolution. AnimateDiff motion modules are exactly the temporal-attention
part, trained over a frozen SD1.5, so the attention block here is written once in the
original AnimateDiff ``VanillaTemporalModule`` layout (guoyww/AnimateDiff
``animatediff/models/motion_module.py``) and loads its v2/v3 files key for key:

    {down_blocks.i | up_blocks.i | mid_block}.motion_modules.j.temporal_transformer.
        norm, proj_in, transformer_blocks.0.{attention_blocks.{0,1}.{to_q,to_k,to_v,to_out.0,
        pos_encoder.pe}, norms.{0,1}, ff.net.{0.proj,2}, ff_norm}, proj_out

Our own temporal convolutions use ``{...}.temporal_convs.j.conv.{weight,bias}``.

Fresh adapters are the identity: the attention's ``proj_out`` is zero-initialised
(AnimateDiff's ``zero_initialize``) and the convolution is residual with a zero kernel, so
``x + 0`` is returned bit for bit.

Frames are the batch axis: a layer gets ``[videos * frames, C, H, W]`` and the frame count.
``anchor=True`` leaves position 0 of every sequence (the first frame) unchanged while the
other frames still attend to it: the first frame follows the image-edit path exactly and
conditions the rest of the clip (see eve/windows.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..core.embeddings import sinusoidal_embedding

HEADS = 8          # AnimateDiff num_attention_heads
NORM_GROUPS = 32   # AnimateDiff norm_num_groups


def sinusoidal_pe(max_len: int, dim: int) -> torch.Tensor:
    """AnimateDiff's PositionalEncoding buffer, shape [1, max_len, dim]."""
    return sinusoidal_embedding(torch.arange(max_len), dim, interleaved=True)[None]


def _keep_anchor(x: torch.Tensor, out: torch.Tensor, frames: int) -> torch.Tensor:
    """``out`` with position 0 of every ``frames``-long sequence replaced by ``x``'s."""
    out = out.unflatten(0, (-1, frames))
    out[:, 0] = x.unflatten(0, (-1, frames))[:, 0]
    return out.flatten(0, 1)


class TemporalAttention(nn.Module):
    """AnimateDiff VersatileAttention ("Temporal_Self"): self-attention along frames."""

    def __init__(self, dim: int, heads: int, max_len: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Identity()])
        self.pos_encoder = nn.Module()
        self.pos_encoder.register_buffer("pe", sinusoidal_pe(max_len, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [sequences, frames, dim]
        x = x + self.pos_encoder.pe[:, :x.shape[1]].to(x.dtype)
        q, k, v = (f(x).unflatten(-1, (self.heads, -1)).transpose(1, 2) for f in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v)  # scale dim_head**-0.5, no mask
        return self.to_out[0](out.transpose(1, 2).flatten(2))


class _FeedForward(nn.Module):
    """diffusers FeedForward(dim, activation_fn="geglu"), mult 4: net.0.proj, net.2."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.ModuleList([nn.Module(), nn.Identity(), nn.Linear(dim * 4, dim)])
        self.net[0].proj = nn.Linear(dim, dim * 8)

    def forward(self, x):
        h, gate = self.net[0].proj(x).chunk(2, dim=-1)
        return self.net[2](h * F.gelu(gate))


class _TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, max_len: int):
        super().__init__()
        self.attention_blocks = nn.ModuleList([TemporalAttention(dim, heads, max_len) for _ in range(2)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(2)])
        self.ff = _FeedForward(dim)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x):
        for attn, norm in zip(self.attention_blocks, self.norms):
            x = attn(norm(x)) + x
        return self.ff(self.ff_norm(x)) + x


class _TemporalTransformer(nn.Module):
    def __init__(self, channels: int, heads: int, max_len: int):
        super().__init__()
        self.norm = nn.GroupNorm(NORM_GROUPS, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList([_TransformerBlock(channels, heads, max_len)])
        self.proj_out = nn.Linear(channels, channels)


class TemporalAttentionBlock(nn.Module):
    """One AnimateDiff motion module: ``x + proj_out(blocks(proj_in(norm(x))))`` along frames."""

    def __init__(self, channels: int, heads: int = HEADS, max_len: int = 32):
        super().__init__()
        if channels % NORM_GROUPS or channels % heads:
            raise ValueError(f"temporal attention needs channels divisible by {NORM_GROUPS} and {heads}, got {channels}")
        self.temporal_transformer = _TemporalTransformer(channels, heads, max_len)

    @property
    def max_len(self) -> int:
        return self.temporal_transformer.transformer_blocks[0].attention_blocks[0].pos_encoder.pe.shape[1]

    def forward(self, x: torch.Tensor, frames: int, anchor: bool = False) -> torch.Tensor:
        tt = self.temporal_transformer
        bf, c, h, w = x.shape
        if bf % frames:
            raise ValueError(f"batch of {bf} is not a whole number of {frames}-frame clips")
        if frames > self.max_len:
            raise ValueError(f"{frames} frames exceed this video adapter's {self.max_len}-frame positional "
                             "encoding; use sliding windows of at most that length")
        hs = tt.proj_in(rearrange(tt.norm(x), "bf c h w -> bf (h w) c"))
        # attention runs along frames, per pixel
        hs = rearrange(hs, "(b f) n c -> (b n) f c", f=frames)
        for block in tt.transformer_blocks:
            hs = block(hs)
        hs = rearrange(hs, "(b n) f c -> (b f) n c", n=h * w)
        # contiguous: a channels-last result would send the next convolutions down other kernels
        out = x + rearrange(tt.proj_out(hs), "bf (h w) c -> bf c h w", h=h).contiguous()
        return _keep_anchor(x, out, frames) if anchor else out


class TemporalConvBlock(nn.Module):
    """Residual temporal 1-D convolution (kernel 3 along frames), identity at init."""

    def __init__(self, channels: int, kernel: int = 3):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel, padding=kernel // 2)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor, frames: int, anchor: bool = False) -> torch.Tensor:
        bf, c, h, w = x.shape
        seq = rearrange(x, "(b f) c h w -> (b h w) c f", f=frames)
        delta = rearrange(self.conv(seq), "(b h w) c f -> (b f) c h w", h=h, w=w).contiguous()
        out = x + delta
        return _keep_anchor(x, out, frames) if anchor else out


# ----------------------------------------------------------------------------- layout

@dataclass(frozen=True)
class Placement:
    """Where a temporal layer goes in a ComfyUI SD UNet: ``stage`` is "input", "middle" or
    "output"; ``index`` the block in ``input_blocks``/``output_blocks`` (0 for middle);
    ``after`` "spatial" (after the block's ResBlock and attention) or "resnet:k" (after its
    k-th ResBlock)."""
    stage: str
    index: int
    after: str
    channels: int


def unet_layout(model_channels: int, channel_mult, num_res_blocks, mid_attention: bool = True,
                temporal_conv: bool = True) -> dict[str, Placement]:
    """Every temporal-layer prefix an SD-style UNet can hold, in AnimateDiff numbering.

    down_blocks.i.motion_modules.j -> input_blocks[1 + i*(n+1) + j] (after its spatial layers),
    up_blocks.i.motion_modules.j -> output_blocks[i*(n+1) + j] (before the upsampler),
    mid_block.motion_modules.0 -> middle_block between attention and the second ResBlock.
    """
    levels = len(channel_mult)
    nrb = list(num_res_blocks) if not isinstance(num_res_blocks, int) else [num_res_blocks] * levels
    out: dict[str, Placement] = {}
    idx = 1
    for i in range(levels):
        ch = model_channels * channel_mult[i]
        for j in range(nrb[i]):
            out[f"down_blocks.{i}.motion_modules.{j}"] = Placement("input", idx, "spatial", ch)
            if temporal_conv:
                out[f"down_blocks.{i}.temporal_convs.{j}"] = Placement("input", idx, "resnet:0", ch)
            idx += 1
        idx += 1 if i < levels - 1 else 0  # downsampler block
    mid = model_channels * channel_mult[-1]
    if mid_attention:
        out["mid_block.motion_modules.0"] = Placement("middle", 0, "spatial", mid)
    if temporal_conv:
        out["mid_block.temporal_convs.0"] = Placement("middle", 0, "resnet:0", mid)
        out["mid_block.temporal_convs.1"] = Placement("middle", 0, "resnet:1", mid)
    idx = 0
    for i in range(levels):
        ch = model_channels * channel_mult[levels - 1 - i]
        for j in range(nrb[levels - 1 - i] + 1):
            out[f"up_blocks.{i}.motion_modules.{j}"] = Placement("output", idx, "spatial", ch)
            if temporal_conv:
                out[f"up_blocks.{i}.temporal_convs.{j}"] = Placement("output", idx, "resnet:0", ch)
            idx += 1
    return out


_PREFIX = re.compile(r"^((?:down_blocks\.\d+|up_blocks\.\d+|mid_block)\.(?:motion_modules|temporal_convs)\.\d+)\.(.+)$")


class VideoAdapter(nn.Module):
    """A set of temporal layers keyed by their AnimateDiff-style prefix."""

    def __init__(self, layers: dict[str, nn.Module], name: str = "video adapter"):
        super().__init__()
        self.name = name
        self.layers = nn.ModuleDict({k.replace(".", "/"): v for k, v in layers.items()})

    def items(self):
        return [(k.replace("/", "."), v) for k, v in self.layers.items()]

    @property
    def max_frames(self) -> int:
        lens = [m.max_len for _, m in self.items() if isinstance(m, TemporalAttentionBlock)]
        return min(lens) if lens else 1 << 30

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors in the AnimateDiff key layout (plus ``temporal_convs`` of our own)."""
        return {f"{p}.{k}": v for p, m in self.items() for k, v in m.state_dict().items()}


def fresh_adapter(layout: dict[str, Placement], temporal_conv: bool = False, max_len: int = 32,
                  seed: int = 0) -> VideoAdapter:
    """An identity adapter for ``layout``: torch's default init, then zero output layers."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        layers = {}
        for prefix, pl in layout.items():
            if ".motion_modules." in prefix:
                m = TemporalAttentionBlock(pl.channels, max_len=max_len)
                nn.init.zeros_(m.temporal_transformer.proj_out.weight)
                nn.init.zeros_(m.temporal_transformer.proj_out.bias)
                layers[prefix] = m
            elif temporal_conv:
                layers[prefix] = TemporalConvBlock(pl.channels)
    finally:
        torch.random.set_rng_state(gen_state)
    return VideoAdapter(layers, name="fresh (identity) adapter")


_FAMILY_HINT = ("It was made for another backbone family (an SDXL module has 3 levels with 320/640/1280 "
                "channels, SD1.5 modules 4 levels with 320/640/1280/1280); pick a motion module for the "
                "checkpoint you load.")


def adapter_from_state_dict(sd: dict[str, torch.Tensor], name: str) -> VideoAdapter:
    """Build a VideoAdapter from AnimateDiff-format tensors (plus our ``temporal_convs``).

    Raises ValueError naming ``name`` when the file is not such a module.
    """
    groups: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for k, v in sd.items():
        m = _PREFIX.match(k)
        if m is None:
            unknown.append(k)
        else:
            groups.setdefault(m.group(1), {})[m.group(2)] = v
    if not groups:
        raise ValueError(
            f"{name}: no AnimateDiff motion-module keys (down_blocks.N.motion_modules.N...) found; "
            f"first keys: {list(sd)[:3]}. Pick an AnimateDiff v2/v3 SD1.5 motion module (e.g. mm_sd_v15_v2.ckpt, "
            "v3_sd15_mm.ckpt) or an adapter saved by this pack.")
    if unknown:
        raise ValueError(f"{name}: {len(unknown)} keys are not AnimateDiff motion-module keys (e.g. {unknown[:3]}); "
                         "this looks like another kind of file (a LoRA, a full checkpoint, a HotshotXL module?). "
                         "Pick an AnimateDiff v2/v3 SD1.5 motion module.")
    layers = {}
    for prefix, tensors in sorted(groups.items()):
        try:
            if ".motion_modules." in prefix:
                ch = tensors["temporal_transformer.proj_in.weight"].shape[1]
                pe = tensors.get("temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe")
                max_len = pe.shape[1] if pe is not None else 24
                mod = TemporalAttentionBlock(ch, max_len=max_len)
                if pe is None:  # v1 files store no pe buffer: it is the sinusoid anyway
                    tensors = dict(tensors)
                    for i in range(2):
                        tensors[f"temporal_transformer.transformer_blocks.0.attention_blocks.{i}.pos_encoder.pe"] = \
                            sinusoidal_pe(max_len, ch)
            else:
                ch = tensors["conv.weight"].shape[0]
                mod = TemporalConvBlock(ch, kernel=tensors["conv.weight"].shape[-1])
            mod.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
        except KeyError as e:
            raise ValueError(f"{name}: temporal layer '{prefix}' lacks tensor {e}; the file is incomplete or "
                             "not an AnimateDiff v2/v3 motion module") from None
        except (RuntimeError, ValueError) as e:
            raise ValueError(f"{name}: temporal layer '{prefix}' does not match the AnimateDiff v2/v3 layout "
                             f"({str(e).splitlines()[0]}); use an AnimateDiff v2/v3 motion module") from None
        layers[prefix] = mod
    if not any(".motion_modules." in p for p in layers):
        raise ValueError(f"{name}: holds no temporal attention (motion_modules); pick a motion module")
    return VideoAdapter(layers, name=name)


def check_adapter(adapter: VideoAdapter, layout: dict[str, Placement]) -> None:
    """Raise ValueError (naming the adapter) unless every layer fits the backbone ``layout``."""
    for prefix, mod in adapter.items():
        pl = layout.get(prefix)
        if pl is None:
            raise ValueError(f"video adapter '{adapter.name}': has temporal layer '{prefix}', which this "
                             f"backbone has no place for. {_FAMILY_HINT}")
        ch = (mod.temporal_transformer.proj_in.in_features if isinstance(mod, TemporalAttentionBlock)
              else mod.conv.in_channels)
        if ch != pl.channels:
            raise ValueError(f"video adapter '{adapter.name}': temporal layer '{prefix}' has {ch} channels but "
                             f"the backbone has {pl.channels} there. {_FAMILY_HINT}")

"""TokenFlow (Geyer et al., ICLR 2024): keyframes, extended attention, nearest-neighbour
correspondences and token propagation (Eq. 3-7), and the PnP schedule; pure torch (no ComfyUI
import). The paper-vs-official-code choices are listed in ``ddim.py``'s docstring.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

from ..core.frame_chunks import frame_chunks
from .keyframe_window import all_keyframes_groups


# ------------------------------------------------------------------------ keyframes


def sample_keyframes(num_frames: int, interval: int = 8, generator: torch.Generator | None = None,
                     mode: str = "random") -> torch.Tensor:
    """One keyframe index per interval ``[b, b + interval)`` of the clip, sorted (LongTensor).

    ``mode="random"``: uniform within each interval (the last one may be shorter), drawn
    from ``generator``; call once per sampling step to redraw (paper: random keyframes each
    step). ``mode="even"``: the middle of each interval, the same every step (the paper's
    "w/o random keyframes" ablation). An interval longer than the clip gives one keyframe.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if interval < 1:
        raise ValueError(f"keyframe interval must be >= 1, got {interval}")
    starts = torch.arange(0, num_frames, interval)
    lengths = (num_frames - starts).clamp(max=interval)
    if mode == "even":
        offsets = lengths // 2
    elif mode == "random":
        u = torch.rand(len(starts), generator=generator, dtype=torch.float64)
        offsets = (u * lengths).long().clamp(max=lengths - 1)
    else:
        raise ValueError(f"keyframe mode must be 'random' or 'even', got '{mode}'")
    return starts + offsets


def adjacent_keyframes(num_frames: int, keyframes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For every frame, the slots (positions in ``keyframes``) of its past and future keyframe.

    Past ``i-`` = the last keyframe <= i, future ``i+`` = the first keyframe >= i; a keyframe
    is its own past and future; frames before the first (after the last) keyframe use the
    first (last) keyframe for both. Returns ``(prev_slot, next_slot)``, LongTensors [num_frames].
    """
    kf = torch.as_tensor(keyframes, dtype=torch.long).flatten()
    if kf.numel() == 0:
        raise ValueError("at least one keyframe is needed")
    if not bool((kf[1:] > kf[:-1]).all()) or kf[0] < 0 or kf[-1] >= num_frames:
        raise ValueError(f"keyframes must be sorted, distinct and in [0, {num_frames}), got {kf.tolist()}")
    frames = torch.arange(num_frames)
    k = kf.numel()
    next_slot = torch.searchsorted(kf, frames, right=False)  # first kf >= i
    prev_slot = torch.searchsorted(kf, frames, right=True) - 1  # last kf <= i
    next_slot = torch.where(next_slot >= k, prev_slot, next_slot)
    prev_slot = torch.where(prev_slot < 0, next_slot, prev_slot)
    return prev_slot, next_slot


def propagation_weights(d_prev: torch.Tensor, d_next: torch.Tensor) -> torch.Tensor:
    """Eq. 7: weight of the *future* keyframe, ``w = sigmoid(d- / (d+ + d-))``.

    ``d_prev = |i - i-|``, ``d_next = |i - i+|``; the past keyframe gets ``1 - w`` (Eq. 6).
    When both distances are 0 (a keyframe, past = future = itself) the ratio is taken as 1/2;
    the two tokens blended are then the same, so the value does not matter.
    """
    d_prev = torch.as_tensor(d_prev, dtype=torch.float32)
    d_next = torch.as_tensor(d_next, dtype=torch.float32)
    total = d_prev + d_next
    ratio = torch.where(total > 0, d_prev / total.clamp(min=1e-12), torch.full_like(total, 0.5))
    return torch.sigmoid(ratio)


@dataclass
class ChunkPlan:
    """How one chunk of frames reads the keyframes' tokens during propagation.

    ``frames``: the chunk's slice of the clip; ``slots``: the keyframe slots it needs (sorted,
    they may lie outside the chunk: keyframes are shared across chunk borders, so there is
    no seam); ``prev_local`` / ``next_local``: per frame of the chunk, the position of its
    past / future keyframe in ``slots``; ``w_next``: Eq. 7 weight per frame.
    """
    frames: slice
    slots: torch.Tensor
    prev_local: torch.Tensor
    next_local: torch.Tensor
    w_next: torch.Tensor


def plan_chunks(num_frames: int, keyframes: torch.Tensor, frames_per_chunk: int) -> list[ChunkPlan]:
    """Split the clip into chunks of ``frames_per_chunk`` and plan each one's keyframe reads.

    The keyframes (and their edited tokens) are global for the step; a chunk's frames read
    their true past / future keyframes even across the chunk border, so chunking does not
    change the result.
    """
    chunks = frame_chunks(num_frames, frames_per_chunk)
    kf = torch.as_tensor(keyframes, dtype=torch.long).flatten()
    prev_slot, next_slot = adjacent_keyframes(num_frames, kf)
    frames = torch.arange(num_frames)
    w = propagation_weights((frames - kf[prev_slot]).abs(), (kf[next_slot] - frames).abs())
    plans = []
    for sl in chunks:
        slots = torch.unique(torch.cat([prev_slot[sl], next_slot[sl]]))  # sorted
        plans.append(ChunkPlan(sl, slots, torch.searchsorted(slots, prev_slot[sl]),
                               torch.searchsorted(slots, next_slot[sl]), w[sl]))
    return plans


# ------------------------------------------------------------- attention and tokens


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    if x.shape[-1] % heads:
        raise ValueError(f"channels {x.shape[-1]} not divisible by heads {heads}")
    return rearrange(x, "b n (h d) -> b h n d", h=heads)


def extended_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                       frames_per_chunk: int | None = None, groups=None) -> torch.Tensor:
    """Eq. 3-4: each keyframe's queries attend to the keys/values of all keyframes.

    ``q, k, v``: [K, L, C] (K keyframes, L tokens, C = heads * head_dim), already projected.
    Returns [K, L, C] (before the output projection), ``softmax(Q^i [K^1..K^K]^T / sqrt(d))
    [V^1..V^K]`` per head. Queries are processed ``frames_per_chunk`` keyframes at a time
    (default: all) to bound the attention matrix.

    ``groups`` (``keyframe_window.keyframe_groups``): instead, each group's query keyframes
    (``.queries``, a slice) attend to the keyframes ``.keys`` (sorted slots, gathered in that
    order; ``None``: all keyframes, exactly as above), so a keyframe window bounds every call's
    keys and the cost is linear in K.
    """
    kf = q.shape[0]
    if groups is None:
        groups = all_keyframes_groups(kf, frames_per_chunk or kf)
    k_all = v_all = None
    out = torch.empty_like(q)
    for group in groups:
        if group.keys is None:
            if k_all is None:  # all keyframes' tokens: [1, h, K*L, d]
                k_all = _split_heads(rearrange(k, "k l c -> 1 (k l) c"), heads)
                v_all = _split_heads(rearrange(v, "k l c -> 1 (k l) c"), heads)
            kg, vg = k_all, v_all
        else:
            idx = group.keys.to(k.device)
            kg = _split_heads(rearrange(k.index_select(0, idx), "k l c -> 1 (k l) c"), heads)
            vg = _split_heads(rearrange(v.index_select(0, idx), "k l c -> 1 (k l) c"), heads)
        qs = _split_heads(q[group.queries], heads)  # [b, h, L, d]
        b = qs.shape[0]
        o = F.scaled_dot_product_attention(qs, kg.expand(b, -1, -1, -1), vg.expand(b, -1, -1, -1))
        out[group.queries] = rearrange(o, "b h l d -> b l (h d)")
    return out


def nearest_neighbour_field(src_tokens: torch.Tensor, key_tokens: torch.Tensor,
                            token_chunk: int = 1024) -> torch.Tensor:
    """Eq. 5: for every token ``p`` of each frame, the index ``q`` of the keyframe token with
    the smallest cosine distance (= largest cosine similarity).

    ``src_tokens``: [B, N, C] (one frame per row), ``key_tokens``: [B, M, C] (the keyframe paired
    with each frame) or [M, C] (one keyframe for all). Returns LongTensor [B, N]. Query tokens
    are processed ``token_chunk`` at a time, so memory is ``B * token_chunk * M`` similarities.
    """
    if key_tokens.ndim == 2:
        key_tokens = key_tokens.unsqueeze(0).expand(src_tokens.shape[0], -1, -1)
    if src_tokens.shape[0] != key_tokens.shape[0] or src_tokens.shape[-1] != key_tokens.shape[-1]:
        raise ValueError(f"token shapes do not pair: {list(src_tokens.shape)} vs {list(key_tokens.shape)}")
    keys_t = F.normalize(key_tokens.float(), dim=-1).transpose(1, 2)  # [B, C, M]
    out = torch.empty(src_tokens.shape[:2], dtype=torch.long, device=src_tokens.device)
    for s in range(0, src_tokens.shape[1], token_chunk):
        q = F.normalize(src_tokens[:, s:s + token_chunk].float(), dim=-1)
        out[:, s:s + token_chunk] = torch.bmm(q, keys_t).argmax(dim=-1)
    return out


def propagate_tokens(key_tokens: torch.Tensor, nn_prev: torch.Tensor, nn_next: torch.Tensor,
                     prev_slot: torch.Tensor, next_slot: torch.Tensor, w_next: torch.Tensor) -> torch.Tensor:
    """Eq. 6: ``w * T[i+][nn_next[p]] + (1 - w) * T[i-][nn_prev[p]]`` for every frame and token.

    ``key_tokens``: [K, M, C] edited keyframe tokens (T_base); ``nn_prev`` / ``nn_next``: [B, N]
    NN fields to the past / future keyframe; ``prev_slot`` / ``next_slot``: [B] their slots in
    ``key_tokens``; ``w_next``: [B] Eq. 7 weights. Returns [B, N, C].
    """
    kf, m, c = key_tokens.shape
    flat = key_tokens.reshape(kf * m, c)
    dev = key_tokens.device
    idx_next = (next_slot.to(dev).view(-1, 1) * m + nn_next.to(dev)).reshape(-1)
    idx_prev = (prev_slot.to(dev).view(-1, 1) * m + nn_prev.to(dev)).reshape(-1)
    b, n = nn_next.shape
    w = w_next.to(device=dev, dtype=key_tokens.dtype).view(-1, 1, 1)
    nxt = flat.index_select(0, idx_next).view(b, n, c)
    prv = flat.index_select(0, idx_prev).view(b, n, c)
    return torch.lerp(prv, nxt, w)


def tokenflow_chunk(src_tokens: torch.Tensor, key_src_tokens: torch.Tensor, key_edit_tokens: torch.Tensor,
                    plan: ChunkPlan, token_chunk: int = 1024) -> torch.Tensor:
    """Eq. 5-7 for one chunk: NN fields from the chunk's source tokens to its past/future
    keyframes' source tokens, then the blend of those keyframes' edited tokens.

    ``src_tokens``: [B, N, C] source tokens of the chunk's frames; ``key_src_tokens``: [K, N, C]
    and ``key_edit_tokens``: [K, N, C'] of *all* keyframes of the step. Returns [B, N, C'].
    """
    ks, ke = key_src_tokens[plan.slots], key_edit_tokens[plan.slots]
    nn_prev = nearest_neighbour_field(src_tokens, ks[plan.prev_local], token_chunk)
    nn_next = nearest_neighbour_field(src_tokens, ks[plan.next_local], token_chunk)
    return propagate_tokens(ke, nn_prev, nn_next, plan.prev_local, plan.next_local, plan.w_next)


# ------------------------------------------------------------------------------ PnP


def pnp_inject(step: int, num_steps: int, fraction: float) -> bool:
    """Whether PnP injects at sampling step ``step`` (0 = noisiest) of ``num_steps``.

    As the official code: the first ``int(num_steps * fraction)`` steps (pnp_f_t = 0.8 for
    conv features, pnp_attn_t = 0.5 for self-attention q/k), i.e. the noisiest ones.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"PnP injection fraction must be in [0, 1], got {fraction}")
    return step < int(math.floor(num_steps * fraction + 1e-9))


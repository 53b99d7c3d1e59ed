"""TokenFlow (Geyer et al., ICLR 2024): the math, pure torch (no ComfyUI import).

Pieces, in the order the algorithm uses them (paper Sec. 3-4, Alg. 1, appendix A):

- DDIM in ComfyUI's sigma space (``ddim_step``, ``ddim_invert_step``, ``ddim_invert``).
  ComfyUI writes a noisy latent as ``x = x0 + sigma * eps`` (the variance-exploding form of
  the VP latent ``sqrt(a) x0 + sqrt(1-a) eps`` divided by ``sqrt(a)``, ``sigma = sqrt((1-a)/a)``).
  In that form the deterministic DDIM update ``x' = sqrt(a') x0_hat + sqrt(1-a') eps_hat``
  becomes ``x' = x0_hat + sigma' eps_hat = x + (sigma' - sigma) eps_hat``. Any model
  parameterisation (eps or v-prediction) enters only through ``eps_hat``; for a model that
  returns the denoised ``x0_hat`` (ComfyUI's model call does, whatever it predicts),
  ``eps_from_denoised`` gives ``eps_hat = (x - x0_hat) / sigma``.
- Keyframes (``sample_keyframes``, ``adjacent_keyframes``, ``plan_chunks``).
- Extended attention over the keyframes (``extended_attention``, Eq. 3-4).
- Correspondences and propagation (``nearest_neighbour_field`` Eq. 5,
  ``propagation_weights`` Eq. 7, ``propagate_tokens`` Eq. 6).
- PnP injection schedule (``pnp_inject``).

Paper vs official code (omerbt/TokenFlow), the choices made here:
- Inversion: the paper (appendix A) inverts with 1000 DDIM steps; we invert on the sampling
  sigmas themselves (the trajectory is exactly what sampling needs) and make few steps near
  exact with an optional fixed-point refinement of each step (``refine_iters``). The plain
  step evaluates eps at the current latent and the *next* sigma, as the official
  preprocess.py (diffusers-style inversion) does; this never evaluates the model at sigma 0.
- Keyframes: one per interval of ``interval`` frames, drawn anew every step (paper and code).
  The code draws one per batch and needs the frame count divisible by the batch size; here
  the last interval may be shorter and intervals larger than the clip work.
- Adjacent keyframes: the paper's past / future keyframes of each frame (Eq. 5-7) with the
  true frame distances. The code instead pairs each batch with its own and the previous
  batch's keyframe and measures distances to the batch *centres*; we follow the paper.
  A keyframe's neighbours are itself (so it keeps its own edited tokens, as in the code's
  pivotal pass); frames before the first / after the last keyframe use that keyframe only.
- Eq. 7 weight ``w = sigmoid(d- / (d+ + d-))`` on the future keyframe, exactly as written
  (paper and code agree; note the sigmoid keeps w in [0.5, 0.731]).
- NN features: the appendix and the code match self-attention *input* tokens of the source
  frames (the code's ``norm_hidden_states``), the main text says the block's tokens; the
  functions here take whatever tokens the caller passes; the glue passes attention inputs.
- Source branch: the official code propagates the *source* part of its batch too (its
  TokenFlowBlock gathers source, uncond and cond outputs from the keyframes), so its deeper
  layers' NN features and the PnP conv features come from a propagated source. We keep each
  source frame's own features (the paper's source tokens): on the toy model of the
  consistency test the official variant moved the warp error by 1% (214.0 vs 211.8 x1e-3)
  and it would hold the keyframes' source outputs as well.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

EpsFn = Callable[[torch.Tensor, float], torch.Tensor]

# ----------------------------------------------------------------------------- DDIM


def eps_from_denoised(denoise_fn: Callable[[torch.Tensor, float], torch.Tensor]) -> EpsFn:
    """Turn a denoiser ``D(x, sigma) -> x0_hat`` into ``eps(x, sigma) = (x - x0_hat) / sigma``.

    ComfyUI's model call returns ``x0_hat`` for eps- and v-prediction models alike (its
    model_sampling converts), so this is how either kind drives the DDIM functions here.
    ``sigma`` must be > 0 (``ddim_invert`` never asks for sigma 0).
    """
    def eps_fn(x: torch.Tensor, sigma: float) -> torch.Tensor:
        if sigma <= 0:
            raise ValueError("eps is undefined at sigma 0 for a denoiser; evaluate at sigma > 0")
        return (x - denoise_fn(x, sigma)) / sigma
    return eps_fn


def ddim_step(x: torch.Tensor, sigma: float, sigma_next: float, eps: torch.Tensor) -> torch.Tensor:
    """One deterministic DDIM step from ``sigma`` to ``sigma_next`` (either direction).

    ``x0_hat = x - sigma * eps``; ``x_next = x0_hat + sigma_next * eps``.
    """
    return x + (sigma_next - sigma) * eps


def ddim_invert_step(eps_fn: EpsFn, x: torch.Tensor, sigma: float, sigma_next: float,
                     refine_iters: int = 0) -> torch.Tensor:
    """One DDIM inversion step from ``sigma`` up to ``sigma_next`` > ``sigma``.

    Plain (``refine_iters=0``): ``x_next = x + (sigma_next - sigma) * eps(x, sigma_next)``,
    eps taken at the current latent and the target sigma (official preprocess.py).
    Refined: iterate ``x_next <- x + (sigma_next - sigma) * eps(x_next, sigma_next)``
    ``refine_iters`` more times. Its fixed point is the latent whose DDIM *sampling* step
    (``ddim_step(x_next, sigma_next, sigma, eps(x_next, sigma_next))``) returns exactly ``x``,
    so the round trip is exact up to the remaining fixed-point error. Each iteration costs
    one model evaluation.
    """
    if refine_iters < 0:
        raise ValueError(f"refine_iters must be >= 0, got {refine_iters}")
    x_next = ddim_step(x, sigma, sigma_next, eps_fn(x, sigma_next))
    for _ in range(refine_iters):
        x_next = ddim_step(x, sigma, sigma_next, eps_fn(x_next, sigma_next))
    return x_next


def check_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """Sampling sigmas as ComfyUI gives them: 1-D, strictly decreasing, >= 0, at least 2."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    if sigmas.numel() < 2:
        raise ValueError(f"sigmas: need at least 2 values (1 step), got {sigmas.numel()}")
    if (sigmas < 0).any() or not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError("sigmas: must be non-negative and strictly decreasing (sampling order), "
                         f"got {[round(float(s), 4) for s in sigmas[:8]]}...")
    return sigmas


def ddim_invert(eps_fn: EpsFn, x0: torch.Tensor, sigmas: torch.Tensor, refine_iters: int = 0,
                callback: Callable[[int], None] | None = None) -> torch.Tensor:
    """DDIM-invert clean latents ``x0`` along the sampling ``sigmas`` (decreasing).

    Returns the trajectory ``traj`` of shape ``[len(sigmas), *x0.shape]`` aligned with the
    sampling order: ``traj[i]`` is the latent at ``sigmas[i]``, so ``traj[0]`` is the noisiest
    and ``traj[-1]`` the latent at ``sigmas[-1]`` (``x0`` itself when the last sigma is 0; if
    it is > 0, ``x0`` is taken to be the latent at that sigma). The frames of the batch are
    independent (``eps_fn`` must not mix them), so callers may invert chunk by chunk.
    ``callback(step)`` is called after each step (progress / cancel).
    """
    s = check_sigmas(sigmas).tolist()
    n = len(s)
    traj = torch.empty((n, *x0.shape), dtype=x0.dtype, device=x0.device)
    traj[n - 1] = x0
    x = x0
    for i in range(n - 1, 0, -1):  # from sigmas[-1] up to sigmas[0]
        x = ddim_invert_step(eps_fn, x, s[i], s[i - 1], refine_iters)
        traj[i - 1] = x
        if callback is not None:
            callback(n - i)
    return traj


def ddim_sample(eps_fn: EpsFn, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM sampling from ``sigmas[0]`` down to ``sigmas[-1]``.

    eps is evaluated at the current latent and sigma (ComfyUI's ddim / euler sampler).
    """
    s = check_sigmas(sigmas).tolist()
    for i in range(len(s) - 1):
        x = ddim_step(x, s[i], s[i + 1], eps_fn(x, s[i]))
    return x


def sdedit_start(x0: torch.Tensor, x_max: torch.Tensor, sigma_max: float, sigma_min: float,
                 sigma_start: float) -> torch.Tensor:
    """SDEdit start: the clean latent noised to ``sigma_start`` with the *inverted* noise.

    ``x0`` is the latent at ``sigma_min`` (the clip; ``sigma_min`` is usually 0) and ``x_max``
    its DDIM inversion at ``sigma_max``; the inverted noise ``(x_max - x0) / (sigma_max -
    sigma_min)`` is shared structure across frames (official run_tokenflow_sdedit.py adds the
    DDIM eps rather than fresh noise). Returns ``x0 + (sigma_start - sigma_min) * eps``.
    """
    eps = (x_max - x0) / (sigma_max - sigma_min)
    return x0 + (sigma_start - sigma_min) * eps


def fingerprint(*parts) -> str:
    """A short stable hash of tensors / strings / numbers (which model, frames and sigmas
    an inversion belongs to), so a sampler can refuse a mismatched inversion."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, torch.Tensor):
            t = p.detach().to("cpu").contiguous()
            h.update(f"T{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(f"{type(p).__name__}:{p!r}".encode())
        h.update(b"|")
    return h.hexdigest()[:16]


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
    if frames_per_chunk < 1:
        raise ValueError(f"frames_per_chunk must be >= 1, got {frames_per_chunk}")
    kf = torch.as_tensor(keyframes, dtype=torch.long).flatten()
    prev_slot, next_slot = adjacent_keyframes(num_frames, kf)
    frames = torch.arange(num_frames)
    w = propagation_weights((frames - kf[prev_slot]).abs(), (kf[next_slot] - frames).abs())
    plans = []
    for start in range(0, num_frames, frames_per_chunk):
        sl = slice(start, min(start + frames_per_chunk, num_frames))
        slots = torch.unique(torch.cat([prev_slot[sl], next_slot[sl]]))  # sorted
        plans.append(ChunkPlan(sl, slots, torch.searchsorted(slots, prev_slot[sl]),
                               torch.searchsorted(slots, next_slot[sl]), w[sl]))
    return plans


# ------------------------------------------------------------- attention and tokens


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    if c % heads:
        raise ValueError(f"channels {c} not divisible by heads {heads}")
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def extended_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                       frames_per_chunk: int | None = None) -> torch.Tensor:
    """Eq. 3-4: each keyframe's queries attend to the keys/values of all keyframes.

    ``q, k, v``: [K, L, C] (K keyframes, L tokens, C = heads * head_dim), already projected.
    Returns [K, L, C] (before the output projection), ``softmax(Q^i [K^1..K^K]^T / sqrt(d))
    [V^1..V^K]`` per head. Queries are processed ``frames_per_chunk`` keyframes at a time
    (default: all) to bound the attention matrix.
    """
    kf, L, c = q.shape
    k_all = _split_heads(k.reshape(1, kf * L, c), heads)  # [1, h, K*L, d]
    v_all = _split_heads(v.reshape(1, kf * L, c), heads)
    step = frames_per_chunk or kf
    out = torch.empty_like(q)
    for s in range(0, kf, step):
        qs = _split_heads(q[s:s + step], heads)  # [b, h, L, d]
        b = qs.shape[0]
        o = F.scaled_dot_product_attention(qs, k_all.expand(b, -1, -1, -1), v_all.expand(b, -1, -1, -1))
        out[s:s + step] = o.transpose(1, 2).reshape(b, L, c)
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


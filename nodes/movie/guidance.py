"""MoViE guidance math (pure torch, no ComfyUI import): two-knob guidance (Eq. 1), the
guidance-scale embedding and the guidance adapter of multimodal guidance distillation (Sec. 3.3,
Alg. 1); its weight deltas are core's (``core/weight_deltas.py``).

Paper: "MoViE: Mobile Diffusion for Video Editing" (Qualcomm AI Research).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..core.embeddings import sinusoidal_embedding
from ..core.weight_deltas import FullDelta, LoRADelta, Switch

# Alg. 1's training ranges for the two knobs.
S_I_RANGE = (1.0, 3.0)
S_T_RANGE = (2.0, 14.0)
NUM_TIMESTEPS = 1000
# The knobs (1..14) are multiplied by this before the sinusoidal embedding so that they
# span the same frequency band as diffusion timesteps (0..1000) do.
SCALE_EMBED_MULT = 100.0


# ----------------------------------------------------------------------------- Eq. 1

def two_knob_guidance(eps_uncond: torch.Tensor, eps_image: torch.Tensor, eps_full: torch.Tensor,
                      s_image, s_text) -> torch.Tensor:
    """Eq. 1: eps(x,0,0) + s_I (eps(x,c_I,0) - eps(x,0,0)) + s_T (eps(x,c_I,c_T) - eps(x,c_I,0)).

    ``s_image``/``s_text``: floats or tensors broadcastable to the predictions (per-sample [B,1,1,1]).
    """
    return eps_uncond + s_image * (eps_image - eps_uncond) + s_text * (eps_full - eps_image)


# ------------------------------------------------------- guidance embedding (Sec. 3.3)

class GuidanceScaleEmbedding(nn.Module):
    """(s_I, s_T) -> a vector added to the UNet's timestep embedding (reaches every ResBlock
    through its own emb projection, exactly like the timestep). Sinusoidal embedding of each
    scale (x SCALE_EMBED_MULT), then Linear-SiLU-Linear; the last Linear starts at zero so the
    untrained student is exactly the teacher."""

    def __init__(self, model_channels: int, time_embed_dim: int, generator: torch.Generator | None = None):
        super().__init__()
        self.model_channels = model_channels
        self.time_embed_dim = time_embed_dim
        self.fc1 = nn.Linear(2 * model_channels, time_embed_dim)
        if generator is not None:  # nn.Linear's own init, from the run's seed instead of the global RNG
            nn.init.kaiming_uniform_(self.fc1.weight, a=math.sqrt(5), generator=generator)
            bound = 1 / math.sqrt(2 * model_channels)
            nn.init.uniform_(self.fc1.bias, -bound, bound, generator=generator)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(time_embed_dim, time_embed_dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, scales: torch.Tensor) -> torch.Tensor:
        """scales: [B, 2] (s_I, s_T) -> [B, time_embed_dim]."""
        s = scales.reshape(-1, 2).float() * SCALE_EMBED_MULT
        e = torch.cat([sinusoidal_embedding(s[:, 0], self.model_channels),
                       sinusoidal_embedding(s[:, 1], self.model_channels)], dim=-1)
        e = e.to(self.fc1.weight.dtype)
        return self.fc2(self.act(self.fc1(e)))


def scales_for_batch(scales: torch.Tensor, batch: int) -> torch.Tensor:
    """[2] or [n, 2] scales -> [batch, 2]: one pair broadcast, or n pairs repeated over
    batch/n consecutive copies (ComfyUI may batch several copies of the same clip)."""
    s = scales.reshape(-1, 2)
    if s.shape[0] == batch:
        return s
    if s.shape[0] == 1:
        return s.expand(batch, 2)
    if batch % s.shape[0] == 0:
        return s.repeat(batch // s.shape[0], 1)
    raise ValueError(f"{s.shape[0]} guidance-scale pairs for a batch of {batch}")


def sample_training_draw(batch: int, generator: torch.Generator,
                         s_i_range=S_I_RANGE, s_t_range=S_T_RANGE, num_timesteps: int = NUM_TIMESTEPS):
    """Alg. 1 lines 3-5: t ~ U{0..T-1}, s_I ~ U[s_I range], s_T ~ U[s_T range]."""
    t = torch.randint(0, num_timesteps, (batch,), generator=generator)
    u = torch.rand(batch, 2, generator=generator)
    s_i = s_i_range[0] + (s_i_range[1] - s_i_range[0]) * u[:, 0]
    s_t = s_t_range[0] + (s_t_range[1] - s_t_range[0]) * u[:, 1]
    return t, torch.stack([s_i, s_t], dim=1)


# --------------------------------------------------------------- the guidance adapter

GUIDANCE_KEY = "videoedit_guidance_scales"  # transformer_options entry read by the emb patch
ADAPTER_FORMAT = "videoedit.movie.guidance_adapter"
ADAPTER_VERSION = "1"


class GuidanceEmbPatch:
    """An ``emb_patch`` (UNet: emb = p(emb, model_channels, transformer_options)): adds the
    guidance-scale embedding of transformer_options[GUIDANCE_KEY] (default: ``default``)."""

    videoedit_guidance_patch = True  # duck-typed marker (the pack may be imported twice)

    def __init__(self, embed: GuidanceScaleEmbedding, switch: Switch, default=(1.5, 7.5)):
        self.embed = embed
        self.switch = switch
        self.default = tuple(default)

    def __deepcopy__(self, memo):  # ModelPatcher.clone deep-copies model_options: share us
        return self

    def __call__(self, emb, model_channels, transformer_options):
        if not self.switch.enabled:
            return emb
        scales = transformer_options.get(GUIDANCE_KEY, self.default)
        s = torch.as_tensor(scales, dtype=torch.float32).to(emb.device)
        if self.embed.fc1.weight.device != emb.device:
            self.embed.to(emb.device)
        return emb + self.embed(scales_for_batch(s, emb.shape[0])).to(emb.dtype)


class GuidanceAdapter(nn.Module):
    """What guidance distillation trains: the scale embedding plus weight deltas on the UNet
    (LoRA or full), keyed by the model's weight names ("diffusion_model.x.y.weight")."""

    def __init__(self, model_channels: int, time_embed_dim: int, family: dict,
                 kind: str = "lora", rank: int = 16, s_i_range=S_I_RANGE, s_t_range=S_T_RANGE,
                 generator: torch.Generator | None = None):
        super().__init__()
        if kind not in ("lora", "full"):
            raise ValueError(f"adapter kind must be 'lora' or 'full', got '{kind}'")
        self.switch = Switch()
        self.embed = GuidanceScaleEmbedding(model_channels, time_embed_dim, generator)
        self.deltas = nn.ModuleDict()
        self.weight_keys: dict[str, str] = {}
        self.family = dict(family)
        self.kind = kind
        self.rank = rank
        self.s_i_range = tuple(map(float, s_i_range))
        self.s_t_range = tuple(map(float, s_t_range))
        self.steps = 0
        self.source = "guidance adapter"  # what errors call it: the loader's input and file name

    def add_delta(self, weight_key: str, shape, generator: torch.Generator | None = None,
                  rank: int | None = None):
        name = weight_key.replace(".", "__")
        if self.kind == "lora":
            self.deltas[name] = LoRADelta(shape, rank or self.rank, switch=self.switch, generator=generator)
        else:
            self.deltas[name] = FullDelta(shape, switch=self.switch)
        self.weight_keys[name] = weight_key

    def emb_patch(self, default=(1.5, 7.5)) -> GuidanceEmbPatch:
        return GuidanceEmbPatch(self.embed, self.switch, default)

    def weight_wrappers(self):
        return [(self.weight_keys[n], d) for n, d in self.deltas.items()]

    def in_range(self, s_i: float, s_t: float) -> list[str]:
        msgs = []
        for name, v, (lo, hi) in (("image_guidance", s_i, self.s_i_range), ("text_guidance", s_t, self.s_t_range)):
            if not lo <= v <= hi:
                msgs.append(f"warning: {name} {v:g} is outside the trained range [{lo:g}, {hi:g}]; "
                            "the student extrapolates there and may not follow Eq. 1")
        return msgs

    # ---- file format (safetensors: tensors + string metadata)
    def to_state(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        import json
        sd = {f"embed.{k}": v.detach().float().contiguous().cpu() for k, v in self.embed.state_dict().items()}
        for n, d in self.deltas.items():
            key = self.weight_keys[n]
            for pk, pv in d.named_parameters():
                sd[f"delta.{key}.{pk}"] = pv.detach().float().contiguous().cpu()
        meta = {"format": ADAPTER_FORMAT, "version": ADAPTER_VERSION, "kind": self.kind,
                "rank": str(self.rank), "family": json.dumps(self.family, sort_keys=True),
                "model_channels": str(self.embed.model_channels),
                "time_embed_dim": str(self.embed.time_embed_dim),
                "s_i_range": json.dumps(self.s_i_range), "s_t_range": json.dumps(self.s_t_range),
                "steps": str(self.steps)}
        return sd, meta

    @classmethod
    def from_state(cls, sd: dict[str, torch.Tensor], meta: dict[str, str], source: str = "adapter"):
        """The adapter of a file's tensors and metadata; every inconsistency is a ValueError that
        starts with ``source`` (the input and file name)."""
        import json
        meta = meta or {}
        if meta.get("format") != ADAPTER_FORMAT:
            raise ValueError(f"{source}: not a MoViE guidance adapter (metadata format is "
                             f"{meta.get('format')!r}); pick a file written by CFG Distill (train)")
        redo = "pick a file written by CFG Distill (train), or train the adapter again"
        try:
            ad = cls(int(meta["model_channels"]), int(meta["time_embed_dim"]), dict(json.loads(meta["family"])),
                     kind=meta["kind"], rank=int(meta["rank"]), s_i_range=json.loads(meta["s_i_range"]),
                     s_t_range=json.loads(meta["s_t_range"]))
            ad.steps = int(meta.get("steps", 0))
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"{source}: its metadata is incomplete or corrupt ({type(e).__name__}: {e}); {redo}") from None
        ad.source = source
        try:
            ad.embed.load_state_dict({k[len("embed."):]: v for k, v in sd.items() if k.startswith("embed.")})
        except RuntimeError as e:
            raise ValueError(f"{source}: its guidance embedding does not match its metadata (model_channels "
                             f"{ad.embed.model_channels}, time_embed_dim {ad.embed.time_embed_dim}): "
                             f"{str(e).splitlines()[-1].strip()[:160]}; {redo}") from None
        keys = sorted({k[len("delta."):].rsplit(".", 1)[0] for k in sd if k.startswith("delta.")})
        parts = ("up", "down") if ad.kind == "lora" else ("diff",)
        for key in keys:
            t = [sd.get(f"delta.{key}.{p}") for p in parts]
            if any(x is None for x in t) or len({k for k in sd if k.startswith(f"delta.{key}.")}) != len(parts):
                raise ValueError(f"{source}: the delta of {key} does not have exactly the tensors "
                                 f"{', '.join(parts)} of a {ad.kind} adapter; {redo}")
            if ad.kind == "lora":
                up, down = t
                if up.ndim != 2 or down.ndim != 2 or up.shape[1] != down.shape[0]:
                    raise ValueError(f"{source}: the LoRA of {key} has up {list(up.shape)} and down "
                                     f"{list(down.shape)}, which do not multiply; {redo}")
                ad.add_delta(key, (up.shape[0], down.shape[1]), rank=up.shape[1])
                d = ad.deltas[key.replace(".", "__")]
                if d.up.shape != up.shape:  # a rank above the weight's own sides
                    raise ValueError(f"{source}: the LoRA of {key} has rank {up.shape[1]}, more than its weight's "
                                     f"sides ({up.shape[0]} x {down.shape[1]}) allow; {redo}")
                d.up.data.copy_(up)
                d.down.data.copy_(down)
            else:
                ad.add_delta(key, t[0].shape)
                ad.deltas[key.replace(".", "__")].diff.data.copy_(t[0])
        return ad

    def misfits(self, weight_shapes: dict[str, tuple]) -> list[str]:
        """The deltas that do not fit a model with these weight shapes (key -> shape): the weight is
        missing, or the delta's shape is another (a LoRA of rank r: up [out, r], down [r, in...])."""
        bad = []
        for key, d in self.weight_wrappers():
            shape = weight_shapes.get(key)
            if shape is None:
                bad.append(f"{key}: no such weight in the model")
                continue
            have = tuple(d.diff.shape) if hasattr(d, "diff") else (d.up.shape[0], d.down.shape[1])
            want = tuple(shape) if hasattr(d, "diff") else (shape[0], math.prod(shape[1:]))
            if have != want:
                bad.append(f"{key}: delta {list(have)} vs weight {list(want)}")
        return bad


def family_mismatch(trained: dict, model: dict) -> list[str]:
    """Names of the family fields that differ (empty: the adapter fits the model)."""
    return [k for k in sorted(set(trained) | set(model)) if trained.get(k) != model.get(k)]

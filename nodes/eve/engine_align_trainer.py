"""EVE LoRA alignment (FDD) on ComfyUI models (engine): the trainer shared by the LoRA Aligner
(train) node and the headless command (``python -m harness.train``, also under torchrun).

One patched model serves every pass, so no second copy of the backbone is loaded: the student
is a clone of the video teacher (backbone + video adapter) with the trainable LoRA as weight
wrappers, and the per-frame ControlNet (the edit adapter) is added per call. Switches make the
other models out of it:
- video teacher rho: LoRA off, no ControlNet (exactly the video_teacher input);
- edit teacher psi: LoRA off, temporal layers skipped, ControlNet on (backbone + ControlNet);
- feature network of the discriminators: LoRA off, temporal layers skipped, no ControlNet, the
  backbone's UNet encoder at t = 0 with the empty prompt (frozen, as MoViE and LADD do).
The math is eve/align.py; the loop with checkpoints, resume and DDP is core/trainer_loop.py.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

import comfy.model_management
import comfy.utils
from comfy.ldm.modules.diffusionmodules.openaimodel import (Downsample, TimestepEmbedSequential, forward_timestep_embed,
                                                            timestep_embedding)

from ..core.ddp import ddp_average_grads_, ddp_info
from ..core.trainer_loop import run_training_loop
from ..core.weight_deltas import FrozenWeight, LoRADelta, Switch
from ..host.training_models import plain_control_net, plain_model, training_mode
from . import align as eve_align
from .engine_video_adapter import check_controlnet

# by class name: the pack may be imported twice (ComfyUI's custom_nodes copy and 'videoedit'),
# and an adapter built by one copy must still be recognised by the other
TEMPORAL_NAMES = ("TemporalAttentionBlock", "TemporalConvBlock")


def is_temporal(layer) -> bool:
    return type(layer).__name__ in TEMPORAL_NAMES


@dataclass
class AlignConfig:
    steps: int = 1500
    batch_size: int = 1
    learning_rate: float = 1e-5
    rank: int = 16
    k: int = 3
    schedule_steps: int = 1000
    teacher_steps: int = 8
    sds_fraction: float = 2 / 3
    control_strength: float = 1.0
    seed: int = 0
    checkpoint_every: int = 100
    checkpointing: bool = True

    def settings(self) -> eve_align.AlignSettings:
        return eve_align.AlignSettings(self.k, self.schedule_steps, self.teacher_steps, self.sds_fraction,
                                       self.checkpointing)


@dataclass
class AlignData:
    """Pre-encoded clips: latents [N, F, 4, h, w] (VAE latents, before the model's scaling),
    hints [N, F, H, W, 3] (the source frames, the ControlNet's per-frame images), the instruction
    and caption contexts [N, T, D] and the empty prompt [1, T, D]."""
    latents: torch.Tensor
    hints: torch.Tensor
    instruction: torch.Tensor
    caption: torch.Tensor
    empty: torch.Tensor
    names: list = field(default_factory=list)

    def check(self):
        n = self.latents.shape[0]
        if n == 0:
            raise ValueError("dataset_folder: no clips")
        if not (self.hints.shape[0] == self.instruction.shape[0] == self.caption.shape[0] == n):
            raise ValueError("dataset: clips, instructions and captions do not match one to one")


def _skip_temporal(layer, x, *args):
    """forward_timestep_embed patch of our temporal layers (registered for their classes only):
    the layer is skipped, so the pass is the backbone alone."""
    return x


def same_backbone(a, b) -> bool:
    if a.model is b.model:
        return True
    sa, sb = a.model.diffusion_model.state_dict(), b.model.diffusion_model.state_dict()
    keys = [k for k in sa if ".eve_" not in k]
    return (type(a.model) is type(b.model) and all(k in sb and sa[k].shape == sb[k].shape for k in keys)
            and all(torch.equal(sa[k], sb[k]) for k in keys[:4] + keys[-4:]))


def _describe(m) -> str:
    u = m.model.diffusion_model
    return (f"{type(m.model).__name__}, model_channels {u.model_channels}, channel_mult {tuple(u.channel_mult)}, "
            f"first weight sum {float(next(iter(u.parameters())).float().sum()):.6g}")


def _unpatched_block(patcher, path: str):
    """The block at ``path`` of the patcher's own model, without object patches."""
    if path in patcher.object_patches_backup:
        return patcher.object_patches_backup[path]
    return comfy.utils.get_attr(patcher.model, path)


def _trainable_copy(block, backbone_block):
    """A copy of an adapter-patched block whose temporal layers are ours (non-inference, frozen);
    the backbone's layers are those of ``backbone_block`` (the same name in the student's own model:
    the layers themselves on a plain model, a non-dynamic delegate's fresh ones under dynamic VRAM),
    shared, their weights wrapped, not copied."""
    own = dict(backbone_block.named_children())
    out = OrderedDict()
    for name, layer in block.named_children():
        if not is_temporal(layer):
            if type(own.get(name)) is not type(layer):
                raise ValueError(f"video_teacher: its adapted block has a layer '{name}' ({type(layer).__name__}) "
                                 "that its backbone lacks; apply the video adapter to this backbone again")
            layer = own[name]
        else:
            layer = copy.deepcopy(layer)
            for mod in layer.modules():
                for pn, p in list(mod.named_parameters(recurse=False)):
                    setattr(mod, pn, nn.Parameter(p.detach().clone(), requires_grad=False))
                for bn, bf in list(mod.named_buffers(recurse=False)):
                    mod.register_buffer(bn, bf.detach().clone())
        out[name] = layer
    return TimestepEmbedSequential(out)


class Aligner:
    """One alignment run: ``run()`` trains from the checkpoint (if any) to cfg.steps."""

    def __init__(self, edit_teacher, control_net, video_teacher, data: AlignData, cfg: AlignConfig,
                 feature_network: nn.Module | None = None, vae=None, feature_name: str = ""):
        """``feature_network``: a DinoFeatures (images in [0, 1] -> maps) for the discriminators
        instead of the backbone's UNet encoder; it sees the student's clips decoded by ``vae``."""
        data.check()
        check_controlnet(edit_teacher, control_net)
        if video_teacher is not None:
            if not same_backbone(edit_teacher, video_teacher):
                raise ValueError(f"video_teacher: built on another backbone ({_describe(video_teacher)}) than "
                                 f"edit_teacher ({_describe(edit_teacher)}); apply the video adapter to the same "
                                 "checkpoint the edit teacher uses")
            extra = sorted(set(video_teacher.patches) ^ set(edit_teacher.patches))
            if extra:
                raise ValueError(f"video_teacher: its weight patches differ from edit_teacher's (e.g. {extra[0]}); "
                                 "load LoRAs onto the backbone before it feeds both teachers")
        self.cfg, self.data = cfg, data
        self.image_only = video_teacher is None
        self.rank, self.world = ddp_info()
        base = video_teacher if video_teacher is not None else edit_teacher
        with torch.inference_mode(False):
            # a plain ModelPatcher (the non-dynamic delegate under dynamic VRAM): every weight
            # resident through forward and backward
            self.student = plain_model(base, "video_teacher" if video_teacher is not None else "edit_teacher").clone()
            temporal = set()
            for path, block in list(self.student.object_patches.items()):
                if any(is_temporal(c) for c in block.children()):
                    temporal.update(type(c) for c in block.children() if is_temporal(c))
                    self.student.add_object_patch(path, _trainable_copy(block, _unpatched_block(self.student, path)))
            self.temporal_classes = tuple(sorted(temporal, key=lambda c: c.__name__))
            gen = torch.Generator().manual_seed(cfg.seed)  # initial LoRA depends only on the seed
            self.switch = Switch()
            self.deltas: dict[str, LoRADelta] = {}
            for n, m in edit_teacher.model.named_modules():
                if not n.startswith("diffusion_model.") or ".eve_" in n or not hasattr(m, "weight_function"):
                    continue
                for attr in ("weight", "bias"):
                    if getattr(m, attr, None) is not None:
                        self.student.add_weight_wrapper(f"{n}.{attr}", FrozenWeight())
                if getattr(m, "weight", None) is not None and m.weight.ndim >= 2:
                    key = f"{n}.weight"
                    self.deltas[key] = LoRADelta(tuple(m.weight.shape), cfg.rank, switch=self.switch, generator=gen)
                    self.student.add_weight_wrapper(key, self.deltas[key])
            self.lora = nn.ModuleDict({k.replace(".", "__"): d for k, d in self.deltas.items()})
            control_net = plain_control_net(control_net)
            self.control = control_net.copy()
            self.control_patcher = control_net.control_model_wrapped.clone()
            for n, m in self.control_patcher.model.named_modules():
                for attr in ("weight", "bias"):
                    if hasattr(m, "weight_function") and getattr(m, attr, None) is not None:
                        self.control_patcher.add_weight_wrapper(f"{n}.{attr}", FrozenWeight())
            self.control.control_model_wrapped = self.control_patcher
        self.d_edit = self.d_video = None
        self.dino, self.decoder, self.feature_name = None, None, "backbone UNet encoder"
        if feature_network is not None:
            if vae is None:
                raise ValueError("vae: the DINOv2 feature network sees pixels; connect the VAE that decodes the "
                                 "student's latents (TAESD keeps the decode with gradients cheap)")
            with torch.inference_mode(False):  # frozen, but backward passes through it to the student
                self.decoder = copy.deepcopy(vae.first_stage_model).requires_grad_(False)
            self.decoder_dtype = vae.vae_dtype
            self.dino, self.feature_name = feature_network.requires_grad_(False), feature_name or "DINOv2"

    # ---- model calls
    def _load(self):
        comfy.model_management.load_models_gpu([self.student, self.control_patcher], force_full_load=True)
        self.device = self.student.load_device
        self.unet = self.student.get_model_object("diffusion_model")
        self.ms = self.student.get_model_object("model_sampling")
        self.dtype = self.student.model.get_dtype()
        self.sigmas = self.ms.sigmas.float().cpu()
        self.abar = 1.0 / (1.0 + self.sigmas ** 2)
        self.lora.to(self.device)
        if self.dino is not None:
            self.dino.to(self.device)
            self.decoder.to(self.device)

    def _options(self, clips: int, temporal: bool) -> dict:
        to = dict(self.student.model_options.get("transformer_options", {}))
        patches = {k: list(v) for k, v in to.get("patches", {}).items()}
        if not temporal:  # keyed on our own layer classes: no other layer is ever routed here
            patches["forward_timestep_embed_patch"] = [(cls, _skip_temporal) for cls in self.temporal_classes] + \
                patches.get("forward_timestep_embed_patch", [])
        to["patches"] = patches
        to["cond_or_uncond"] = [0] * clips  # frames per clip = batch / clips (the temporal layers read this)
        return to

    def _control(self, hints: torch.Tensor):
        c = self.control.copy()
        c.set_cond_hint(hints.movedim(-1, 1), self.cfg.control_strength, (0.0, 1.0))
        c.pre_run(self.student.model, lambda p: self.ms.percent_to_sigma(p))
        return c

    def eps_fn(self, ctx, clips: int, control=None, temporal=True, lora=False) -> eve_align.EpsFn:
        def fn(x, t):
            self.switch.enabled = lora
            to = self._options(clips, temporal)
            x = x.to(self.device)
            tt = t.to(self.device)
            ctl = None
            if control is not None:
                sigma = self.sigmas[t].to(self.device)
                x_ve = x * (1 + sigma ** 2).sqrt().view(-1, 1, 1, 1)
                ctl = control.get_control(x_ve.to(self.dtype), sigma, {"c_crossattn": ctx}, 1, to)
            out = self.unet(x.to(self.dtype), tt.float(), context=ctx.to(self.dtype), control=ctl,
                            transformer_options=to)
            self.switch.enabled = True
            return out.float()
        return fn

    def features(self, x0: torch.Tensor) -> list[torch.Tensor]:
        """The frozen feature network's maps of x_0: DINOv2 on the decoded frames if one is given,
        else the backbone's UNet encoder (t = 0, empty prompt): the last block of every resolution
        level and the middle block."""
        if self.dino is not None:
            z = self.student.model.process_latent_out(x0.to(self.device)).to(self.decoder_dtype)
            return [f.float() for f in self.dino((self.decoder.decode(z).float() + 1) / 2)]
        self.switch.enabled = False
        try:
            u = self.unet
            to = self._options(1, temporal=False)
            to["original_shape"], to["transformer_index"] = list(x0.shape), 0
            x = x0.to(self.device, self.dtype)
            ctx = self.data.empty.to(self.device, self.dtype).expand(x.shape[0], -1, -1)
            emb = u.time_embed(timestep_embedding(torch.zeros(x.shape[0], device=self.device), u.model_channels).to(x.dtype))
            feats, h = [], x
            blocks = list(u.input_blocks)
            for i, block in enumerate(blocks):
                to["block"] = ("input", i)
                h = forward_timestep_embed(block, h, emb, ctx, to)
                nxt = blocks[i + 1] if i + 1 < len(blocks) else None
                if nxt is None or (len(nxt) == 1 and isinstance(nxt[0], Downsample)):
                    feats.append(h)
            to["block"] = ("middle", 0)
            feats.append(forward_timestep_embed(u.middle_block, h, emb, ctx, to))
            return [f.float() for f in feats]
        finally:
            self.switch.enabled = True

    def batch_models(self, idx: torch.Tensor) -> eve_align.AlignModels:
        d, dev = self.data, self.device
        clips, frames = len(idx), d.latents.shape[1]
        lat = self.student.model.process_latent_in(d.latents[idx].flatten(0, 1)).to(dev)
        instr = d.instruction[idx].to(dev).repeat_interleave(frames, 0)
        capt = d.caption[idx].to(dev)
        control = self._control(d.hints[idx].flatten(0, 1))
        video = None if self.image_only else self.eps_fn(capt.repeat_interleave(frames, 0), clips, None, True, False)
        return eve_align.AlignModels(
            student=self.eps_fn(instr, clips, control, temporal=True, lora=True),
            edit_teacher=self.eps_fn(instr, clips, control, temporal=False, lora=False),
            video_teacher=video, features=self.features, instruction=instr, caption=capt, source=lat,
            frames=frames)

    def _build_discriminators(self):
        if self.d_edit is not None:
            return
        with torch.no_grad():
            probe = self.features(torch.zeros(1, *self.data.latents.shape[2:], device=self.device))
        chans = [f.shape[1] for f in probe]
        ctx_dim = self.data.instruction.shape[-1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed + 1)  # the heads' initial weights depend only on the seed
            self.d_edit = eve_align.FeatureDiscriminator(chans, ctx_dim, video=False).to(self.device)
            self.d_video = None if self.image_only else eve_align.FeatureDiscriminator(
                chans, ctx_dim, video=True, max_frames=max(32, self.data.latents.shape[1])).to(self.device)

    def params(self) -> dict[str, torch.Tensor]:
        p = {f"lora.{k}": v for k, v in self.lora.named_parameters()}
        for name, d in (("d_edit", self.d_edit), ("d_video", self.d_video)):
            if d is not None:
                p.update({f"{name}.{k}": v for k, v in d.named_parameters()})
        return p

    # ---- training
    def config_record(self) -> dict:
        c = asdict(self.cfg)
        c.pop("steps"), c.pop("checkpoint_every")
        c["data"] = f"{list(self.data.latents.shape)}:{list(self.data.caption.shape)}"
        c["image_only"], c["world"] = self.image_only, self.world
        c["feature_network"] = self.feature_name
        return c

    def run(self, checkpoint_path: str | None = None, resume: bool = True,
            on_step: Callable[[int, float], None] | None = None,
            interrupted: Callable[[], None] | None = None) -> list[float]:
        cfg, s = self.cfg, self.cfg.settings()
        with torch.inference_mode(False), torch.enable_grad():
            self.data = AlignData(*(t.detach().clone() for t in (self.data.latents, self.data.hints, self.data.instruction,
                                                           self.data.caption, self.data.empty)), self.data.names)
            self._load()
            eve_align.check_settings(s, len(self.sigmas))
            self._build_discriminators()
            params = self.params()
            lora = [p for k, p in params.items() if k.startswith("lora.")]
            disc = [p for k, p in params.items() if not k.startswith("lora.")]
            opt = torch.optim.Adam([{"params": lora, "lr": cfg.learning_rate},
                                    {"params": disc, "lr": cfg.learning_rate}])
            self.last_log = {}
            adv_from = eve_align.adversarial_from(cfg.steps, cfg.sds_fraction)
            nt = len(self.sigmas)

            def train_step(st: int, gen: torch.Generator) -> float:
                idx = torch.randint(self.data.latents.shape[0], (cfg.batch_size,), generator=gen)
                m = self.batch_models(idx)
                dr = eve_align.draw(gen, m.source.shape, m.frames, s, nt)
                adversarial = st >= adv_from
                d_e, d_v = (self.d_edit, self.d_video) if adversarial else (None, None)
                loss_g, x0, log = eve_align.generator_losses(m, dr, self.abar, s, d_e, d_v)
                opt.zero_grad(set_to_none=True)
                loss_g.backward()
                for p in disc:  # the generator step moves the LoRA only
                    p.grad = None
                ddp_average_grads_(lora)
                opt.step()
                if adversarial:
                    loss_d = eve_align.discriminator_loss(m, dr, x0, self.abar, s, self.d_edit, self.d_video, nt)
                    opt.zero_grad(set_to_none=True)
                    loss_d.backward()
                    for p in lora:
                        p.grad = None
                    ddp_average_grads_(disc)
                    opt.step()
                    log["loss_d"] = loss_d.item()
                self.last_log = log
                return log["loss_g"]

            with training_mode():
                step, losses = run_training_loop(
                    train_step, cfg.steps, seed=cfg.seed, params=params, optimizer=opt, config=self.config_record(),
                    checkpoint_path=checkpoint_path, resume=resume, checkpoint_every=cfg.checkpoint_every,
                    on_step=on_step, interrupted=interrupted)
        self.steps = step
        return losses

    @torch.no_grad()
    def residuals(self, draws: int = 2, seed: int = 4321) -> dict[str, float]:
        """Mean SDS residuals c(t)||eps_hat(x'_t) - eps||^2 of each teacher on the student's clips,
        at fixed draws (clip, noise, K-bin steps, t): what SDS descends."""
        with torch.inference_mode(False):
            self._load()
            s = self.cfg.settings()
            s.checkpointing = False
            gen = torch.Generator().manual_seed(seed)
            out: dict[str, list[float]] = {}
            for _ in range(draws):
                idx = torch.randint(self.data.latents.shape[0], (1,), generator=gen)
                m = self.batch_models(idx)
                dr = eve_align.draw(gen, m.source.shape, m.frames, s, len(self.sigmas))
                _, _, log = eve_align.generator_losses(m, dr, self.abar, s, None, None)
                for k, v in log.items():
                    if k.startswith("residual"):
                        out.setdefault(k, []).append(v)
            return {k: sum(v) / len(v) for k, v in out.items()}

    def lora_file(self) -> dict[str, torch.Tensor]:
        return eve_align.lora_state_dict(self.deltas)

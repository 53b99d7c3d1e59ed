"""MoViE Stage 4 on a ComfyUI InstructPix2Pix model (engine): the v-prediction conversion, then
Alg. 2 (guidance-preserving adversarial one-step distillation). Shared by the One-Step Distill (train)
node and the headless command (harness/train_onestep.py, also under torchrun).

Models, all on ONE UNet (no second copy of the weights):
- teacher M: the guidance-distilled model (InstructPix2Pix + the CFG-distillation adapter A1,
  merged at load, scale embedding as an emb patch): frozen, epsilon prediction;
- student A: M + a second adapter A2 (weight deltas + an additive scale embedding, both starting
  at zero, so A starts as M), trainable, v-prediction; A2 switched off gives M back;
- discriminator D: M's frozen encoder arm (input blocks + middle block; or another UNet of the same
  family) + trainable spatial heads (onestep.DiscriminatorHeads), one per resolution level.
The math is in onestep.py; the Alg. 1 machinery (student clone, frozen-weight copies for
backward, data draws) is reused from engine_cfg_distill.Distiller, the loop is core's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

import comfy.ldm.modules.attention as comfy_attention
import comfy.model_management
from comfy.ldm.modules.diffusionmodules.openaimodel import forward_timestep_embed, timestep_embedding

from ..core.ddp import ddp_average_grads_, ddp_mean
from ..core.trainer_loop import run_training_loop
from ..core.weight_deltas import CloneWeight
from ..host.model_family import model_family, unet_of
from ..host.training_models import plain_model, training_mode
from ..host.training_ui import run_files, run_with_live_chart
from . import guidance as movie, onestep as mo
from .engine_cfg_distill import DistillData, Distiller
from .engine_onestep import STUDENT_FOLDER, make_onestep_student, save_onestep_student, teacher_adapter


@dataclass
class OneStepConfig:
    v_steps: int = 100  # Stage 4 part 1: v-prediction conversion steps (the paper: about a day)
    steps: int = 500  # Alg. 2 steps (the paper: 20k)
    batch_size: int = 4
    v_learning_rate: float = 1e-6  # appendix B
    learning_rate: float = 1e-5  # appendix B (student)
    disc_learning_rate: float = 1e-5  # gamma_d (not given in the paper)
    lambda_mse: float = 1.0  # not given in the paper
    lambda_gen: float = 0.1  # not given in the paper
    lambda_r1: float = 0.1  # not given in the paper
    kind: str = "lora"
    rank: int = 16
    seed: int = 0
    checkpoint_every: int = 100
    head_channels: int = 64
    embed_lr_scale: float = 1.0  # the student's scale-embedding lr relative to its weight deltas'
    teacher_steps: int = mo.TEACHER_LCM_STEPS
    s_i_range: tuple = movie.S_I_RANGE
    s_t_range: tuple = movie.S_T_RANGE


# ------------------------------------------------------------------ checks on inputs

def check_feature_model(teacher, feature_model, input_name: str = "discriminator_model") -> None:
    """The discriminator's feature network must read the teacher's inputs: same model class, latent
    and concat channels, and prompt width."""
    if not hasattr(unet_of(feature_model), "input_blocks"):
        raise ValueError(f"{input_name}: not a UNet model ({type(feature_model.model).__name__}); the feature "
                         "network is the encoder arm of an InstructPix2Pix UNet (leave it empty to use the teacher's)")
    a, b = model_family(teacher), model_family(feature_model)
    bad = [k for k in ("model", "in_channels", "out_channels", "context_dim") if a[k] != b[k]]
    if bad:
        raise ValueError(f"{input_name}: from another model family than the teacher ("
                         + ", ".join(f"{k} {b[k]} vs {a[k]}" for k in bad) + "); the discriminator's feature "
                         "network must be an InstructPix2Pix UNet like the teacher's (leave it empty to use the teacher's)")


# ------------------------------------------------------------- the frozen encoder arm

def encoder_levels(unet) -> list[int]:
    """Input blocks that end a resolution level (the next block downsamples, or it is the last)."""
    blocks = list(unet.input_blocks)
    is_down = lambda b: any(type(m).__name__ == "Downsample" for m in b)
    return [i for i, b in enumerate(blocks) if not is_down(b) and i > 0
            and (i + 1 == len(blocks) or is_down(blocks[i + 1]))]


def level_channels(unet) -> list[int]:
    """Channels of each feature level (encoder_levels, then the middle block)."""
    def out_ch(block):
        res = [m for m in block.modules() if type(m).__name__ == "ResBlock"]
        return int(res[-1].out_channels)
    return [out_ch(unet.input_blocks[i]) for i in encoder_levels(unet)] + [out_ch(unet.middle_block)]


def math_attention(func, *args, **kwargs):
    """ComfyUI attention override: plain (twice-differentiable) attention, for R1's double backward."""
    return comfy_attention.attention_basic(*args, **kwargs)


def encoder_features(unet, x, timesteps, context, transformer_options: dict) -> list[torch.Tensor]:
    """The UNet's own forward up to the middle block (as openaimodel.UNetModel._forward does it),
    returning each level's last activation and the middle block's output."""
    to = dict(transformer_options)
    to["original_shape"] = list(x.shape)
    to["transformer_index"] = 0
    to["optimized_attention_override"] = math_attention
    emb = unet.time_embed(timestep_embedding(timesteps, unet.model_channels, repeat_only=False).to(x.dtype))
    for p in to.get("patches", {}).get("emb_patch", []):
        emb = p(emb, unet.model_channels, to)
    levels, h, feats = set(encoder_levels(unet)), x, []
    for i, block in enumerate(unet.input_blocks):
        to["block"] = ("input", i)
        h = forward_timestep_embed(block, h, emb, context, to)
        if i in levels:
            feats.append(h)
    to["block"] = ("middle", 0)
    feats.append(forward_timestep_embed(unet.middle_block, h, emb, context, to))
    return feats


# --------------------------------------------------------------------------- training

class OneStepDistiller(Distiller):
    """One Stage-4 run: ``run()`` converts to v-prediction (cfg.v_steps), then runs Alg. 2 (cfg.steps)."""

    def __init__(self, teacher, data: DistillData, cfg: OneStepConfig, feature_model=None,
                 adapter: movie.GuidanceAdapter | None = None, heads: mo.DiscriminatorHeads | None = None):
        self.teacher_adapter = teacher_adapter(teacher)
        if feature_model is not None:
            check_feature_model(teacher, feature_model)
        super().__init__(teacher, data, cfg, adapter)
        self.emb_patches = [self._frozen_copy(p) for p in
                            self.student.model_options["transformer_options"]["patches"]["emb_patch"]]
        self.fmodel = None
        if feature_model is not None:  # frozen copies for backward (inference-mode weights cannot be saved)
            self.fmodel = plain_model(feature_model, "discriminator_model").clone()
            for n, m in self.fmodel.model.named_modules():
                if n.startswith("diffusion_model.") and hasattr(m, "weight_function"):
                    for attr in ("weight", "bias"):
                        if getattr(m, attr, None) is not None:
                            self.fmodel.add_weight_wrapper(f"{n}.{attr}", CloneWeight())
        fnet = unet_of(feature_model if feature_model is not None else teacher)
        with torch.inference_mode(False):
            self.heads = heads or mo.DiscriminatorHeads(
                level_channels(fnet), model_family(teacher)["context_dim"], hidden=cfg.head_channels,
                seed=cfg.seed + 1)
        self.fingerprint = mo.adapter_fingerprint(self.teacher_adapter)

    def _frozen_copy(self, patch):
        """The teacher's guidance patch with a plain, no-grad copy of its embedding: an adapter loaded by a
        node holds inference-mode parameters that still ask for gradients, which autograd refuses."""
        if patch is self.adapter_patch() or not getattr(patch, "videoedit_guidance_patch", False):
            return patch
        e = patch.embed
        with torch.inference_mode(False):
            copy = movie.GuidanceScaleEmbedding(e.model_channels, e.time_embed_dim)
            copy.load_state_dict({k: v.clone() for k, v in e.state_dict().items()})
            copy.requires_grad_(False)
        return movie.GuidanceEmbPatch(copy, patch.switch, patch.default)

    def adapter_patch(self):
        """The student's own guidance patch (the one make_student added for A2)."""
        return next(p for p in self.student.model_options["transformer_options"]["patches"]["emb_patch"]
                    if getattr(p, "embed", None) is self.adapter.embed)

    # ---- the model calls
    def _load(self):
        models = [self.student] + ([self.fmodel] if self.fmodel is not None else [])
        comfy.model_management.load_models_gpu(models, force_full_load=True)
        self.device = self.student.load_device
        self.unet = unet_of(self.student)
        self.ms = self.student.get_model_object("model_sampling")
        self.dtype = self.student.model.get_dtype()
        self.adapter.to(self.device)
        self.heads.to(self.device)
        self.fnet = unet_of(self.fmodel) if self.fmodel is not None else self.unet
        self.sigmas = self.ms.sigmas.float().to(self.device)

    def _call(self, x_in, src, ctx, t, scales, student: bool):
        self.adapter.switch.enabled = student
        try:
            to = {"patches": {"emb_patch": self.emb_patches}, movie.GUIDANCE_KEY: scales.to(x_in.device)}
            return self.unet(torch.cat([x_in.to(self.dtype), src], 1), t.float(), context=ctx,
                             transformer_options=to).float()
        finally:
            self.adapter.switch.enabled = True

    def teacher_eps(self, x_in, src, ctx, t, scales):
        with torch.no_grad():
            return self._call(x_in, src, ctx, t, scales, student=False)

    def student_v(self, x_in, src, ctx, t, scales):
        return self._call(x_in, src, ctx, t, scales, student=True)

    def teacher_x0(self, src, ctx, scales, gen: torch.Generator) -> torch.Tensor:
        """Alg. 2 line 4: x_0 = M(eps, C) in cfg.teacher_steps LCM steps (fresh noise from ``gen``)."""
        ts = mo.lcm_timesteps(self.cfg.teacher_steps)
        sig = self.sigmas[ts.to(self.device)]
        shape = (src.shape[0], 4, *src.shape[2:])
        noise = torch.randn(shape, generator=gen).to(self.device)
        renoise = [torch.randn(shape, generator=gen).to(self.device) for _ in range(len(ts) - 1)]
        step = iter(ts.tolist())

        def denoise(x, sigma):
            t = torch.full((x.shape[0],), float(next(step)), device=x.device)
            alpha, _ = mo.vp_coefficients(sigma)
            return x - sigma.view(-1, 1, 1, 1) * self.teacher_eps(x * alpha.view(-1, 1, 1, 1), src, ctx, t, scales)

        return mo.lcm_sample(denoise, noise, sig, lambda i: renoise[i])

    def student_x0(self, x0, src, ctx, t, scales, noise):
        """Alg. 2 lines 5-7: noise x_0 at the student's timestep t, one pass, x_hat_0 from v."""
        sigma = self.sigmas[t.to(self.device)]
        alpha, sig_t = mo.vp_coefficients(sigma)
        x_in = mo.add_noise(x0, sigma, noise) * alpha.view(-1, 1, 1, 1)
        return mo.x0_from_v(x_in, self.student_v(x_in, src, ctx, t.to(self.device), scales), alpha, sig_t)

    def discriminator(self, src, ctx, scales, t_d) -> Callable:
        """D(x, sigma) on k-space samples: frozen teacher encoder (adapter A2 off) -> spatial heads."""
        t_dev = t_d.to(self.device).float()
        prompt = mo.pooled_prompt(ctx)

        def D(x, sigma):
            alpha, _ = mo.vp_coefficients(sigma)
            x_in = torch.cat([(x * alpha.view(-1, 1, 1, 1)).to(self.dtype), src], 1)
            to = {movie.GUIDANCE_KEY: scales.to(self.device)}
            if self.fmodel is None:
                to["patches"] = {"emb_patch": self.emb_patches}
            else:
                to.update(self.fmodel.model_options.get("transformer_options", {}))
                to[movie.GUIDANCE_KEY] = scales.to(self.device)
            self.adapter.switch.enabled = False
            try:
                feats = encoder_features(self.fnet, x_in, t_dev, ctx, to)
            finally:
                self.adapter.switch.enabled = True
            return self.heads([f.float() for f in feats], scales.to(self.device), t_dev, prompt)
        return D

    # ---- one step of each phase
    def _cond(self, gen, batch):
        idx = torch.randint(self.data.source.shape[0], (batch,), generator=gen)
        _, scales = movie.sample_training_draw(batch, gen, self.cfg.s_i_range, self.cfg.s_t_range)
        return (self.data.source[idx].to(self.device, self.dtype), self.data.context[idx].to(self.device, self.dtype),
                scales.to(self.device))

    def v_step_loss(self, gen) -> torch.Tensor:
        """Stage 4, part 1: the student's v against the teacher's v at the same (x_t, C, t)."""
        idx, t, scales, noise = self._draw(gen, self.cfg.batch_size)
        x_in, src, ctx, tt = self._inputs(idx, t, noise)
        return F.mse_loss(self.student_v(x_in, src, ctx, tt, scales.to(self.device)),
                          self.v_target(x_in, src, ctx, tt, scales))

    def v_target(self, x_in, src, ctx, tt, scales):
        """The teacher's v at the VP sample x_in (timesteps tt): alpha_t eps - sigma_t x_0 from its eps."""
        alpha, sig_t = mo.vp_coefficients(self.sigmas[tt.long()])
        return mo.v_target_from_eps(x_in.float(), self.teacher_eps(x_in, src, ctx, tt, scales), alpha, sig_t)

    @torch.no_grad()
    def v_error(self, draws: int = 16, seed: int = 777) -> float:
        """Mean squared student-v vs teacher-v error over fixed (sample, t, s, noise) draws."""
        with torch.inference_mode(False):
            self._load()
            idx, t, scales, noise = self._draw(torch.Generator().manual_seed(seed), draws)
            x_in, src, ctx, tt = self._inputs(idx, t, noise)
            return F.mse_loss(self.student_v(x_in, src, ctx, tt, scales.to(self.device)),
                              self.v_target(x_in, src, ctx, tt, scales)).item()

    def adversarial_draw(self, gen):
        src, ctx, scales = self._cond(gen, self.cfg.batch_size)
        with torch.no_grad():
            x0 = self.teacher_x0(src, ctx, scales, gen)
        b = x0.shape[0]
        t = mo.student_timesteps(b, gen)
        noise = torch.randn(x0.shape, generator=gen).to(self.device)
        return src, ctx, scales, x0, t, noise

    def _disc_noise(self, gen, b, shape):
        t_d = mo.discriminator_timesteps(b, gen)
        return t_d, self.sigmas[t_d.to(self.device)], torch.randn(shape, generator=gen).to(self.device)

    # ---- training
    def config_record(self) -> dict:
        c = super().config_record()
        c["heads"] = self.heads.config()
        c["teacher"] = self.fingerprint
        c["feature_model"] = "teacher" if self.fmodel is None else str(model_family(self.fmodel))
        return c

    def _apply(self, opt, loss, params, others, lr=None):
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for p, g in zip(params, grads):
            p.grad = torch.zeros_like(p) if g is None else g
        for p in others:
            p.grad = None  # Adam leaves parameters without a gradient untouched
        ddp_average_grads_(params)
        opt.step()

    def run(self, checkpoint_path: str | None = None, resume: bool = True,
            on_step: Callable[[int, float], None] | None = None,
            interrupted: Callable[[], None] | None = None) -> list[float]:
        """Train to v_steps + steps; returns one loss per step (v-MSE, then the generator loss)."""
        cfg = self.cfg
        total = cfg.v_steps + cfg.steps
        self.d_losses = []
        with torch.inference_mode(False), torch.enable_grad():
            self.data = DistillData(*(t.detach().clone() for t in (self.data.x0, self.data.source, self.data.context,
                                                           self.data.empty)), self.data.names)
            self._load()
            ps = dict(self.adapter.named_parameters())
            ph = dict(self.heads.named_parameters())
            for p in (*ps.values(), *ph.values()):
                p.requires_grad_(True)
            student_p, head_p = list(ps.values()), list(ph.values())
            emb = [p for k, p in ps.items() if k.startswith("embed.")]
            opt = torch.optim.Adam([{"params": [p for k, p in ps.items() if not k.startswith("embed.")]},
                                    {"params": emb}, {"params": head_p, "lr": cfg.disc_learning_rate}],
                                   lr=cfg.v_learning_rate)
            params = {**{f"student.{k}": v for k, v in ps.items()}, **{f"heads.{k}": v for k, v in ph.items()}}

            def train_step(s: int, gen: torch.Generator) -> float:
                lr = cfg.v_learning_rate if s <= cfg.v_steps else cfg.learning_rate
                opt.param_groups[0]["lr"], opt.param_groups[1]["lr"] = lr, lr * cfg.embed_lr_scale
                if s <= cfg.v_steps:
                    loss = self.v_step_loss(gen)
                    self._apply(opt, loss, student_p, head_p)
                    return loss.item()
                if s == cfg.v_steps + 1:
                    opt.state.clear()  # Alg. 2 starts its own optimizer (as a separate run would)
                src, ctx, scales, x0, t, noise = self.adversarial_draw(gen)
                b = x0.shape[0]
                # The D step sees the fake detached, so it is made without a graph: the student's graph
                # (a copy of every merged weight, ~3.4 GB at SD1.5 size) is then never alive while the
                # discriminator's graphs are. The G step remakes it with its graph: the same values
                # (the D step changes only the heads), one extra student pass per step.
                with torch.no_grad():
                    fake = self.student_x0(x0, src, ctx, t, scales, noise)
                t_d, sig_d, n_d = self._disc_noise(gen, b, x0.shape)
                loss_d, _ = mo.discriminator_step_loss(self.discriminator(src, ctx, scales, t_d), x0, fake,
                                                       sig_d, n_d, cfg.lambda_r1)
                self._apply(opt, loss_d, head_p, student_p)
                self.d_losses.append(ddp_mean(float(loss_d.item())))
                del fake, loss_d
                t_d, sig_d, n_d = self._disc_noise(gen, b, x0.shape)  # Alg. 2 line 13: fresh t', eps'
                x0_hat = self.student_x0(x0, src, ctx, t, scales, noise)
                loss = mo.generator_step_loss(self.discriminator(src, ctx, scales, t_d), x0, x0_hat, sig_d, n_d,
                                              cfg.lambda_mse, cfg.lambda_gen)
                self._apply(opt, loss, student_p, head_p)
                return loss.item()

            with training_mode():
                step, losses = run_training_loop(
                    train_step, total, seed=cfg.seed, params=params, optimizer=opt, config=self.config_record(),
                    checkpoint_path=checkpoint_path, resume=resume, checkpoint_every=cfg.checkpoint_every,
                    on_step=on_step, interrupted=interrupted)
        self.adapter.steps = step
        for p in (*self.adapter.parameters(), *self.heads.parameters()):
            p.requires_grad_(False)
        return losses

    # ---- evaluation (tests, info)
    @torch.no_grad()
    def compare(self, draws: int = 4, seed: int = 4321, scales: torch.Tensor | None = None):
        """(student one-step x_hat_0, teacher multi-step x_0) from the same noise and conditions: the
        student at t = T-1 from the VP sample x_T = eps (what the 1-step sampler does)."""
        with torch.inference_mode(False):
            self._load()
            gen = torch.Generator().manual_seed(seed)
            src, ctx, s = self._cond(gen, draws)
            if scales is not None:
                s = torch.as_tensor(scales, dtype=torch.float32).reshape(1, 2).expand(draws, 2).to(self.device)
            state = gen.get_state()
            teacher = self.teacher_x0(src, ctx, s, gen)
            gen.set_state(state)  # the student starts from the teacher's first noise
            eps = torch.randn(teacher.shape, generator=gen).to(self.device)
            t = mo.lcm_timesteps(1).expand(draws).to(self.device)
            alpha, sig_t = mo.vp_coefficients(self.sigmas[t])
            student = mo.x0_from_v(eps, self.student_v(eps, src, ctx, t, s), alpha, sig_t)
            return student, teacher


# ------------------------------------------------------------------ the node's run

TRAINER_KIND = "onestep_distill"  # its checkpoints: output/videoedit_training/onestep_distill/<name>/


def run_paths(output_name: str, resume: bool = True, overwrite: bool = False) -> tuple[str, str, dict]:
    """(checkpoint, student file, its run metadata) of the run ``output_name`` (host.training_ui.run_files:
    an existing student of that name is refused unless it is this resumed run's own or ``overwrite``;
    an old-layout one-step checkpoint, <name>/onestep_checkpoint.safetensors, is moved to the new place)."""
    return run_files(TRAINER_KIND, output_name, "onestep_checkpoint.safetensors", "teacher", STUDENT_FOLDER, resume,
                     overwrite)


def train_and_save(teacher, data: DistillData, cfg: OneStepConfig, ckpt: str, path: str, resume: bool,
                   node=None, name: str = "", feature_model=None, run_meta: dict | None = None):
    """Stage 4 with progress, cancel and the live chart, save the student; returns (the student
    model, the distiller, the loss history, the step it resumed at)."""
    d = OneStepDistiller(teacher, data, cfg, feature_model=feature_model)
    history, start = run_with_live_chart(d.run, cfg.v_steps + cfg.steps, ckpt, resume, node, name)
    save_onestep_student(d.adapter, d.fingerprint, cfg, path, run_meta)
    return make_onestep_student(teacher, d.adapter, {"teacher_adapter": d.fingerprint}), d, history, start

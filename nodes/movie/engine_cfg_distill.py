"""MoViE Alg. 1 (multimodal guidance distillation) on a ComfyUI InstructPix2Pix model (engine):
the trainer shared by the CFG Distill (train) node and the headless command
(``python -m harness.train``, also under torchrun). The student is the teacher's own UNet with
the guidance adapter (scale embedding through ``set_model_emb_patch`` + weight deltas through
``add_weight_wrapper``) on a clone; the teacher passes run the same UNet with the adapter
switched off, so no second copy of the weights is needed.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

import comfy.model_management

from ..core.ddp import ddp_average_grads_, ddp_info
from ..core.trainer_loop import run_training_loop
from ..core.weight_deltas import CloneWeight
from ..host.model_family import model_family, require_ip2p, unet_of
from ..host.training_models import plain_model, training_mode
from ..host.training_ui import run_files, run_with_live_chart
from . import guidance as movie
from .engine_guidance import ADAPTER_FOLDER, make_student, save_guidance_adapter


@dataclass
class DistillConfig:
    steps: int = 500
    batch_size: int = 4
    learning_rate: float = 1e-5
    kind: str = "lora"
    rank: int = 16
    seed: int = 0
    checkpoint_every: int = 100
    embed_lr_scale: float = 1.0  # the new (zero-initialised) scale embedding's lr relative to the deltas'
    s_i_range: tuple = movie.S_I_RANGE
    s_t_range: tuple = movie.S_T_RANGE


@dataclass
class DistillData:
    """Pre-encoded training pairs: x0 (clean latent the noise is added to: the edited image, or
    in data-free mode the source frame itself), the source latent (IP2P's concat image) and the
    instruction's CLIP context; ``empty`` is the null-text context."""
    x0: torch.Tensor  # [N, 4, h, w] (VAE latents, before the model's latent scaling)
    source: torch.Tensor  # [N, 4, h, w]
    context: torch.Tensor  # [N, T, D]
    empty: torch.Tensor  # [1, T, D]
    names: list = field(default_factory=list)

    def check(self):
        n = self.x0.shape[0]
        if n == 0:
            raise ValueError("training data: no samples")
        if self.source.shape != self.x0.shape or self.context.shape[0] != n:
            raise ValueError(f"training data: {n} targets, {self.source.shape[0]} sources, "
                             f"{self.context.shape[0]} instructions; they must match one to one")
        if self.empty.shape[1:] != self.context.shape[1:]:
            raise ValueError("training data: the empty prompt and the instructions encode to different "
                             f"shapes ({list(self.empty.shape)} vs {list(self.context.shape)}); keep "
                             "instructions under 75 tokens")


def new_adapter(teacher, cfg: DistillConfig) -> movie.GuidanceAdapter:
    u = unet_of(teacher)
    gen = torch.Generator().manual_seed(cfg.seed)  # the initial weights depend only on the seed
    ad = movie.GuidanceAdapter(u.model_channels, u.time_embed[0].out_features, model_family(teacher),
                               kind=cfg.kind, rank=cfg.rank, s_i_range=cfg.s_i_range, s_t_range=cfg.s_t_range,
                               generator=gen)
    for n, m in teacher.model.named_modules():
        if n.startswith("diffusion_model.") and hasattr(m, "weight_function") and \
                getattr(m, "weight", None) is not None and m.weight.ndim >= 2:
            ad.add_delta(f"{n}.weight", tuple(m.weight.shape), generator=gen)
    return ad


class Distiller:
    """One distillation run: ``run()`` trains from the checkpoint (if any) to cfg.steps."""

    def __init__(self, teacher, data: DistillData, cfg: DistillConfig, adapter: movie.GuidanceAdapter | None = None):
        require_ip2p(teacher)
        if teacher.model.model_type.name != "EPS":
            raise ValueError(f"model: CFG distillation expects an epsilon-prediction InstructPix2Pix, this model "
                             f"predicts {teacher.model.model_type.name}")
        data.check()
        self.teacher, self.data, self.cfg = teacher, data, cfg
        with torch.inference_mode(False):  # ComfyUI runs nodes in inference mode; these are trained
            self.adapter = adapter or new_adapter(teacher, cfg)
        # the teacher as a plain ModelPatcher (its non-dynamic delegate under dynamic VRAM): every
        # weight resident through forward and backward
        self.student = make_student(plain_model(teacher, "model"), self.adapter, train=True)
        covered = {k for k, _ in self.adapter.weight_wrappers()}
        for n, m in teacher.model.named_modules():  # frozen weights the backward pass needs
            if n.startswith("diffusion_model.") and hasattr(m, "weight_function"):
                for attr in ("weight", "bias"):
                    key = f"{n}.{attr}"
                    if getattr(m, attr, None) is not None and key not in covered:
                        self.student.add_weight_wrapper(key, CloneWeight())
        self.patch = movie.GuidanceEmbPatch(self.adapter.embed, self.adapter.switch)
        self.rank, self.world = ddp_info()

    # ---- the model calls
    def _load(self):
        comfy.model_management.load_models_gpu([self.student], force_full_load=True)
        self.device = self.student.load_device
        self.unet = unet_of(self.student)
        self.ms = self.student.get_model_object("model_sampling")
        self.dtype = self.student.model.get_dtype()
        self.adapter.to(self.device)

    def _draw(self, gen: torch.Generator, batch: int, idx=None):
        d = self.data
        if idx is None:
            idx = torch.randint(d.x0.shape[0], (batch,), generator=gen)
        t, scales = movie.sample_training_draw(len(idx), gen, self.cfg.s_i_range, self.cfg.s_t_range)
        noise = torch.randn((len(idx), *d.x0.shape[1:]), generator=gen)
        return idx, t, scales, noise

    def _inputs(self, idx, t, noise):
        dev, dt = self.device, self.dtype
        x0 = self.student.model.process_latent_in(self.data.x0[idx]).to(dev)
        sigma = self.ms.sigmas.to(dev)[t.to(dev)].float()
        x_in = self.ms.calculate_input(sigma, x0 + sigma.view(-1, 1, 1, 1) * noise.to(dev)).to(dt)
        return x_in, self.data.source[idx].to(dev, dt), self.data.context[idx].to(dev, dt), t.to(dev).float()

    def teacher_eq1(self, x_in, src, ctx, t, scales):
        """Eq. 1 from the teacher (adapter off): one batched call of the three conditionings."""
        b = x_in.shape[0]
        empty = self.data.empty.to(ctx.device, ctx.dtype).expand(b, -1, -1)
        self.adapter.switch.enabled = False
        try:
            with torch.no_grad():
                out = self.unet(torch.cat([x_in.repeat(3, 1, 1, 1), torch.cat([src, src, torch.zeros_like(src)])], 1),
                                t.repeat(3), context=torch.cat([ctx, empty, empty]), transformer_options={})
        finally:
            self.adapter.switch.enabled = True
        e_full, e_img, e_unc = out.float().chunk(3)
        s = scales.to(out.device).float()
        return movie.two_knob_guidance(e_unc, e_img, e_full, s[:, 0].view(-1, 1, 1, 1), s[:, 1].view(-1, 1, 1, 1))

    def student_eps(self, x_in, src, ctx, t, scales):
        to = {"patches": {"emb_patch": [self.patch]}, movie.GUIDANCE_KEY: scales.to(x_in.device)}
        return self.unet(torch.cat([x_in, src], 1), t, context=ctx, transformer_options=to).float()

    # ---- training
    def config_record(self) -> dict:
        c = asdict(self.cfg)
        c.pop("steps"), c.pop("checkpoint_every")
        c["data"] = f"{list(self.data.x0.shape)}:{list(self.data.context.shape)}"
        c["world"] = self.world
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in c.items()}

    def run(self, checkpoint_path: str | None = None, resume: bool = True,
            on_step: Callable[[int, float], None] | None = None,
            interrupted: Callable[[], None] | None = None) -> list[float]:
        """Train to cfg.steps; returns the loss history (one mean loss per step)."""
        cfg = self.cfg
        with torch.inference_mode(False), torch.enable_grad():
            self.data = DistillData(*(t.detach().clone() for t in (self.data.x0, self.data.source, self.data.context,
                                                           self.data.empty)), self.data.names)
            self._load()
            params = dict(self.adapter.named_parameters())
            emb = [p for k, p in params.items() if k.startswith("embed.")]
            rest = [p for k, p in params.items() if not k.startswith("embed.")]
            opt = torch.optim.Adam([{"params": rest, "lr": cfg.learning_rate},
                                    {"params": emb, "lr": cfg.learning_rate * cfg.embed_lr_scale}])

            def train_step(s: int, gen: torch.Generator) -> float:
                idx, t, scales, noise = self._draw(gen, cfg.batch_size)
                x_in, src, ctx, tt = self._inputs(idx, t, noise)
                target = self.teacher_eq1(x_in, src, ctx, tt, scales)
                pred = self.student_eps(x_in, src, ctx, tt, scales)
                loss = torch.nn.functional.mse_loss(pred, target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                ddp_average_grads_(params.values())
                opt.step()
                return loss.item()

            with training_mode():
                step, losses = run_training_loop(
                    train_step, cfg.steps, seed=cfg.seed, params=params, optimizer=opt, config=self.config_record(),
                    checkpoint_path=checkpoint_path, resume=resume, checkpoint_every=cfg.checkpoint_every,
                    on_step=on_step, interrupted=interrupted)
        self.adapter.steps = step
        for p in self.adapter.parameters():
            p.requires_grad_(False)
        return losses

    @torch.no_grad()
    def error(self, draws: int = 32, seed: int = 12345, scales: torch.Tensor | None = None) -> float:
        """Mean squared student-vs-Eq. 1 error over ``draws`` fixed random (sample, t, s) draws."""
        with torch.inference_mode(False):
            self._load()
            gen = torch.Generator().manual_seed(seed)
            idx, t, s, noise = self._draw(gen, draws)
            if scales is not None:
                s = scales.reshape(1, 2).expand(draws, 2)
            x_in, src, ctx, tt = self._inputs(idx, t, noise)
            return torch.nn.functional.mse_loss(self.student_eps(x_in, src, ctx, tt, s),
                                                self.teacher_eq1(x_in, src, ctx, tt, s)).item()

    @torch.no_grad()
    def predictions(self, s_i: float, s_t: float, draws: int = 16, seed: int = 999):
        """(student eps, Eq. 1 eps) at fixed draws with the given knobs (for direction tests)."""
        with torch.inference_mode(False):
            self._load()
            gen = torch.Generator().manual_seed(seed)
            idx, t, _, noise = self._draw(gen, draws)
            s = torch.tensor([[s_i, s_t]]).expand(draws, 2)
            x_in, src, ctx, tt = self._inputs(idx, t, noise)
            return self.student_eps(x_in, src, ctx, tt, s), self.teacher_eq1(x_in, src, ctx, tt, s)


# ------------------------------------------------------------------ the node's run

TRAINER_KIND = "cfg_distill"  # its checkpoints: output/videoedit_training/cfg_distill/<name>/


def run_paths(output_name: str, resume: bool = True, overwrite: bool = False) -> tuple[str, str, dict]:
    """(checkpoint, adapter file, its run metadata) of the run ``output_name`` (host.training_ui.run_files:
    an existing adapter of that name is refused unless it is this resumed run's own or ``overwrite``);
    an old-layout checkpoint of a CFG distillation (its settings record has s_i_range) is moved to the new place."""
    return run_files(TRAINER_KIND, output_name, "checkpoint.safetensors", "s_i_range", ADAPTER_FOLDER, resume,
                     overwrite)


def train_and_save(model, data: DistillData, cfg: DistillConfig, ckpt: str, adapter_path: str, resume: bool,
                   node=None, name: str = "", run_meta: dict | None = None):
    """Distill with progress, cancel and the live chart, save the adapter; returns (the student,
    its adapter, the loss history, the step it resumed at)."""
    d = Distiller(model, data, cfg)
    history, start = run_with_live_chart(d.run, cfg.steps, ckpt, resume, node, name)
    save_guidance_adapter(d.adapter, adapter_path, run_meta)
    return make_student(model, d.adapter), d.adapter, history, start

"""A tiny *trained* InstructPix2Pix teacher for the MoViE CFG-distillation tests.

On random weights the three passes of Eq. 1 (full, image-only, unconditional) differ by
arbitrary functions of the input: zeroing the concat image or the text moves a random net's
output somewhere unrelated, so a student cannot learn Eq. 1 in a few hundred steps (measured:
LoRA rank 8, 150 steps, even at one fixed (s_I, s_T): only 38% lower error) and the knobs
have no meaningful direction to follow. A real IP2P's guidance terms are structured: the
image term pulls toward the source, the text term toward the instructed edit. This trains the
tiny IP2P UNet of ``fixtures.tiny_unet_config(ip2p=True)`` (a few minutes on CPU, cached in the
fixture cache) as an eps-denoiser of toy edits on photo "latents" (``tokenflow_toy``'s
pooled-RGB stand-in, scaled like SD VAE latents), with InstructPix2Pix's conditioning dropout
(text, image, both), so its three passes are the conditional, image-only and unconditional
denoisers Eq. 1 assumes. Instructions are encoded with the tiny random CLIP
(``fixtures.build_clip(tiny=True)``), so tests feed the teacher the same contexts.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from . import fixtures
from .tokenflow_toy import TRAIN_IMAGES, _training_latents, image_latents

SD15_SCALE = 0.18215  # SD1.5's latent scale factor: raw VAE latents are ~1/0.18 the model's scale
CLIP_SEED = 1  # build_clip's default seed: the tiny CLIP every test builds


def _edit_snowy(x):  # brighter, lower contrast
    return 0.4 * x + 1.2


def _edit_red(x):  # red up, green/blue down (channels: R, G, B, luminance)
    return x + torch.tensor([1.5, -0.6, -0.6, 0.1]).view(1, 4, 1, 1)


def _edit_invert(x):
    return -x


EDITS = {"make it snowy": _edit_snowy, "make it red": _edit_red, "invert the colors": _edit_invert}


def toy_latents(frames: torch.Tensor) -> torch.Tensor:
    """[F, H, W, 3] in 0..1 -> raw "VAE latents" [F, 4, H/8, W/8] (model scale after x0.18215)."""
    return image_latents(frames) / SD15_SCALE


def encode_instructions(clip, texts) -> torch.Tensor:
    """[len(texts), 77, D] contexts from a ComfyUI CLIP."""
    return torch.cat([clip.encode_from_tokens_scheduled(clip.tokenize(t))[0][0] for t in texts])


def train_toy_ip2p(steps: int = 600, crop: int = 8, batch: int = 16, seed: int = 0, lr: float = 1e-3,
                   drop: float = 0.1, log=print) -> dict[str, torch.Tensor]:
    """Train ``build_model(tiny_unet_config(ip2p=True))`` on the toy edits; returns its state dict.

    Per sample: an instruction, a photo crop (the source) and its edit (the target); with
    probability ``drop`` each: no text, no image, neither (IP2P's dropout, here 10% each so the
    unconditional passes learn in few steps). t ~ U{0..999} as Alg. 1 draws it."""
    fixtures.use_comfy()
    model = fixtures.build_model(fixtures.tiny_unet_config(ip2p=True), ip2p=True, seed=seed)
    unet = model.model.diffusion_model
    ms = model.model.model_sampling
    clip = fixtures.build_clip(seed=CLIP_SEED, tiny=True)
    names = list(EDITS)
    ctx = encode_instructions(clip, names + [""]).detach().clone()  # last row: the empty prompt
    photos = [lat / SD15_SCALE for lat in _training_latents(TRAIN_IMAGES)]
    g = torch.Generator().manual_seed(seed)
    unet.train()
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    t0 = time.time()
    for it in range(steps):
        src = []
        for _ in range(batch):
            lat = photos[int(torch.randint(len(photos), (1,), generator=g))]
            _, _, h, w = lat.shape
            r = int(torch.randint(h - crop + 1, (1,), generator=g))
            c = int(torch.randint(w - crop + 1, (1,), generator=g))
            src.append(lat[:, :, r:r + crop, c:c + crop])
        src = torch.cat(src)
        which = torch.randint(len(names), (batch,), generator=g)
        tgt = torch.cat([EDITS[names[int(k)]](src[i:i + 1] * SD15_SCALE) / SD15_SCALE for i, k in enumerate(which)])
        u = torch.rand(batch, generator=g)
        no_text = (u < drop) | (u >= 1 - drop)
        no_image = (u >= drop) & (u < 2 * drop) | (u >= 1 - drop)
        c = ctx[torch.where(no_text, torch.full_like(which, len(names)), which)]
        s = torch.where(no_image.view(-1, 1, 1, 1), torch.zeros_like(src), src)
        t = torch.randint(0, 1000, (batch,), generator=g)
        sigma = ms.sigmas[t].float().view(-1, 1, 1, 1)
        noise = torch.randn(tgt.shape, generator=g)
        x_in = ms.calculate_input(sigma, tgt * SD15_SCALE + sigma * noise)
        eps = unet(torch.cat([x_in, s], 1), t.float(), context=c, transformer_options={})
        loss = F.mse_loss(eps, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if it % 100 == 0 or it == steps - 1:
            log(f"toy IP2P step {it} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    unet.eval()
    return {k: v.detach().clone() for k, v in unet.state_dict().items()}


def toy_ip2p(steps: int = 600):
    """The trained tiny InstructPix2Pix (ModelPatcher), trained once and cached."""
    from safetensors.torch import load_file, save_file
    name = "movie_toy_ip2p_unet"

    def build(d):
        save_file(train_toy_ip2p(steps), str(d / f"{name}.safetensors"))

    config = {"unet": fixtures.tiny_unet_config(ip2p=True), "steps": steps, "images": list(TRAIN_IMAGES),
              "edits": list(EDITS), "clip_seed": CLIP_SEED, "v": 1}
    path = fixtures._cached(name, config, build) / f"{name}.safetensors"
    model = fixtures.build_model(fixtures.tiny_unet_config(ip2p=True), ip2p=True, seed=0)
    model.model.diffusion_model.load_state_dict(load_file(str(path)))
    return model

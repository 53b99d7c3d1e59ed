"""A tiny *trained* SD1.5-shaped denoiser for TokenFlow's consistency test.

Random weights make self-attention nearly uniform and its features useless for
correspondences, so a temporal-consistency comparison on them measures nothing. This trains
the tiny UNet of ``fixtures.tiny_unet_config()`` for a few minutes on CPU as an eps-denoiser
of "latents" made from scikit-image's bundled photos (the astronaut excluded: it is the test
clip), so its features and attention depend on image content, as a real model's do. It
learns two "prompts" (``contexts()``): photos, and texture images (brick, grass, gravel), so
editing a photo with the texture context is a real edit that invents detail per frame. The
latent stand-in is shift-equivariant for 8-pixel shifts: 8x8 average-pooled RGB plus
luminance, centred and scaled (``image_latents``). Weights are cached in the fixture cache.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from . import fixtures

TRAIN_IMAGES = ("chelsea", "coffee", "rocket", "immunohistochemistry", "retina", "hubble_deep_field", "camera",
                "coins")
STYLE_IMAGES = ("brick", "grass", "gravel")  # the "edit" domain: textures


def contexts(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The two cross-attention contexts the toy model is trained with: photos, textures."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 77, 64, generator=g) * 0.5, torch.randn(1, 77, 64, generator=g) * 0.5


def image_latents(frames: torch.Tensor) -> torch.Tensor:
    """[F, H, W, 3] in 0..1 -> [F, 4, H/8, W/8]: pooled RGB + luminance, centred and scaled."""
    img = frames.permute(0, 3, 1, 2).float()
    pooled = F.avg_pool2d(img, 8)
    return (torch.cat([pooled, pooled.mean(1, keepdim=True)], 1) - 0.5) * 4


def _training_latents(names=TRAIN_IMAGES) -> list[torch.Tensor]:
    from skimage import data
    out = []
    for name in names:
        im = getattr(data, name)()
        if im.ndim == 2:
            im = np.stack([im] * 3, -1)
        t = torch.from_numpy(np.ascontiguousarray(im[..., :3])).float() / 255.0
        h, w = (t.shape[0] // 8) * 8, (t.shape[1] // 8) * 8
        out.append(image_latents(t[None, :h, :w]))
    return out


def train_toy_model(steps: int = 500, crop: int = 16, batch: int = 8, seed: int = 0, log=print):
    """Train ``build_model(tiny_unet_config())`` as an eps-denoiser; returns the state dict."""
    fixtures.use_comfy()
    model = fixtures.build_model(fixtures.tiny_unet_config(), seed=seed)
    bm = model.model
    bm.train()
    ms = bm.model_sampling
    domains = [_training_latents(TRAIN_IMAGES), _training_latents(STYLE_IMAGES)]
    ctx = torch.cat(contexts(seed))
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(bm.diffusion_model.parameters(), lr=4e-4, weight_decay=0.0)
    log_sig = torch.log(ms.sigmas)
    t0 = time.time()
    for it in range(steps):
        xs = []
        dom = torch.randint(2, (batch,), generator=g)
        for b in range(batch):
            lats = domains[int(dom[b])]
            lat = lats[int(torch.randint(len(lats), (1,), generator=g))]
            _, _, h, w = lat.shape
            r = int(torch.randint(h - crop + 1, (1,), generator=g))
            c = int(torch.randint(w - crop + 1, (1,), generator=g))
            xs.append(lat[0, :, r:r + crop, c:c + crop])
        x0 = torch.stack(xs)
        u = torch.rand(batch, generator=g)
        sigma = torch.exp(log_sig.min() + u * (log_sig.max() - log_sig.min()))
        noise = torch.randn(x0.shape, generator=g)
        xt = x0 + sigma.view(-1, 1, 1, 1) * noise
        den = bm.apply_model(xt, sigma, c_crossattn=ctx[dom])
        eps = (xt - den) / sigma.view(-1, 1, 1, 1)
        loss = F.mse_loss(eps, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % 100 == 0 or it == steps - 1:
            log(f"toy model step {it} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    bm.eval()
    return {k: v.detach().clone() for k, v in bm.diffusion_model.state_dict().items()}


def toy_model(steps: int = 500):
    """The trained tiny model (ModelPatcher), trained once and cached."""
    from safetensors.torch import load_file, save_file
    name = "tokenflow_toy_unet"

    def build(d):
        save_file(train_toy_model(steps), str(d / f"{name}.safetensors"))

    path = fixtures._cached(name, {"unet": fixtures.tiny_unet_config(), "steps": steps,
                                   "images": list(TRAIN_IMAGES), "styles": list(STYLE_IMAGES), "v": 2}, build) / f"{name}.safetensors"
    model = fixtures.build_model(fixtures.tiny_unet_config(), seed=0)
    model.model.diffusion_model.load_state_dict(load_file(str(path)))
    return model

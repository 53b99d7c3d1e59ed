"""Progress and latent previews of the pack's own sampling loops (ComfyUI-bound): the TokenFlow
sampler and inverter and the One-Step Sampler report ``frames x steps`` (or steps) to
``comfy.utils.ProgressBar`` and send a preview with the updates, as core's KSampler does.

The previewer is core's: ``latent_preview.get_previewer(model.load_device, latent_format)``,
exactly what ``latent_preview.prepare_callback`` builds for KSampler (ComfyUI 0.3.75 and current
core share this signature). It follows the user's preview method (``--preview-method``, or the
per-prompt setting of current core): none, latent2rgb, TAESD. Core previews the first latent of
the batch; a video is previewed as a strip of frames (first, middle, last), each decoded with the
previewer's own ``decode_latent_to_preview`` and put side by side. The image goes out as core's
preview tuple (``"JPEG"``, image, the user's ``--preview-size``).

No cost when nobody looks: with the method "none" core returns no previewer; with no progress
hook (headless runs, the tests' in-process ComfyUI) there is no one to send an image to, and no
previewer is built either. A frame is decoded only when a chunk changed it.
"""
from __future__ import annotations

import torch

import comfy.utils
import latent_preview

def preview_frames(num_frames: int) -> list[int]:
    """The frames a preview shows: the first, middle and last (fewer for clips under 3 frames)."""
    if num_frames < 1:
        return []
    return sorted({0, num_frames // 2, num_frames - 1})


def core_previewer(model):
    """Core's previewer for ``model`` (a ModelPatcher) under the user's preview method, or None
    when previews are off or no progress hook would carry the image (headless)."""
    if comfy.utils.PROGRESS_BAR_HOOK is None:
        return None
    return latent_preview.get_previewer(model.load_device, model.model.latent_format)


def strip_image(previewer, latents: list[torch.Tensor]):
    """The frames (model-space latents [C, H, W]) decoded by ``previewer`` side by side (PIL)."""
    from PIL import Image
    panels = [previewer.decode_latent_to_preview(x[None]) for x in latents]
    strip = Image.new("RGB", (sum(p.width for p in panels), max(p.height for p in panels)))
    left = 0
    for p in panels:
        strip.paste(p, (left, 0))
        left += p.width
    return strip


def _rows(frames) -> list[int]:
    """Frame indices of a chunk's rows: ``frames`` is a slice (with a stop) or an index tensor/list."""
    if isinstance(frames, slice):
        return list(range(frames.start or 0, frames.stop, frames.step or 1))
    return [int(i) for i in torch.as_tensor(frames).flatten().tolist()]


class SamplingProgress:
    """A loop's progress bar with a known ``total`` and previews of a strip of frames.

    ``advance(n, frames, denoised)`` after each chunk: ``n`` units of work done, and optionally
    the chunk's frame indices with their denoised latents (model space, what core's sampler
    callback gets as x0). The preview holds, per shown frame, its latest denoised latent; a frame
    not reached yet shows ``start`` (the latent the loop starts from), or a blank (zero latent)
    panel when the start is noise not worth showing."""

    def __init__(self, total: int, model=None, num_frames: int = 0, start: torch.Tensor | None = None):
        self.total = int(total)
        self.done = 0
        self.bar = comfy.utils.ProgressBar(self.total)
        self.previewer = core_previewer(model) if model is not None and num_frames > 0 else None
        self.frames = preview_frames(num_frames) if self.previewer is not None else []
        self.latest: dict[int, torch.Tensor] = {}
        if self.frames and start is not None:
            self.latest = {f: start[f].detach() for f in self.frames}

    def advance(self, n: int = 1, frames=None, denoised: torch.Tensor | None = None) -> None:
        self.done = min(self.done + n, self.total)
        preview = None
        if self.frames and denoised is not None:
            changed = False
            for row, f in enumerate(_rows(frames)):
                if f in self.frames:
                    self.latest[f] = denoised[row].detach()
                    changed = True
            if changed:
                blank = torch.zeros_like(next(iter(self.latest.values())))
                image = strip_image(self.previewer, [self.latest.get(f, blank) for f in self.frames])
                preview = ("JPEG", image, latent_preview.MAX_PREVIEW_RESOLUTION)
        self.bar.update_absolute(self.done, self.total, preview)

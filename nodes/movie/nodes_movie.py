"""MoViE nodes for editing (V3): Cross-Frame Attention, the two-knob InstructPix2Pix guider
(Eq. 1), the CFG-distilled guider and its adapter loader, Mobile-Pix2Pix, and the one-step
student's loader and sampler. The work is ``engine_guidance.py`` and ``engine_onestep.py``;
the trainers' nodes are in ``nodes_movie_train.py``.
"""
from __future__ import annotations

import json

import torch

from comfy_api.v0_0_2 import io

from ..host.model_family import require_ip2p
from . import CATEGORY, engine_guidance as guidance, engine_onestep as onestep
from .cross_frame import ANCHOR_MODES
from .onestep import LCM_ORIGINAL_STEPS

def instruction_input():
    return io.Conditioning.Input("instruction", tooltip="The edit instruction, from CLIP Text Encode.")


def source_input():
    return io.Latent.Input("source_latent", tooltip="Latents of the source frames (TAESD Encode / VAE Encode).")


def knob_inputs() -> list:
    """image_guidance s_I and text_guidance s_T: Eq. 1's two knobs (live in every MoViE sampler)."""
    return [io.Float.Input("image_guidance", default=1.5, min=0.0, max=30.0, step=0.05,
                           tooltip="Image guidance s_I: how much of the source frame to keep (higher = closer to the "
                                   "source). InstructPix2Pix default 1.5; the distilled student is trained on 1-3."),
            io.Float.Input("text_guidance", default=7.5, min=0.0, max=30.0, step=0.1,
                           tooltip="Text guidance s_T: how strongly to follow the instruction (higher = stronger "
                                   "edit). Default 7.5; the distilled student is trained on 2-14.")]


def edit_inputs() -> list:
    """instruction, source_latent, image_guidance, text_guidance (the distilled samplers' order)."""
    return [instruction_input(), source_input(), *knob_inputs()]


class CrossFrameAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditCrossFrameAttention",
            display_name="Cross-Frame Attention (MoViE)",
            category=CATEGORY,
            description=(
                "Patches a model so every frame's self-attention also attends to the keys and values of "
                "anchor frames (MoViE: the middle frame as sole anchor), which keeps an edit consistent "
                "across the clip. Each cond/uncond copy of the clip uses its own anchors."),
            inputs=[
                io.Model.Input("model", tooltip="The image-editing model (e.g. InstructPix2Pix) to patch."),
                io.Combo.Input("anchor", options=list(ANCHOR_MODES), default="middle",
                               tooltip="Which frames every frame attends to: the middle frame (MoViE), the "
                                       "first frame, or anchor_count frames at equal intervals (Fairy)."),
                io.Int.Input("anchor_count", default=3, min=1, max=16,
                             tooltip="Number of anchors for 'evenly spaced' (ignored otherwise). More anchors "
                                     "cost more attention compute."),
            ],
            outputs=[io.Model.Output(tooltip="The patched model; sample all frames of the clip in one batch.")],
        )

    @classmethod
    def execute(cls, model, anchor, anchor_count) -> io.NodeOutput:
        return io.NodeOutput(guidance.with_cross_frame_attention(model, anchor, anchor_count))


class IP2PTwoKnobGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditIP2PGuider",
            display_name="InstructPix2Pix Two-Knob Guider (MoViE Eq. 1)",
            category=CATEGORY,
            description=(
                "The InstructPix2Pix teacher: eps(x,0,0) + s_I(eps(x,img,0) - eps(x,0,0)) + "
                "s_T(eps(x,img,txt) - eps(x,img,0)), 3 UNet passes per step. It equals core DualCFGGuider "
                "wired as cond1 = instruction+image, cond2 = empty text+image, negative = empty text with a "
                "zero image, cfg_conds = s_T, cfg_cond2_negative = s_I. Use with SamplerCustomAdvanced."),
            inputs=[
                io.Model.Input("model", tooltip="An InstructPix2Pix model (8 input channels)."),
                instruction_input(),
                io.Conditioning.Input("empty_text", tooltip="CLIP Text Encode of an empty prompt (the null text)."),
                source_input(),
                *knob_inputs(),
            ],
            outputs=[io.Guider.Output(tooltip="Guider for SamplerCustomAdvanced."),
                     io.Latent.Output(display_name="latent", tooltip="Zero latent of the source's shape to "
                                                                     "start sampling from (add noise).")],
        )

    @classmethod
    def execute(cls, model, instruction, empty_text, source_latent, image_guidance, text_guidance) -> io.NodeOutput:
        require_ip2p(model)
        src = guidance.check_source(source_latent)
        g = guidance.two_knob_guider(model, instruction, empty_text, src, image_guidance, text_guidance)
        return io.NodeOutput(g, {"samples": torch.zeros_like(src)})


class CFGDistilledGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditCFGDistilledGuider",
            display_name="CFG-Distilled Guider (MoViE)",
            category=CATEGORY,
            description=(
                "Samples with a guidance-distilled InstructPix2Pix student: ONE UNet pass per step instead "
                "of three, with image and text guidance still as knobs (MoViE Sec. 3.3). Use with "
                "SamplerCustomAdvanced; the model comes from Load Guidance Adapter or CFG Distill (train)."),
            inputs=[
                io.Model.Input("model", tooltip="The distilled student (teacher + guidance adapter)."),
                *edit_inputs(),
            ],
            outputs=[io.Guider.Output(tooltip="Guider for SamplerCustomAdvanced."),
                     io.Latent.Output(display_name="latent", tooltip="Zero latent of the source's shape."),
                     io.String.Output(display_name="info", tooltip="Settings and warnings (e.g. knobs outside "
                                                                   "the trained range).")],
        )

    @classmethod
    def execute(cls, model, instruction, source_latent, image_guidance, text_guidance) -> io.NodeOutput:
        g, src, lines = guidance.student_guider(model, instruction, source_latent, image_guidance, text_guidance)
        return io.NodeOutput(g, {"samples": torch.zeros_like(src)}, "\n".join(lines))


class LoadGuidanceAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditLoadGuidanceAdapter",
            display_name="Load Guidance Adapter (MoViE)",
            category=CATEGORY,
            description=(
                "Turns an InstructPix2Pix model into its guidance-distilled student with an adapter file from "
                f"models/{guidance.ADAPTER_FOLDER} (written by CFG Distill (train)): scale embedding + weight deltas."),
            inputs=[
                io.Model.Input("model", tooltip="The InstructPix2Pix teacher the adapter was distilled from."),
                io.Combo.Input("adapter_name", options=guidance.guidance_adapter_names(),
                               tooltip=f"Adapter file in models/{guidance.ADAPTER_FOLDER}."),
            ],
            outputs=[io.Model.Output(tooltip="The student; sample it with CFG-Distilled Guider."),
                     io.String.Output(display_name="info", tooltip="What the adapter was trained on.")],
        )

    @classmethod
    def execute(cls, model, adapter_name) -> io.NodeOutput:
        student, ad = guidance.load_guidance_student(model, adapter_name)
        info = (f"{adapter_name}: {ad.kind} (rank {ad.rank}), {len(ad.deltas)} weight deltas, {ad.steps} steps, "
                f"trained image_guidance {ad.s_i_range}, text_guidance {ad.s_t_range}, family {json.dumps(ad.family)}")
        return io.NodeOutput(student, info)


class MobilePix2Pix(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditMobilePix2Pix",
            display_name="Mobile-Pix2Pix (remove high-res attention)",
            category=CATEGORY,
            description=(
                "MoViE stage 1: removes the self- and cross-attention blocks at the UNet's highest "
                "resolution (about 12% fewer FLOPs). Meant for models fine-tuned without them "
                "(the MoViE trainers); on a stock model it changes the result. The input MODEL is unchanged."),
            inputs=[io.Model.Input("model", tooltip="An SD1.x / SD2.x / InstructPix2Pix UNet model.")],
            outputs=[io.Model.Output(tooltip="The same model without its highest-resolution attention.")],
        )

    @classmethod
    def execute(cls, model) -> io.NodeOutput:
        return io.NodeOutput(guidance.without_high_res_attention(model))


class LoadOneStepStudent(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditLoadOneStepStudent",
            display_name="Load One-Step Student (MoViE)",
            category=CATEGORY,
            description=(f"Turns the guidance-distilled teacher into its one-step student with a file from "
                         f"models/{onestep.STUDENT_FOLDER} (written by One-Step Distill (train)): weight deltas + scale "
                         "embedding on top of the teacher, v-prediction. Sample it with One-Step Sampler."),
            inputs=[
                io.Model.Input("model", tooltip="The guidance-distilled teacher the student was trained on (the MODEL "
                                                "output of Load Guidance Adapter with the same adapter)."),
                io.Combo.Input("student_name", options=onestep.onestep_student_names(),
                               tooltip=f"One-step student file in models/{onestep.STUDENT_FOLDER}."),
            ],
            outputs=[io.Model.Output(tooltip="The one-step student."),
                     io.String.Output(display_name="info", tooltip="What the student was trained on.")],
        )

    @classmethod
    def execute(cls, model, student_name) -> io.NodeOutput:
        student, ad, meta = onestep.load_onestep_model(model, student_name)
        info = (f"{student_name}: one-step student ({ad.kind}, rank {ad.rank}), {meta.get('v_steps')} v-prediction + "
                f"{meta.get('adversarial_steps')} adversarial steps, trained image_guidance {ad.s_i_range}, "
                f"text_guidance {ad.s_t_range}")
        return io.NodeOutput(student, info)


class OneStepSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditOneStepSampler",
            display_name="One-Step Sampler (MoViE)",
            category=CATEGORY,
            description=(
                "Edits with the one-step student: ONE UNet pass per frame (LCM-style, from pure noise at t = 999), "
                "image and text guidance still as knobs. More steps are allowed (LCM re-noising between passes) but "
                "the student was trained for one; the info output says so. Put Cross-Frame Attention on the model "
                "for a consistent clip; decode with TAESD Decode."),
            inputs=[
                io.Model.Input("model", tooltip="The one-step student (One-Step Distill (train) or Load One-Step Student)."),
                *edit_inputs(),
                io.Int.Input("steps", default=1, min=1, max=LCM_ORIGINAL_STEPS,
                             tooltip="UNet passes per frame. The student is trained for 1 (MoViE); more run LCM-style."),
                io.Int.Input("seed", default=0, min=0, max=2**63 - 1, control_after_generate=True,
                             tooltip="Seed of the starting noise."),
            ],
            outputs=[io.Latent.Output(tooltip="The edited latents; decode with TAESD Decode."),
                     io.String.Output(display_name="info", tooltip="Settings and notes (steps beyond the trained one, "
                                                                   "knobs outside the trained range).")],
        )

    @classmethod
    def execute(cls, model, instruction, source_latent, image_guidance, text_guidance, steps, seed) -> io.NodeOutput:
        return io.NodeOutput(*onestep.sample_onestep(model, instruction, source_latent, image_guidance, text_guidance,
                                                     steps, seed))


NODES = [CrossFrameAttention, IP2PTwoKnobGuider, CFGDistilledGuider, LoadGuidanceAdapter, MobilePix2Pix,
         LoadOneStepStudent, OneStepSampler]

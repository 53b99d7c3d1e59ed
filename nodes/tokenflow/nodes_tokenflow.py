"""TokenFlow nodes (V3): DDIM Inverter, Keyframe Sampler, Save / Load Inversion. The work is in
the engines (``engine_inversion``, ``engine_sampler``, ``engine_inversion_files``), the math in
``ddim.py`` and ``propagation.py``."""
from __future__ import annotations

import comfy.samplers
from comfy_api.v0_0_2 import io

from ..host.checked_node import CheckedNode
from . import CATEGORY, engine_inversion, engine_inversion_files as files, engine_sampler

TokenFlowInversion = io.Custom("VIDEOEDIT_TOKENFLOW_INVERSION")


class DDIMInverter(CheckedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditTokenFlowDDIMInverter",
            display_name="TokenFlow DDIM Inverter",
            category=CATEGORY,
            description=(
                "Inverts video latents frame by frame with deterministic DDIM (guidance 1) along the "
                "sampling sigmas, the first stage of TokenFlow: the TokenFlow sampler starts from the "
                "noised latent and reads the source frames' features from the stored trajectory. "
                "Fixed-point refinement makes each step invertible, so few steps round-trip almost exactly."),
            inputs=[
                io.Model.Input("model", tooltip="The image model (SD1.x / SD2.x / SDXL, eps or v-prediction) "
                                                "that will also do the edit."),
                io.Conditioning.Input("positive", tooltip="Conditioning describing the source video (the "
                                                          "inversion prompt; an empty prompt works)."),
                io.Latent.Input("latent", tooltip="The source video's latents, one per frame (VAE Encode or "
                                                  "TAESD Encode of the frames)."),
                io.Int.Input("steps", default=20, min=1, max=1000,
                             tooltip="Sampling steps; the TokenFlow sampler uses the same steps and sigmas."),
                io.Combo.Input("scheduler", options=list(comfy.samplers.SCHEDULER_NAMES), default="ddim_uniform",
                               tooltip="Sigma schedule (ddim_uniform matches the reference DDIM timesteps)."),
                io.Int.Input("refine_iters", default=2, min=0, max=20,
                             tooltip="Fixed-point iterations per step (each one extra model call); 0 is plain "
                                     "DDIM inversion. 2-5 make the round trip near exact with few steps."),
                io.Int.Input("frames_per_chunk", default=16, min=1, max=4096,
                             tooltip="Frames sent through the model at once. Lower it if memory runs out; "
                                     "the result does not depend on it."),
            ],
            outputs=[
                TokenFlowInversion.Output("inversion", tooltip="Source trajectory, sigmas and fingerprint for "
                                                               "the TokenFlow sampler."),
                io.Latent.Output("noised_latent", tooltip="The inverted (noisiest) latents: the sampler's start."),
            ],
        )

    @classmethod
    def execute(cls, model, positive, latent, steps, scheduler, refine_iters, frames_per_chunk) -> io.NodeOutput:
        return io.NodeOutput(*engine_inversion.invert_video(model, positive, latent, steps, scheduler, refine_iters,
                                                            frames_per_chunk))


class KeyframeSampler(CheckedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditTokenFlowKeyframeSampler",
            display_name="TokenFlow Keyframe Sampler",
            category=CATEGORY,
            description=(
                "Edits an inverted video with TokenFlow: at every DDIM step it draws keyframes (one per interval), "
                "denoises them jointly with extended self-attention, then denoises every frame (in chunks) with "
                "the keyframes' self-attention tokens propagated along nearest-neighbour correspondences of the "
                "source frames, so the edit stays consistent over time. Optional Plug-and-Play injection of the "
                "source's conv features and self-attention q/k keeps the structure; denoise < 1 starts from "
                "partial noise (SDEdit). On long clips a keyframe attention window keeps the cost per frame flat. "
                "Uses the inversion's sigmas; the input model is not modified."),
            inputs=[
                io.Model.Input("model", tooltip="The model the inversion was made with."),
                io.Conditioning.Input("positive", tooltip="The edit prompt (or InstructPix2PixConditioning's positive)."),
                io.Conditioning.Input("negative", tooltip="The negative prompt (or InstructPix2PixConditioning's negative)."),
                TokenFlowInversion.Input("inversion", tooltip="From TokenFlow DDIM Inverter or Load Inversion."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1,
                               tooltip="Classifier-free guidance scale (the paper edits with 7.5)."),
                io.Int.Input("keyframe_interval", default=8, min=1, max=4096,
                             tooltip="One keyframe per this many frames (the paper: 8). Larger than the clip "
                                     "means a single keyframe."),
                io.Combo.Input("keyframes", options=["random", "even"], default="random",
                               tooltip="random: a new keyframe per interval at every step (the paper); even: the "
                                       "middle of each interval every step (the ablation)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the keyframe draws (the sampling itself is deterministic)."),
                io.Boolean.Input("propagation", default=True,
                                 tooltip="TokenFlow propagation (Eq. 5-7). Off: every frame is denoised on its own."),
                io.Boolean.Input("extended_attention", default=True,
                                 tooltip="Keyframes attend to all keyframes (Eq. 3-4). Off: plain self-attention."),
                io.Float.Input("pnp_f_t", default=0.8, min=0.0, max=1.0, step=0.05,
                               tooltip="Plug-and-Play: inject the source's conv features in this first fraction of "
                                       "the steps (0.8 as the paper; 0 = off, e.g. for SDEdit)."),
                io.Float.Input("pnp_attn_t", default=0.5, min=0.0, max=1.0, step=0.05,
                               tooltip="Plug-and-Play: inject the source's self-attention q/k in this first fraction "
                                       "of the steps (0.5 as the paper; 0 = off)."),
                io.Float.Input("denoise", default=1.0, min=0.01, max=1.0, step=0.01,
                               tooltip="1: start from the fully inverted noise. Below 1 (SDEdit): start that fraction "
                                       "of the steps from the end, from the clip noised with the inverted noise."),
                io.Int.Input("frames_per_chunk", default=16, min=1, max=4096,
                             tooltip="Frames denoised at once (and keyframes per attention chunk). Lower it if "
                                     "memory runs out; keyframes are shared across chunks, so there are no seams."),
                io.Combo.Input("keyframe_store", options=["auto", "memory", "disk"], default="auto",
                               tooltip="Where a step keeps its keyframes' tokens (~35 MB per keyframe at 256x256, "
                                       "~140 MB at 512x512). auto: in memory when the clip fits one chunk, otherwise "
                                       "offloaded (a temp file in ComfyUI's temp folder on CPU, CPU RAM from a GPU), "
                                       "so long clips need no more memory than short ones; memory: always where the "
                                       "model runs (fastest); disk: always a temp file. The result is the same."),
                io.Combo.Input("keyframe_attention", options=["auto", "all", "window"], default="auto", optional=True,
                               tooltip="Which keyframes each keyframe attends to in extended attention. all: every "
                                       "keyframe of the clip (the paper; its cost grows with the square of the clip "
                                       "length); window: those within keyframe_window frames (plus the first keyframe "
                                       "with window_anchor), so long clips cost the same per frame as short ones; "
                                       "auto: all up to 2 x keyframe_window + 1 frames (97 at the default), window "
                                       "beyond. Up to that length the result is the paper's."),
                io.Int.Input("keyframe_window", default=48, min=1, max=4096, optional=True,
                             tooltip="Window mode: a keyframe attends to the keyframes at most this many frames "
                                     "before or after it (48: about 13 keyframes at interval 8). Windows overlap, so "
                                     "the joint edit carries along the clip; larger is closer to the paper, slower."),
                io.Boolean.Input("window_anchor", default=True, optional=True,
                                 tooltip="Window mode: every keyframe also attends to the clip's first keyframe, one "
                                         "shared reference that keeps distant parts of a long clip alike."),
                io.Sigmas.Input("sigmas", optional=True,
                                tooltip="Optional check: must equal the inversion's sigmas (same steps/scheduler)."),
                io.Sampler.Input("sampler", optional=True,
                                 tooltip="Optional check: only ddim/euler (deterministic) are accepted; ancestral/SDE "
                                         "samplers are refused because they leave the inversion's trajectory."),
                io.Latent.Input("start_latent", optional=True,
                                tooltip="Optional start latent (the inverter's noised latent); must have the inversion's "
                                        "frames and size. Unconnected: the inversion's own noise."),
            ],
            outputs=[io.Latent.Output("latent", tooltip="The edited video's latents (decode with VAE Decode).")],
        )

    @classmethod
    def execute(cls, model, positive, negative, inversion, cfg, keyframe_interval, keyframes, seed, propagation,
                extended_attention, pnp_f_t, pnp_attn_t, denoise, frames_per_chunk, keyframe_store="auto",
                keyframe_attention="auto", keyframe_window=48, window_anchor=True,
                sigmas=None, sampler=None, start_latent=None) -> io.NodeOutput:
        return io.NodeOutput({"samples": engine_sampler.edit_video(
            model, positive, negative, inversion, cfg, keyframe_interval, keyframes, seed, propagation,
            extended_attention, pnp_f_t, pnp_attn_t, denoise, frames_per_chunk, keyframe_store, sigmas, sampler,
            start_latent, keyframe_attention, keyframe_window, window_anchor)})


class SaveInversion(CheckedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditTokenFlowSaveInversion",
            display_name="TokenFlow Save Inversion",
            category=CATEGORY,
            description=("Saves a DDIM inversion (trajectory, sigmas, model fingerprint, source prompt) as a "
                         "safetensors file in the output folder's tokenflow/ subfolder, so the clip is inverted "
                         "once and edited many times, also in later sessions (TokenFlow Load Inversion)."),
            inputs=[
                TokenFlowInversion.Input("inversion", tooltip="From TokenFlow DDIM Inverter."),
                io.String.Input("filename_prefix", default="inversion",
                                tooltip="File name prefix inside output/tokenflow/ (a counter is appended)."),
            ],
            outputs=[io.String.Output("name", tooltip="The saved file's name for TokenFlow Load Inversion.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, inversion, filename_prefix) -> io.NodeOutput:
        name = files.save_to_output(inversion, filename_prefix)
        return io.NodeOutput(name, ui={"text": [name]})


class LoadInversion(CheckedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditTokenFlowLoadInversion",
            display_name="TokenFlow Load Inversion",
            category=CATEGORY,
            description=("Loads an inversion saved by TokenFlow Save Inversion (from output/tokenflow/ or "
                         f"models/{files.MODELS_FOLDER}/) for the TokenFlow Keyframe Sampler; the sampler still "
                         "checks that model, sigmas and frames match."),
            inputs=[io.Combo.Input("name", options=files.inversion_files() or [""],
                                   tooltip="A saved inversion (output/tokenflow/... or a file in "
                                           f"models/{files.MODELS_FOLDER}).")],
            outputs=[TokenFlowInversion.Output("inversion", tooltip="The loaded inversion.")],
        )

    @classmethod
    def validate_inputs(cls, name):
        return True  # a file saved earlier in the same session is not in the listed options yet

    @classmethod
    def fingerprint_inputs(cls, name):
        return files.file_fingerprint(name)

    @classmethod
    def execute(cls, name) -> io.NodeOutput:
        return io.NodeOutput(files.load_by_name(name))


NODES = [DDIMInverter, KeyframeSampler, SaveInversion, LoadInversion]

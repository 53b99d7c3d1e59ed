"""Evaluate an edit (V3 nodes): Warp Error (temporal consistency, TokenFlow's Table 1 metric) and
CLIP Score (fidelity to the edit prompt, and CLIPFrame). Both are output nodes: they show the
numbers on the canvas and hand them to ``./videoedit eval`` through the prompt's history."""
from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..host.checked_node import CheckedNode
from . import CATEGORY, engine_clip, engine_flow

WARP_UI_KEY = "videoedit_warp_error"   # the history key harness/eval.py reads
CLIP_UI_KEY = "videoedit_clip_score"


class WarpError(CheckedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditWarpError",
            display_name="Warp Error (temporal consistency)",
            category=CATEGORY,
            description=(
                "Temporal consistency of an edited clip as TokenFlow's Table 1 measures it (Lai et al. 2018): each "
                "edited frame t+1 is warped back to frame t along the optical flow of the SOURCE clip and compared "
                "with edited frame t (mean squared RGB difference in 0..1, per channel, over pixels that are not "
                "occluded by the forward-backward flow check, motion boundaries or leaving the frame), averaged "
                "over the clip. Lower is more consistent; the paper reports 3.0e-3 for TokenFlow and 11.3e-3 for "
                "per-frame PnP. Flow from torchvision's RAFT (your local weights; nothing is downloaded) or, for a "
                "clip with known motion, the exact pan."),
            inputs=[
                io.Image.Input("edited", tooltip="The edited frames (e.g. VAE Decode's output)."),
                io.Image.Input("source", tooltip="The source frames the edit was made from (same frames and frame rate); "
                                                 "the flow is computed on these. Resized to the edited frames' size if "
                                                 "they differ."),
                io.Combo.Input("flow", options=[engine_flow.FLOW_RAFT, engine_flow.FLOW_PAN], default=engine_flow.FLOW_RAFT,
                               tooltip="RAFT: optical flow of the source clip, as the paper. known pan: the exact flow of "
                                       "a clip whose view moves by (pan_dx, pan_dy) pixels per frame (the sample clip)."),
                io.Combo.Input("raft_weights", options=engine_flow.weight_options(),
                               tooltip="torchvision's RAFT checkpoint (e.g. raft_large_C_T_SKHT_V2-ff5fadd5.pth) from "
                                       "models/optical_flow or the torch hub cache; .pth (plain state dict) or "
                                       ".safetensors. Not used with 'known pan'."),
                io.Int.Input("pan_dx", default=2, min=-4096, max=4096,
                             tooltip="known pan: pixels the view moves right per frame (the sample clip's shift: 2)."),
                io.Int.Input("pan_dy", default=1, min=-4096, max=4096,
                             tooltip="known pan: pixels the view moves down per frame (the sample clip's shift: 1)."),
                io.Int.Input("pairs_per_chunk", default=4, min=1, max=256,
                             tooltip="Frame pairs processed at once; memory stays flat in clip length. Lower it if "
                                     "memory runs out; the result is the same."),
            ],
            outputs=[io.Float.Output("warp_error", tooltip="The clip's warp error (mean over frame pairs).")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, edited, source, flow, raft_weights, pan_dx, pan_dy, pairs_per_chunk) -> io.NodeOutput:
        result, flow_used = engine_flow.warp_error(edited, source, flow, raft_weights, (pan_dx, pan_dy), pairs_per_chunk)
        info = {"warp_error": result.mean, "per_pair": result.per_pair, "valid_fraction": result.valid_fraction,
                "flow": flow_used, "frames": int(edited.shape[0]), "size": [int(edited.shape[2]), int(edited.shape[1])]}
        coverage = sum(result.valid_fraction) / len(result.valid_fraction)
        text = (f"warp error {result.mean * 1e3:.3f}e-3 over {len(result.per_pair)} frame pairs "
                f"({coverage:.0%} of pixels compared); flow: {flow_used}")
        return io.NodeOutput(result.mean, ui={"text": [text], WARP_UI_KEY: [info]})


class ClipScore(CheckedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditClipScore",
            display_name="CLIP Score (edit fidelity)",
            category=CATEGORY,
            description=(
                "How well an edited clip follows its prompt, as TokenFlow's Table 1 measures it: the cosine "
                "similarity between each frame's CLIP image embedding and the prompt's CLIP text embedding, "
                "averaged over frames (the paper reports 0.33). Also CLIPFrame (mean cosine similarity between "
                "all pairs of frames' image embeddings; the TGVE metric EVE and MoViE report). The CLIP vision "
                "model and the text encoder must be two towers of one CLIP: SD 2.x's text encoder with "
                "CLIP-ViT-H-14-laion2B-s32B-b79K, or SDXL's with CLIP-ViT-bigG-14-laion2B-39B-b160k. SD1.x's text "
                "encoder is refused (its checkpoints lack the text projection)."),
            inputs=[
                io.Image.Input("images", tooltip="The edited frames."),
                io.ClipVision.Input("clip_vision", tooltip="From Load CLIP Vision: the image tower of the same CLIP as "
                                                           "the text encoder (e.g. CLIP-ViT-H-14-laion2B-s32B-b79K "
                                                           "with SD 2.x)."),
                io.Clip.Input("clip", tooltip="The text encoder: an SD 2.x or SDXL checkpoint's CLIP output (or Load "
                                              "CLIP). It need not be the model the edit was made with."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="The edit (target) prompt the frames are scored against."),
                io.Int.Input("frames_per_chunk", default=16, min=1, max=4096,
                             tooltip="Frames encoded at once; lower it if memory runs out. The result is the same."),
            ],
            outputs=[
                io.Float.Output("clip_score", tooltip="Mean cosine similarity of the frames with the prompt."),
                io.Float.Output("clip_frame", tooltip="Mean cosine similarity between all pairs of frames."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images, clip_vision, clip, prompt, frames_per_chunk) -> io.NodeOutput:
        info = engine_clip.clip_scores(clip_vision, clip, images, prompt, frames_per_chunk)
        text = (f"CLIP score {info['clip_score']:.4f} (mean over {len(info['per_frame'])} frames), CLIPFrame "
                f"{info['clip_frame']:.4f}; {info['clip_model']}")
        return io.NodeOutput(info["clip_score"], info["clip_frame"], ui={"text": [text], CLIP_UI_KEY: [info]})


NODES = [WarpError, ClipScore]

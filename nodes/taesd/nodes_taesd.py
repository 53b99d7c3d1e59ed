"""TAESD Encode / TAESD Decode (V3 nodes): video frames <-> latents through the tiny autoencoder,
chunk by chunk (flat memory in video length), with progress, cancel and errors that name the
missing files or the mismatched latent. The work is ``engine_taesd.py``."""
from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..core.frame_size import require_multiple_of_8
from ..host.checked_node import CheckedNode
from . import CATEGORY, engine_taesd as engine

def variant_and_chunk_inputs() -> list:
    """variant, frames_per_chunk (both nodes)."""
    return [io.Combo.Input("variant", options=list(engine.TAESD_VARIANTS), default="taesd",
                           tooltip="Which TAESD to use; it must match the model family that made (or will use) the "
                                   "latent: taesd for SD1.x/SD2.x, taesdxl for SDXL, taesd3 for SD3, taef1 for Flux.1. "
                                   "Its taesd*_encoder and taesd*_decoder files must be in models/vae_approx."),
            io.Int.Input("frames_per_chunk", default=16, min=1, max=4096,
                         tooltip="Frames processed at once. Lower it if memory runs out; the result does not depend "
                                 "on it.")]


class TAESDEncode(CheckedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditTAESDEncode",
            display_name="TAESD Encode (video)",
            category=CATEGORY,
            description=(
                "Encodes video frames (an IMAGE batch) to latents with the tiny autoencoder TAESD, "
                "chunk by chunk; about 15x faster than the full VAE at a small loss of detail (MoViE)."),
            inputs=[
                io.Image.Input("images", tooltip="Video frames to encode, e.g. from Get Video Components."),
                *variant_and_chunk_inputs(),
            ],
            outputs=[io.Latent.Output(tooltip="One latent per frame.")],
        )

    @classmethod
    def execute(cls, images, variant, frames_per_chunk) -> io.NodeOutput:
        require_multiple_of_8(images, "images")  # CheckedNode refused zero frames and NaN already
        vae = engine.load_taesd(variant)
        samples = engine.chunked(lambda x: vae.encode(x[:, :, :, :3]), images, frames_per_chunk)
        return io.NodeOutput({"samples": samples})


class TAESDDecode(CheckedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditTAESDDecode",
            display_name="TAESD Decode (video)",
            category=CATEGORY,
            description=(
                "Decodes a batch of latents (one per frame) to video frames with TAESD, chunk by chunk; "
                "about 15-20x faster than the full VAE decode."),
            inputs=[
                io.Latent.Input("samples", tooltip="Latents to decode, one per frame."),
                *variant_and_chunk_inputs(),
            ],
            outputs=[io.Image.Output(tooltip="The decoded frames, ready for Create Video.")],
        )

    @classmethod
    def execute(cls, samples, variant, frames_per_chunk) -> io.NodeOutput:
        latent = samples["samples"]
        engine.check_latent(latent, variant)
        vae = engine.load_taesd(variant)
        return io.NodeOutput(engine.chunked(vae.decode, latent, frames_per_chunk))


NODES = [TAESDEncode, TAESDDecode]

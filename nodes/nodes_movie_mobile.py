"""Mobile-Pix2Pix patch node (MoViE stage 1). Math/structure in ``mobile_pix2pix.py``."""
from __future__ import annotations

from comfy_api.v0_0_2 import io

from .mobile_pix2pix import RemovedAttention, highest_resolution_attention

CATEGORY = "video edit/MoViE"


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
        paths = highest_resolution_attention(model.get_model_object("diffusion_model"))
        patched = model.clone()
        for path in paths:  # object patches on a clone: applied at load, undone at unload
            patched.add_object_patch(f"diffusion_model.{path}", RemovedAttention())
        return io.NodeOutput(patched)


NODES = [MobilePix2Pix]

"""EVE plug-and-play nodes (V3): load / new / save a video adapter, apply it, and the adapter
stacker (image-edit ControlNet + video adapter on one backbone, long clips in windows). The
work is ``engine_video_adapter.py``; the math ``temporal_adapter.py`` and ``windows.py``."""
from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..host.folders import model_file_names
from ..host.trainer_inputs import overwrite_input
from . import CATEGORY, engine_video_adapter as engine
from .temporal_adapter import fresh_adapter

VideoAdapterType = io.Custom("VIDEOEDIT_VIDEO_ADAPTER")

_MODEL_TIP = "The frozen text-to-image backbone (SD1.5 checkpoint); it is cloned, never changed."
_ADAPTER_TIP = "The video adapter: an AnimateDiff motion module (Load Video Adapter) or a fresh one."
_ANCHOR_TIP = ("Anchor on the first frame (EVE): frame 0 is edited by the image-edit adapter alone and every "
               "temporal layer lets the other frames attend to it without changing it.")


class LoadVideoAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditEVELoadVideoAdapter", display_name="Load Video Adapter (EVE)", category=CATEGORY,
            description=("Loads a video adapter: an AnimateDiff v2/v3 SD1.5 motion module (temporal attention "
                         "trained over a frozen SD1.5) or an adapter saved by this pack, from models/animatediff_models."),
            inputs=[io.Combo.Input("adapter_name", options=engine.video_adapter_names(),
                                   tooltip="File in models/animatediff_models (.safetensors; .ckpt is read with "
                                           "torch.load(weights_only=True)), e.g. mm_sd_v15_v2 or v3_sd15_mm.")],
            outputs=[VideoAdapterType.Output(display_name="video_adapter", tooltip="Temporal layers for the stacker.")],
        )

    @classmethod
    def execute(cls, adapter_name) -> io.NodeOutput:
        return io.NodeOutput(engine.load_video_adapter(adapter_name))



class InitVideoAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditEVEInitVideoAdapter", display_name="New Video Adapter (EVE)", category=CATEGORY,
            description=("A fresh video adapter for the backbone (Emu Video / Make-A-Video temporal layers): temporal "
                         "attention after every spatial attention block with a zero output projection and, optionally, "
                         "a temporal 1-D conv after every ResNet block, identity-initialised. Fresh, it changes "
                         "nothing: the start point for training."),
            inputs=[
                io.Model.Input("model", tooltip="The backbone the adapter is for (its channel layout is read)."),
                io.Boolean.Input("temporal_conv", default=False,
                                 tooltip="Also add residual temporal 1-D convolutions after the spatial convolutions."),
                io.Int.Input("max_frames", default=32, min=2, max=256,
                             tooltip="Length of the temporal positional encoding: the longest window it can see."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1,
                             tooltip="Seed of the initialisation of the non-zero layers."),
            ],
            outputs=[VideoAdapterType.Output(display_name="video_adapter", tooltip="An identity video adapter.")],
        )

    @classmethod
    def execute(cls, model, temporal_conv, max_frames, seed) -> io.NodeOutput:
        return io.NodeOutput(fresh_adapter(engine.backbone_layout(model, temporal_conv), temporal_conv, max_frames, seed))



class SaveVideoAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditEVESaveVideoAdapter", display_name="Save Video Adapter (EVE)", category=CATEGORY,
            description=("Saves a video adapter to models/animatediff_models in the AnimateDiff key layout "
                         "(safetensors, written atomically) and shows the path written. An existing file of the "
                         "same name is kept (the node stops with a message) unless overwrite is on."),
            inputs=[VideoAdapterType.Input("video_adapter", tooltip="The adapter to save."),
                    io.String.Input("filename", default="eve_video_adapter",
                                    tooltip="File name (without extension, no folders) in models/animatediff_models."),
                    overwrite_input("models/animatediff_models")],
            outputs=[io.String.Output(display_name="path", tooltip="The file written.")], is_output_node=True,
        )

    @classmethod
    def execute(cls, video_adapter, filename, overwrite=False) -> io.NodeOutput:
        path = engine.save_video_adapter(video_adapter, filename, overwrite)
        return io.NodeOutput(path, ui={"text": [f"saved {path}"]})



class ApplyVideoAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditEVEApplyVideoAdapter", display_name="Apply Video Adapter (EVE)", category=CATEGORY,
            description=("Adds the video adapter's temporal layers to a clone of the model (frames = batch). No windows: "
                         "pair it with core Context Windows for long clips, or use the Adapter Stacker."),
            inputs=[io.Model.Input("model", tooltip=_MODEL_TIP),
                    VideoAdapterType.Input("video_adapter", tooltip=_ADAPTER_TIP),
                    io.Boolean.Input("anchor_first_frame", default=False, tooltip=_ANCHOR_TIP + (
                        " Without the stacker's windows, each window's first frame is the one kept."))],
            outputs=[io.Model.Output(tooltip="The backbone with temporal layers.")],
        )

    @classmethod
    def execute(cls, model, video_adapter, anchor_first_frame) -> io.NodeOutput:
        return io.NodeOutput(engine.apply_video_adapter(model, video_adapter, anchor_first_frame))



class AdapterStacker(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditEVEAdapterStacker", display_name="EVE Adapter Stacker", category=CATEGORY,
            description=(
                "EVE plug-and-play video editing (Sec. 3.1): stacks the image-edit adapter (a ControlNet such as "
                "control_v11e_sd15_ip2p, applied per frame to the source frames) and the video adapter on one frozen "
                "backbone, optionally with a LoRA (the aligner) on top. Frame 0 anchors the video adapter; long clips "
                "run in cross-faded sliding windows (a core context handler: a later core Context Windows node "
                "replaces it). Sample the outputs with KSampler on a latent of the clip's frames."),
            inputs=[
                io.Model.Input("model", tooltip=_MODEL_TIP),
                VideoAdapterType.Input("video_adapter", tooltip=_ADAPTER_TIP),
                io.ControlNet.Input("control_net", tooltip="The image-edit adapter, e.g. control_v11e_sd15_ip2p (Load ControlNet Model)."),
                io.Image.Input("images", tooltip="The source frames; frame i is the ControlNet hint of output frame i."),
                io.Conditioning.Input("positive", tooltip="The edit instruction / output caption (CLIP Text Encode)."),
                io.Conditioning.Input("negative", tooltip="Negative prompt (CLIP Text Encode; may be empty)."),
                io.Float.Input("control_strength", default=1.0, min=0.0, max=10.0, step=0.01,
                               tooltip="Strength of the image-edit ControlNet."),
                io.Int.Input("context_length", default=8, min=0, max=256,
                             tooltip="Frames per sliding window (EVE: 8; AnimateDiff modules: up to 32 incl. the anchor). "
                                     "0 = no windows (the whole clip at once, or core Context Windows if set)."),
                io.Int.Input("context_overlap", default=4, min=0, max=255,
                             tooltip="Frames shared by neighbouring windows; they are cross-faded. Below context_length."),
                io.Boolean.Input("anchor_first_frame", default=True, tooltip=_ANCHOR_TIP),
                io.Combo.Input("noise_schedule", options=list(engine.SCHEDULES), default="backbone default",
                               tooltip="Zero-terminal SNR (Emu Video): core's discrete schedule with zsnr; use it "
                                       "with models trained that way (v-prediction for a backbone fine-tuned so)."),
                io.Combo.Input("lora_name", options=["none"] + model_file_names("loras", None), default="none",
                               tooltip="A LoRA stacked on top (e.g. the EVE aligner), from models/loras; refused "
                                       "unless every UNet key of the file applies to this model."),
                io.Float.Input("lora_strength", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="Strength of that LoRA on the model."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The stacked model for KSampler."),
                     io.Conditioning.Output(display_name="positive", tooltip="Positive with the per-frame ControlNet."),
                     io.Conditioning.Output(display_name="negative", tooltip="Negative with the per-frame ControlNet.")],
        )

    @classmethod
    def execute(cls, model, video_adapter, control_net, images, positive, negative, control_strength, context_length,
                context_overlap, anchor_first_frame, noise_schedule, lora_name, lora_strength) -> io.NodeOutput:
        return io.NodeOutput(*engine.stack_adapters(
            model, video_adapter, control_net, images, positive, negative, control_strength, context_length,
            context_overlap, anchor_first_frame, noise_schedule, lora_name, lora_strength))



NODES = [LoadVideoAdapter, InitVideoAdapter, SaveVideoAdapter, ApplyVideoAdapter, AdapterStacker]

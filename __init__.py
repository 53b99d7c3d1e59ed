"""ComfyUI-VideoEdit: text-driven video editing nodes (TokenFlow, EVE, MoViE) for ComfyUI.

ComfyUI loads this folder as a custom node and calls ``comfy_entrypoint`` (V3 node API).
The nodes import ``comfy_api.v0_0_2``, which only re-exports ``comfy_api.latest``: no version
pins ComfyUI's behaviour for us, so the tests run against the embedded ComfyUI and the code
relies only on ModelPatcher patch points and ComfyUI's functions. Nothing ComfyUI-specific is imported at
module import time, so the pure-torch algorithm modules under ``nodes/`` can be imported
and tested without ComfyUI.
"""

WEB_DIRECTORY = "./js"


async def comfy_entrypoint():
    from .nodes.registry import VideoEditExtension

    return VideoEditExtension()

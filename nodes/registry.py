"""The V3 extension that hands ComfyUI every node of the pack: the only module that imports the
families' node modules (``nodes/<family>/nodes_*.py``)."""
from __future__ import annotations

from comfy_api.v0_0_2 import ComfyExtension, io

from .eval import nodes_eval
from .eve import nodes_eve, nodes_eve_align
from .movie import nodes_movie, nodes_movie_train
from .taesd import nodes_taesd
from .tokenflow import nodes_tokenflow

NODE_MODULES = (nodes_taesd, nodes_tokenflow, nodes_movie, nodes_movie_train, nodes_eve, nodes_eve_align, nodes_eval)


class VideoEditExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [node for module in NODE_MODULES for node in module.NODES]

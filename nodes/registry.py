"""The V3 extension that hands ComfyUI every node of the pack."""
from __future__ import annotations

from comfy_api.v0_0_2 import ComfyExtension, io

from . import nodes_taesd
from . import nodes_tokenflow
from . import nodes_tokenflow_sampler
from . import nodes_tokenflow_io
from . import nodes_movie
from . import nodes_movie_train
from . import nodes_movie_mobile
from . import nodes_eve
from . import nodes_movie_onestep
from . import nodes_eve_align
from .eval import nodes_eval


class VideoEditExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [*nodes_taesd.NODES, *nodes_tokenflow.NODES, *nodes_tokenflow_sampler.NODES, *nodes_tokenflow_io.NODES, *nodes_movie.NODES, *nodes_movie_train.NODES, *nodes_movie_mobile.NODES, *nodes_eve.NODES, *nodes_eve_align.NODES, *nodes_movie_onestep.NODES, *nodes_eval.NODES]

"""The inputs and outputs every trainer node of the pack shares (V3 schema pieces), written once:
seed, checkpoint interval, output name, resume; the overwrite switch (trainers and savers); the
MODEL / loss curve / info outputs; the node id the live chart needs. Names, order and defaults
are part of saved workflows: keep them."""
from __future__ import annotations

from comfy_api.v0_0_2 import io


def run_inputs(output_default: str, saved_as: str, kind: str) -> list:
    """seed, checkpoint_every, output_name, resume (in that order, as every trainer lists them).
    ``saved_as``: what the output name names, e.g. "the adapter in models/videoedit_guidance"."""
    return [
        io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Seed of the draws; same seed = same run."),
        io.Int.Input("checkpoint_every", default=100, min=1, max=1_000_000,
                     tooltip="Write a checkpoint (atomically) every this many steps; a killed run resumes there."),
        io.String.Input("output_name", default=output_default,
                        tooltip=f"File name (no folders) of {saved_as}; its checkpoint goes to "
                                f"output/videoedit_training/{kind}/<name>. An existing file of that name is "
                                "never replaced unless overwrite is on (a resumed run rewrites its own file)."),
        io.Boolean.Input("resume", default=True,
                         tooltip="Continue from this output name's checkpoint if there is one (same settings)."),
    ]


def overwrite_input(what: str):
    """The overwrite switch, an optional widget after every other input (older saved workflows,
    which lack it, keep their widget values in place and get False)."""
    return io.Boolean.Input("overwrite", default=False, optional=True,
                            tooltip=f"Replace an existing file of the same name in {what}. Off: such a file is "
                                    "kept and the node stops with a message before doing any work.")


def trainer_outputs(model_tooltip: str, curve_tooltip: str, info_tooltip: str) -> list:
    """The trained MODEL, the loss-curve IMAGE and the info STRING."""
    return [io.Model.Output(tooltip=model_tooltip),
            io.Image.Output(display_name="loss_curve", tooltip=curve_tooltip),
            io.String.Output(display_name="info", tooltip=info_tooltip)]


def node_id(node_cls):
    """The running node's id (for the live chart), None when called outside a prompt."""
    return node_cls.hidden.unique_id if node_cls.hidden is not None else None

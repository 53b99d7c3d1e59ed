"""What every trainer node of the pack shows and where it keeps its run (ComfyUI-bound): the
progress bar, cancel, the live loss chart on the node (js/videoedit_loss_chart.js, fed by
"videoedit.training" server messages), the loss-curve image, and the run's checkpoint in the
output folder. The loop itself is ``core/trainer_loop.py``."""
from __future__ import annotations

import os

import comfy.model_management
import comfy.utils
import folder_paths

from ..core import training_runs
from ..core.checkpoints import checkpoint_step
from ..core.loss_curve import image_to_tensor, render_loss_curve
from .folders import RUN_TAG_KEY, run_tag, save_path

MESSAGE = "videoedit.training"


def send_to_ui(event: str, data: dict) -> None:
    """PromptServer message to the canvas (no-op when no server runs, e.g. headless)."""
    try:
        from server import PromptServer
    except ImportError:
        return
    inst = getattr(PromptServer, "instance", None)
    if inst is not None:
        inst.send_sync(event, data)


def run_checkpoint(kind: str, name: str, legacy_file: str, legacy_config_key: str) -> str:
    """The checkpoint of run ``name`` of trainer ``kind`` in the output folder; a checkpoint of the
    same run in the layout before trainer kinds had their own folders is moved there first."""
    out = folder_paths.get_output_directory()
    path = training_runs.checkpoint_path(out, kind, name)
    training_runs.adopt_legacy_checkpoint(path, out, name, legacy_file, legacy_config_key)
    return path


def run_files(kind: str, name: str, legacy_file: str, legacy_config_key: str, model_folder: str, resume: bool,
              overwrite: bool) -> tuple[str, str, dict[str, str]]:
    """(checkpoint, the model file the run writes in ``model_folder``, the metadata that marks the
    file as this run's) of run ``name`` of trainer ``kind``, checked before any work is done.

    The output name is also the resume key: a run that resumes its checkpoint (resume on, a
    checkpoint there) may rewrite the file it wrote before (its metadata names this run); any other
    existing file of that name is refused unless ``overwrite``."""
    ckpt = run_checkpoint(kind, name, legacy_file, legacy_config_key)
    tag = run_tag(kind, name)
    path = save_path(model_folder, name, "output_name", overwrite, tag if resume and os.path.isfile(ckpt) else None)
    return ckpt, path, {RUN_TAG_KEY: tag}


def run_with_live_chart(run, total: int, ckpt: str, resume: bool, node=None, name: str = ""):
    """Run a trainer (``run(ckpt, resume, on_step=, interrupted=)``, the shape of every trainer of
    the pack) with ComfyUI's progress bar, cancel and the live-chart messages. Returns
    (loss history, the step it resumed at)."""
    start = checkpoint_step(ckpt) if resume else 0
    pbar = comfy.utils.ProgressBar(total)
    pbar.update_absolute(min(start, total), total)
    send_to_ui(MESSAGE, {"node": node, "name": name, "reset": True, "total": total})

    def on_step(step, loss):
        pbar.update_absolute(step, total)
        send_to_ui(MESSAGE, {"node": node, "name": name, "step": step, "total": total, "loss": loss})

    history = run(ckpt, resume, on_step=on_step,
                  interrupted=comfy.model_management.throw_exception_if_processing_interrupted)
    if start:  # the chart shows the resumed history too
        send_to_ui(MESSAGE, {"node": node, "name": name, "history": history, "total": total})
    return history, start


def loss_curve_image(history: list[float], title: str):
    """The loss history as a ComfyUI IMAGE [1, H, W, 3]."""
    return image_to_tensor(render_loss_curve(history, title=title))


def resumed_note(start: int) -> str:
    return f"; resumed at step {start}" if start else ""

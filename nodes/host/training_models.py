"""What the pack's trainers need from ComfyUI's memory management (ComfyUI-bound): models they
can backpropagate through, and core's training flag around the loop.

Current ComfyUI runs models on NVIDIA GPUs with dynamic VRAM by default (``ModelPatcherDynamic``:
weights are staged and cast into reused VRAM buffers per call, ``load()`` refuses a full load).
Our trainers run the UNet directly with weight wrappers and backpropagate through them, which
needs every weight resident for the whole step; so a dynamic model is swapped for its
non-dynamic delegate (``get_non_dynamic_delegate()``, what core's own sampler does for weight
hooks): a plain ``ModelPatcher`` over a fresh load of the same file carrying the same patches,
object patches, weight wrappers, model options and attachments. ComfyUI 0.3.75 has no dynamic
VRAM (no ``is_dynamic``): there every function here returns its input unchanged.

``training_mode()`` sets ``comfy.model_management.in_training`` (core's trainer does the same:
ops then keep out-of-place, differentiable paths) for the loop and restores it on every exit.
"""
from __future__ import annotations

from contextlib import contextmanager

import comfy.model_management

DISABLE_FLAG = "--disable-dynamic-vram"


def is_dynamic(patcher) -> bool:
    """True for a ModelPatcher that loads with dynamic VRAM (never on ComfyUI without it)."""
    check = getattr(patcher, "is_dynamic", None)
    return bool(check()) if callable(check) else False


def _cannot(input_name: str, why: str) -> RuntimeError:
    return RuntimeError(
        f"{input_name}: ComfyUI runs this model with dynamic VRAM, and training needs a plainly loaded copy, "
        f"which it cannot make here ({why}). Restart ComfyUI with {DISABLE_FLAG} to train, or load the model "
        "with a core loader (Load Checkpoint / Load Diffusion Model), whose models can make that copy.")


def plain_model(model, input_name: str):
    """``model``, or its non-dynamic delegate when ComfyUI runs it with dynamic VRAM; an error
    naming ``input_name`` and the fix when neither is possible (a model from a loader that did
    not register how to reload it)."""
    if not is_dynamic(model):
        return model
    delegate = getattr(model, "get_non_dynamic_delegate", None)
    if delegate is None:
        raise _cannot(input_name, f"{type(model).__name__} has no get_non_dynamic_delegate()")
    try:
        plain = delegate()
    except Exception as e:  # core: RuntimeError "cached_patcher_init is not initialized"
        raise _cannot(input_name, f"{type(e).__name__}: {e}") from e
    if is_dynamic(plain):
        raise _cannot(input_name, "its delegate is dynamic too")
    return plain


def plain_control_net(control_net, input_name: str = "control_net"):
    """``control_net``, or (dynamic VRAM) a copy on a plain ModelPatcher with its own copy of the
    ControlNet weights: core's ``deepclone_multigpu`` (ControlNet loaders register no reload, so
    there is no delegate to take)."""
    if not is_dynamic(getattr(control_net, "control_model_wrapped", None)):
        return control_net
    deepclone = getattr(control_net, "deepclone_multigpu", None)
    if deepclone is None:
        raise _cannot(input_name, f"{type(control_net).__name__} has no deepclone_multigpu()")
    plain = deepclone(control_net.control_model_wrapped.load_device)
    if is_dynamic(plain.control_model_wrapped):
        raise _cannot(input_name, "its copy is dynamic too")
    return plain


@contextmanager
def training_mode():
    """``comfy.model_management.in_training`` = True inside, the previous value after (also on an
    error or a cancel); nothing where core has no such flag (0.3.75)."""
    mm = comfy.model_management
    if not hasattr(mm, "in_training"):
        yield
        return
    before = mm.in_training
    mm.in_training = True
    try:
        yield
    finally:
        mm.in_training = before

"""The one way the pack attaches its data to a MODEL: ModelPatcher attachments.

``ModelPatcher.clone()`` carries ``attachments`` by reference (ComfyUI 0.3.75 and current
ComfyUI alike; an attachment with ``on_model_patcher_clone`` would be asked for its copy), so
whatever a node downstream does on a clone (Cross-Frame Attention, a LoRA, a sampling patch)
keeps the data. A plain attribute on the patcher is lost at the first clone, and
``model_options["transformer_options"]`` is deep-copied by 0.3.75's clone and handed into every
UNet call, which suits patch settings, not pack data. Keys are strings, so both copies of the
pack (ComfyUI's custom_nodes import and the ``videoedit`` package the tests import) read each
other's attachments. Attach only to a clone the caller made: the input MODEL stays untouched.
"""
from __future__ import annotations

from typing import Any


def attach(model, key: str, value: Any) -> None:
    """Attach ``value`` under ``key`` to ``model`` (a clone the caller owns)."""
    model.set_attachments(key, value)


def attached(model, key: str, default: Any = None) -> Any:
    """The value attached under ``key`` (on this model or the one it was cloned from), or ``default``."""
    value = model.get_attachment(key)
    return default if value is None else value

"""How the shipped templates save core nodes whose widgets moved between ComfyUI 0.3.75 and
current core, so that both frontends restore every value into the widget it belongs to.

Frontends restore ``widgets_values`` by position: the n-th saved value goes to the n-th widget
the node has under the definitions the server sends (1.32.9 and 1.58.1 alike; 1.58.1 restores
by name only with the experimental, default-off setting ``Comfy.Workflow.NamedValuesRestore``).
A value past the end of the list leaves its widget at the schema default.

- ``LoadVideo``: 0.3.75's widgets are [file, upload button]; current core's are [file, edit
  (optional trim/crop, VIDEO_EDIT), upload button]. Saved as 0.3.75's frontend writes it,
  [file, "image"], the button's constant "image" lands in current core's ``edit`` and current
  core's LoadVideo fails on it. Saved as [file], both restore the file and leave the rest at
  their defaults (the button needs no value).
- ``SaveVideo`` [prefix, format, codec] and ``CreateVideo`` [fps] need nothing: current core's
  ``format`` is a dynamic combo whose ``auto`` option puts its ``codec`` right after it, so
  "auto", "auto" land in format and format.codec, valid in both; CreateVideo's new widgets
  are all optional and after fps.

tests/test_templates.py checks every template is saved this way; tests/test_browser_core.py
loads each one in both frontends (the newest with current core's recorded definitions) and
compares every widget with what harness.workflow_api sends.
"""
from __future__ import annotations

# core node -> how many leading widget values both layouts restore into the same widgets
SHARED_LEADING_VALUES = {"LoadVideo": 1}


def portable_widget_values(workflow: dict) -> dict:
    """Cut each listed core node's ``widgets_values`` to the values both layouts share (in place;
    returns the workflow). Idempotent."""
    for node in workflow["nodes"]:
        keep = SHARED_LEADING_VALUES.get(node.get("type"))
        values = node.get("widgets_values")
        if keep is not None and isinstance(values, list):
            node["widgets_values"] = values[:keep]
    return workflow

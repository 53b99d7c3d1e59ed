"""Whether an API prompt's inputs are valid for a server's node definitions (``GET /object_info``),
checked without that server: what ComfyUI's validation refuses before it runs a node, and what a
node's own code then trips over.

``invalid_inputs(prompt, object_info, class_types=None)`` lists one line per problem (node id, class,
input, what is wrong); an empty list means the prompt's inputs fit the definitions:

- every required input is set (a link ``[node_id, slot]`` satisfies any input: which outputs may
  feed which inputs is the canvas's business, not checked here);
- a combo's value is one of its options;
- a V3 dynamic combo's value is one of its option keys, and the inputs that option shows (sent
  flat under dotted names, ``format.codec.encoding.crf``) are checked in turn: a dynamic combo is
  complete when each level's required inputs are there;
- INT and FLOAT values are numbers (an INT a whole one) within min/max, BOOLEAN a bool, STRING a
  string;
- a socketless widget whose default is a dict (V3 ``VIDEO_EDIT``: ``{"trim": {...}, "crop":
  {...}}``) holds a dict of that default's shape: the same keys at every level, numbers where the
  default has numbers (current core's LoadVideo calls ``edit.get("trim")`` and fails on
  ``"edit": "image"``);
- any other type is a socket: a literal value there is a problem, only a link fits.

Inputs a definition does not name (e.g. the frontend's ``video-preview``) are ignored, as the
server ignores them. ``class_types`` limits the check to those classes. The input order and dotted
names come from ``harness.workflow_api.input_specs``, the reading the UI-to-API conversion uses.
"""
from __future__ import annotations

from numbers import Number

from .workflow_api import InputSpec, input_specs

_MISSING = object()
_SHOWN_CHOICES = 8  # how many options a message lists


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _is_number(value) -> bool:
    return isinstance(value, Number) and not isinstance(value, bool)


def _same_shape(value, default) -> bool:
    if isinstance(default, dict):
        return isinstance(value, dict) and value.keys() == default.keys() and all(
            _same_shape(value[k], default[k]) for k in default)
    if _is_number(default):
        return _is_number(value)
    return type(value) is type(default)


def _range_problem(spec: InputSpec, value) -> str | None:
    lo, hi = spec.opts.get("min"), spec.opts.get("max")
    if lo is not None and value < lo or hi is not None and value > hi:
        return f"{value} is outside [{lo}, {hi}]"
    return None


def _value_problem(spec: InputSpec, value) -> str | None:
    """Why ``value`` cannot be this input's value, or None."""
    choices = spec.choices()
    if choices or isinstance(spec.type, list) or spec.type == "COMBO" or spec.is_dynamic_combo:
        if value in choices:
            return None
        shown = ", ".join(map(repr, choices[:_SHOWN_CHOICES])) + (", ..." if len(choices) > _SHOWN_CHOICES else "")
        return f"{value!r} is not one of its options ({shown})"
    if spec.type == "INT":
        if not _is_number(value) or value != int(value):
            return f"{value!r} is not a whole number"
        return _range_problem(spec, value)
    if spec.type == "FLOAT":
        return _range_problem(spec, value) if _is_number(value) else f"{value!r} is not a number"
    if spec.type == "BOOLEAN":
        return None if isinstance(value, bool) else f"{value!r} is not true/false"
    if spec.type == "STRING":
        return None if isinstance(value, str) else f"{value!r} is not text"
    default = spec.opts.get("default")
    if spec.opts.get("socketless") and isinstance(default, dict):
        return None if _same_shape(value, default) else f"{value!r} does not have the shape of its default {default!r}"
    return f"{value!r} is a value where a link is expected"


def _level_problems(specs: list[InputSpec], inputs: dict) -> list[str]:
    problems = []
    for spec in specs:
        value = inputs.get(spec.name, _MISSING)
        if value is _MISSING:
            if spec.required:
                problems.append(f"required input '{spec.name}' is missing")
            continue
        if _is_link(value):
            continue
        why = _value_problem(spec, value)
        if why is not None:
            problems.append(f"'{spec.name}': {why}")
        elif spec.is_dynamic_combo:
            problems += _level_problems(spec.option_inputs(value), inputs)
    return problems


def invalid_inputs(prompt: dict, object_info: dict, class_types=None) -> list[str]:
    """One line per input of ``prompt`` that ``object_info``'s definitions refuse (see module doc)."""
    problems = []
    for nid, node in prompt.items():
        ctype = node.get("class_type")
        if class_types is not None and ctype not in class_types:
            continue
        node_def = object_info.get(ctype)
        if node_def is None:
            problems.append(f"node {nid}: no definition of '{ctype}'")
            continue
        problems += [f"node {nid} ({ctype}): {p}" for p in _level_problems(input_specs(node_def), node.get("inputs") or {})]
    return problems

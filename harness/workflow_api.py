"""UI-format workflows (what the canvas saves) -> API prompts (what POST /prompt takes).

``to_api(workflow, object_info)`` does what the frontend's graphToPrompt does, reading every
node's schema from ``GET /object_info`` rather than from a list of known widget types:

- Which inputs are widgets: INT/FLOAT/STRING/BOOLEAN/COMBO (or a list of choices), V3 dynamic
  combos (``COMFY_DYNAMICCOMBO_V3``), inputs the schema marks ``socketless`` (a widget with no
  socket, e.g. V3 VIDEO_EDIT) or gives a ``widgetType``, and inputs the saved node itself marks
  as widget sockets (custom widget types of other packs); ``forceInput`` inputs are sockets.
- Their order: ``input_order`` required then optional (``hidden`` inputs are not widgets).
- A dynamic combo's value picks one of its options; that option's inputs follow it at once,
  named ``<combo>.<input>`` (nested combos recurse, depth first), and are sent flat under those
  dotted names, which the server folds back into a dict.
- ``widgets_values_named`` (written next to ``widgets_values`` by frontends from 1.49.6 on, from
  the same widgets) is read by name; otherwise ``widgets_values`` by position. A widget the
  saved list does not reach keeps its schema default, as it does in the canvas.
- After a widget with ``control_after_generate`` (schema option; legacy: an INT named
  seed/noise_seed) the frontend stores the control mode ("fixed", "randomize", ...), and after
  a COMBO also the control's filter text; both are skipped. A media combo with an upload button
  (``image_upload``/``video_upload``...) stores the button's value ("image") after the widgets;
  it is skipped wherever it stands, as a value no later widget can take.
- Nodes without a backend class (Note, MarkdownNote, Reroute, PrimitiveNode) are left out:
  Reroutes are followed through, a PrimitiveNode's value is already in its target's widget.
- Muted nodes (mode 2) are left out, with the links from them; bypassed nodes (mode 4) are
  left out and their consumers are connected to the bypassed node's input of the same type.

``apply_overrides(prompt, ["NODE.input=value", ...])`` sets inputs by node id, title or class
(dotted input names of dynamic combos work too: ``SaveVideo.format.codec=h264``).
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Iterable

VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize", "increment-wrap"}
LEGACY_SEED_NAMES = {"seed", "noise_seed"}
UPLOAD_VALUES = {"image", "video", "audio", "upload", "animated_image"}
MODE_MUTED, MODE_BYPASSED = 2, 4
_MISSING = object()


class WorkflowError(ValueError):
    """The workflow cannot be converted; the message names the node and what is wrong."""


def _links(workflow: dict) -> dict[int, tuple[int, int, int, int, str]]:
    """link id -> (from_node, from_slot, to_node, to_slot, type), for both link encodings."""
    out = {}
    for link in workflow.get("links") or []:
        if isinstance(link, dict):
            out[int(link["id"])] = (int(link["origin_id"]), int(link["origin_slot"]), int(link["target_id"]),
                                    int(link["target_slot"]), link.get("type"))
        else:
            lid, a, a_slot, b, b_slot, typ = link[:6]
            out[int(lid)] = (int(a), int(a_slot), int(b), int(b_slot), typ)
    return out


@dataclass(frozen=True)
class InputSpec:
    """One input of a node's schema: its (full, dotted) name, type, options and section."""
    name: str
    type: object
    opts: dict
    required: bool

    @property
    def is_dynamic_combo(self) -> bool:
        return self.type == DYNAMIC_COMBO

    def default(self):
        """The value the canvas gives a new widget of this input, or _MISSING if it has none."""
        if "default" in self.opts:
            return self.opts["default"]
        choices = self.choices()
        if choices:
            return choices[0]
        return {"BOOLEAN": False, "STRING": ""}.get(self.type, _MISSING) if isinstance(self.type, str) else _MISSING

    def choices(self) -> list:
        if isinstance(self.type, list):
            return self.type
        if self.is_dynamic_combo:
            return [o.get("key") for o in self.opts.get("options") or []]
        if self.type == "COMBO":
            return list(self.opts.get("options") or [])
        return []

    def option_inputs(self, key) -> list["InputSpec"]:
        """The inputs a dynamic combo shows for the option ``key``, named ``<combo>.<input>``."""
        for option in self.opts.get("options") or []:
            if option.get("key") == key:
                return input_specs({"input": option.get("inputs") or {}}, prefix=self.name + ".")
        return []


def input_specs(node_def: dict, prefix: str = "") -> list[InputSpec]:
    """The inputs of a schema in the order the frontend creates them (required, then optional)."""
    inputs = node_def.get("input") or {}
    order = node_def.get("input_order") or {}
    specs = []
    for section in ("required", "optional"):
        entries = inputs.get(section) or {}
        names = list(order.get(section) or entries.keys())
        names += [n for n in entries if n not in names]
        for name in names:
            if name not in entries:
                continue
            spec = entries[name]
            typ = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
            opts = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}
            specs.append(InputSpec(prefix + name, typ, opts, section == "required"))
    return specs


def _is_widget(spec: InputSpec, ui_widget_names: set[str]) -> bool:
    if spec.opts.get("forceInput"):
        return False
    if isinstance(spec.type, list) or spec.type in WIDGET_TYPES or spec.is_dynamic_combo:
        return True
    if spec.opts.get("socketless") or spec.opts.get("widgetType") in WIDGET_TYPES:
        return True
    return spec.name in ui_widget_names  # a custom widget type the saved node declares


def _is_upload_combo(spec: InputSpec) -> bool:
    return (isinstance(spec.type, list) or spec.type == "COMBO") and any(
        k.endswith("_upload") and v for k, v in spec.opts.items())


def _has_control(spec: InputSpec) -> bool:
    if "control_after_generate" in spec.opts:
        return bool(spec.opts["control_after_generate"])
    return spec.type == "INT" and spec.name in LEGACY_SEED_NAMES


def _fits(spec: InputSpec, value) -> bool:
    """Whether ``value`` can be this widget's value (tells an upload button's value apart)."""
    choices = spec.choices()
    return value in choices if choices else spec.type == "STRING"


def _one_of(value, words: set[str]) -> bool:
    return isinstance(value, str) and value in words


class _Positional:
    """A cursor over ``widgets_values``."""

    def __init__(self, values: list):
        self.values, self.pos = values, 0

    def peek(self):
        return self.values[self.pos] if self.pos < len(self.values) else _MISSING

    def take(self):
        value = self.peek()
        if value is not _MISSING:
            self.pos += 1
        return value


def widget_values(node: dict, node_def: dict) -> dict[str, object]:
    """The widget inputs of a UI node, by (dotted) name, as the canvas holds them."""
    ui_widget_names = {i["name"] for i in node.get("inputs") or [] if i.get("widget")}
    specs = input_specs(node_def)
    upload = any(_is_upload_combo(s) for s in specs)
    named = node.get("widgets_values_named")
    values = node.get("widgets_values")
    if isinstance(values, dict):  # some packs save widgets by name
        named = values
    if not isinstance(named, dict):
        named = None
    cursor = _Positional(list(values) if isinstance(values, list) else []) if named is None else None
    out: dict[str, object] = {}

    def walk(level: list[InputSpec]) -> None:
        for spec in level:
            if not _is_widget(spec, ui_widget_names):
                continue
            if named is not None:
                value = named.get(spec.name, _MISSING)
            else:
                if upload and _one_of(cursor.peek(), UPLOAD_VALUES) and not _fits(spec, cursor.peek()):
                    cursor.pos = len(cursor.values)  # the upload button's value: it is the last widget
                value = cursor.take()
                if value is not _MISSING and _has_control(spec) and _one_of(cursor.peek(), CONTROL_VALUES):
                    cursor.take()
                    if spec.type == "COMBO" or isinstance(spec.type, list):
                        cursor.take()  # the control's filter text (not sent to the server)
            if value is _MISSING:
                value = spec.default()
                if value is _MISSING:
                    continue  # no value and no default: the server names the missing input
            out[spec.name] = value
            if spec.is_dynamic_combo:
                walk(spec.option_inputs(value))

    walk(specs)
    return out


def to_api(workflow: dict, object_info: dict) -> dict[str, dict]:
    """Convert a UI-format workflow into an API prompt ``{node_id: {class_type, inputs, _meta}}``."""
    if (workflow.get("definitions") or {}).get("subgraphs"):
        raise WorkflowError("workflows with subgraphs are not supported by harness.workflow_api; "
                            "unpack the subgraphs in the canvas and save again")
    if "nodes" not in workflow:
        raise WorkflowError("not a UI-format workflow (no 'nodes'); API-format prompts need no conversion")
    nodes = {int(n["id"]): n for n in workflow["nodes"]}
    links = _links(workflow)

    def input_link(node: dict, slot: int):
        inputs = node.get("inputs") or []
        if slot >= len(inputs) or inputs[slot].get("link") is None:
            return None
        return links.get(int(inputs[slot]["link"]))

    def resolve(link_id: int, want_type):
        """Follow a link upstream through Reroutes and bypassed nodes; (node, slot) or None."""
        link = links.get(int(link_id))
        seen = set()
        while link is not None:
            origin = nodes.get(link[0])
            if origin is None:
                raise WorkflowError(f"link {link_id} starts at node {link[0]}, which does not exist")
            if id(origin) in seen:
                raise WorkflowError(f"link {link_id}: cycle through Reroute/bypassed nodes")
            seen.add(id(origin))
            mode = origin.get("mode", 0)
            if origin["type"] == "Reroute":
                link = input_link(origin, 0)
                continue
            if origin["type"] == "PrimitiveNode" or mode == MODE_MUTED:
                return None
            if mode == MODE_BYPASSED:
                # the frontend's rule: the input at the output's index first, then any input,
                # whose type matches what the consumer wants
                inputs = origin.get("inputs") or []
                candidates = [link[1]] + list(range(len(inputs)))
                nxt = None
                for s in candidates:
                    if s < len(inputs) and inputs[s].get("type") == want_type:
                        nxt = input_link(origin, s)
                        break
                link = nxt
                continue
            return str(link[0]), link[1]
        return None

    prompt = {}
    for nid, node in sorted(nodes.items()):
        ntype = node.get("type")
        if ntype in VIRTUAL_NODES or node.get("mode", 0) in (MODE_MUTED, MODE_BYPASSED):
            continue
        node_def = object_info.get(ntype)
        if node_def is None:
            raise WorkflowError(f"node {nid}: type '{ntype}' is not known to the server "
                                f"(a custom node that is not installed or failed to import?)")
        inputs = dict(widget_values(node, node_def))
        for inp in node.get("inputs") or []:
            if inp.get("link") is None:
                continue
            src = resolve(inp["link"], inp.get("type"))
            if src is not None:
                inputs[inp["name"]] = [src[0], src[1]]
            # else: fed by a PrimitiveNode (its value is in the widget), a muted node or a
            # dangling Reroute: a widget keeps its own value, a socket stays unset
        title = node.get("title") or node_def.get("display_name") or ntype
        prompt[str(nid)] = {"class_type": ntype, "inputs": inputs, "_meta": {"title": title}}
    return prompt


def load_workflow(path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def parse_override(text: str) -> tuple[str, str, object]:
    """"NODE.input=value" -> (NODE, input, value); value is JSON if it parses, else the text."""
    if "=" not in text:
        raise ValueError(f"override '{text}': expected NODE.INPUT=VALUE")
    key, raw = text.split("=", 1)
    if "." not in key:
        raise ValueError(f"override '{text}': expected NODE.INPUT=VALUE (NODE is a node id, title or class)")
    node, name = key.rsplit(".", 1)
    node, name = node.strip(), name.strip()
    if not node or not name:
        raise ValueError(f"override '{text}': empty node or input name")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return node, name, value


def _all_input_names(specs: list[InputSpec]) -> set[str]:
    """Every input name a schema can have, dynamic-combo options' inputs (dotted) included."""
    names = set()
    for spec in specs:
        names.add(spec.name)
        if spec.is_dynamic_combo:
            for key in spec.choices():
                names |= _all_input_names(spec.option_inputs(key))
    return names


def input_names(node_def: dict) -> set[str]:
    """Every input name a node definition can be sent, dynamic-combo options' inputs (dotted) included."""
    return _all_input_names(input_specs(node_def))


def _find_nodes(prompt: dict, node: str) -> list[str]:
    """Ids of the nodes ``node`` names: by id, else by title, else by class type."""
    targets = [nid for nid in prompt if nid == node]
    if not targets:
        targets = [nid for nid, n in prompt.items() if (n.get("_meta") or {}).get("title") == node]
    if not targets:
        targets = [nid for nid, n in prompt.items() if n.get("class_type") == node]
    return targets


def apply_overrides(prompt: dict, overrides: Iterable[str], object_info: dict | None = None) -> dict:
    """Return a copy of ``prompt`` with each "NODE.input=value" applied.

    NODE is matched against node ids first, then titles (``_meta.title``), then class types;
    every node of the first kind that matches is changed. An input name may itself hold dots
    (a dynamic combo's inputs, "SaveVideo.format.codec=h264"): when no node is named by all
    but the last part, the node name is tried shorter. Raises ValueError if no node matches,
    or if a matched node has no such input.
    """
    prompt = copy.deepcopy(prompt)
    for text in overrides:
        node, name, value = parse_override(text)
        targets = _find_nodes(prompt, node)
        while not targets and "." in node:
            node, rest = node.rsplit(".", 1)
            name = f"{rest}.{name}"
            targets = _find_nodes(prompt, node)
        if not targets:
            node = parse_override(text)[0]
            known = ", ".join(f"{nid} ({n.get('class_type')}, '{(n.get('_meta') or {}).get('title', '')}')"
                              for nid, n in prompt.items())
            raise ValueError(f"override '{text}': no node has id, title or class '{node}'; nodes: {known}")
        for nid in targets:
            n = prompt[nid]
            allowed = set(n["inputs"])
            if object_info and n["class_type"] in object_info:
                allowed |= input_names(object_info[n["class_type"]])
            if name not in allowed:
                raise ValueError(f"override '{text}': node {nid} ({n['class_type']}) has no input '{name}'; "
                                 f"its inputs: {', '.join(sorted(allowed))}")
            n["inputs"][name] = value
    return prompt

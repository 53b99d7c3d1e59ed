"""UI-format workflows (what the canvas saves) -> API prompts (what POST /prompt takes).

``to_api(workflow, object_info)`` does what the frontend's graphToPrompt does for the
workflows this pack ships, using the node definitions from ``GET /object_info``:

- ``widgets_values`` are mapped, in order, onto the inputs object_info lists as widgets
  (``input_order`` required then optional; INT/FLOAT/STRING/BOOLEAN/COMBO, not forceInput).
  A widget fed by a link still holds a value in the list; it is consumed and the link wins.
- After an INT widget with ``control_after_generate`` (V3/object_info option; legacy: an INT
  named seed/noise_seed) the frontend stores the control value ("fixed", "randomize", ...);
  it is skipped. A media combo with an upload button (``image_upload``/``video_upload``...)
  stores the button's value ("image") after the required widgets; it is skipped too.
- Nodes without a backend class (Note, MarkdownNote, Reroute, PrimitiveNode) are left out:
  Reroutes are followed through, a PrimitiveNode's value is already in its target's widget.
- Muted nodes (mode 2) are left out, with the links from them; bypassed nodes (mode 4) are
  left out and their consumers are connected to the bypassed node's input of the same type.

``apply_overrides(prompt, ["NODE.input=value", ...])`` sets inputs by node id, title or class.
"""
from __future__ import annotations

import copy
import json
from typing import Iterable

VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
LEGACY_SEED_NAMES = {"seed", "noise_seed"}
UPLOAD_VALUES = {"image", "video", "audio", "upload", "animated_image"}
MODE_MUTED, MODE_BYPASSED = 2, 4


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


def _input_specs(node_def: dict) -> list[tuple[str, object, dict, bool]]:
    """[(name, type, options, required)] in the order the frontend creates them."""
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
            specs.append((name, typ, opts, section == "required"))
    return specs


def _is_widget(typ, opts: dict, ui_widget_names: set[str], name: str) -> bool:
    if opts.get("forceInput"):
        return False
    if isinstance(typ, list) or typ in WIDGET_TYPES:
        return True
    return name in ui_widget_names  # a custom widget type the UI node declares


def _is_upload_combo(typ, opts: dict) -> bool:
    return (isinstance(typ, list) or typ == "COMBO") and any(
        k.endswith("_upload") and v for k, v in opts.items())


def _has_control(name: str, typ, opts: dict) -> bool:
    if "control_after_generate" in opts:
        return bool(opts["control_after_generate"])
    return typ == "INT" and name in LEGACY_SEED_NAMES


def widget_values(node: dict, node_def: dict) -> dict[str, object]:
    """The widget inputs of a UI node, by name, from its ``widgets_values``."""
    values = node.get("widgets_values")
    ui_widget_names = {i["name"] for i in node.get("inputs") or [] if i.get("widget")}
    specs = [s for s in _input_specs(node_def) if _is_widget(s[1], s[2], ui_widget_names, s[0])]
    if values is None:
        return {}
    if isinstance(values, dict):  # some packs save widgets by name
        return {name: values[name] for name, *_ in specs if name in values}
    values = list(values)
    out = {}
    pos = 0
    last_required = max((i for i, s in enumerate(specs) if s[3]), default=-1)
    upload = any(_is_upload_combo(s[1], s[2]) for s in specs)
    for i, (name, typ, opts, _required) in enumerate(specs):
        if pos >= len(values):
            break
        out[name] = values[pos]
        pos += 1
        if _has_control(name, typ, opts) and pos < len(values) and values[pos] in CONTROL_VALUES:
            pos += 1
        if upload and i == last_required and pos < len(values) and values[pos] in UPLOAD_VALUES:
            pos += 1
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


def apply_overrides(prompt: dict, overrides: Iterable[str], object_info: dict | None = None) -> dict:
    """Return a copy of ``prompt`` with each "NODE.input=value" applied.

    NODE is matched against node ids first, then titles (``_meta.title``), then class types;
    every node of the first kind that matches is changed. Raises ValueError if no node
    matches, or if a matched node has no such input.
    """
    prompt = copy.deepcopy(prompt)
    for text in overrides:
        node, name, value = parse_override(text)
        targets = [nid for nid in prompt if nid == node]
        if not targets:
            targets = [nid for nid, n in prompt.items() if (n.get("_meta") or {}).get("title") == node]
        if not targets:
            targets = [nid for nid, n in prompt.items() if n.get("class_type") == node]
        if not targets:
            known = ", ".join(f"{nid} ({n.get('class_type')}, '{(n.get('_meta') or {}).get('title', '')}')"
                              for nid, n in prompt.items())
            raise ValueError(f"override '{text}': no node has id, title or class '{node}'; nodes: {known}")
        for nid in targets:
            n = prompt[nid]
            allowed = set(n["inputs"])
            if object_info and n["class_type"] in object_info:
                allowed |= {s[0] for s in _input_specs(object_info[n["class_type"]])}
            if name not in allowed:
                raise ValueError(f"override '{text}': node {nid} ({n['class_type']}) has no input '{name}'; "
                                 f"its inputs: {', '.join(sorted(allowed))}")
            n["inputs"][name] = value
    return prompt

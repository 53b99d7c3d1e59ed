"""Every node of the pack: one category root, a description, a tooltip on every input."""
from __future__ import annotations


def _our_nodes(comfy):
    return {k: v for k, v in comfy.node_classes.items() if k.startswith("VideoEdit")}


def test_pack_loads_through_comfy_entrypoint(comfy):
    ours = _our_nodes(comfy)
    assert {"VideoEditTAESDEncode", "VideoEditTAESDDecode"} <= set(ours)


def test_categories_descriptions_tooltips(comfy):
    problems = []
    for node_id, cls in _our_nodes(comfy).items():
        if not cls.CATEGORY.startswith("video edit/"):
            problems.append(f"{node_id}: category {cls.CATEGORY!r} is not under 'video edit/'")
        if not (getattr(cls, "DESCRIPTION", "") or "").strip():
            problems.append(f"{node_id}: no description")
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for name, entry in spec.get(section, {}).items():
                opts = entry[1] if len(entry) > 1 else {}
                if not (opts.get("tooltip") or "").strip():
                    problems.append(f"{node_id}.{name}: no tooltip")
    assert not problems, "\n".join(problems)

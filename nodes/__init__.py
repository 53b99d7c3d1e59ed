"""Node families of ComfyUI-VideoEdit.

Each family keeps its math in a pure-torch module (no ComfyUI import) and its ComfyUI glue
in a thin ``nodes_<family>.py``; ``registry.py`` lists the glue modules' nodes.
"""

"""Node families of ComfyUI-VideoEdit, one package each (``taesd``, ``tokenflow``, ``movie``,
``eve``) over two shared packages: ``core`` (pure code) and ``host`` (ComfyUI-bound code).
In a family, ``<name>.py`` is pure math, ``engine_<name>.py`` ComfyUI-bound work and
``nodes_<name>.py`` V3 nodes; ``registry.py`` collects the nodes (see DEVELOPERS.md).
"""

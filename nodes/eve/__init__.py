"""EVE (plug-and-play video editing, alignment by Factorized Diffusion Distillation): an image-edit
adapter (ControlNet) and a video adapter (temporal layers) on one frozen backbone, aligned by a
LoRA. Pure math: ``temporal_adapter.py``, ``windows.py``, ``align.py``, ``dino_features.py``;
engines ``engine_*.py``; nodes ``nodes_eve.py`` and ``nodes_eve_align.py``."""

CATEGORY = "video edit/EVE"

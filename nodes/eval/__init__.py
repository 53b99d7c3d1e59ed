"""Evaluate an edit the way the papers do: warp error (temporal consistency) and CLIP scores.

Pure math (no ComfyUI import): ``warp_error`` (the metric and its occlusion mask), ``raft``
(torchvision's RAFT from a local file, never downloaded), ``clip_score`` (cosine scores and which
CLIP towers share an embedding space). ComfyUI-bound: ``engine_flow`` (model folders, device,
progress/cancel for the warp error), ``engine_clip`` (running ComfyUI's CLIP vision/text models).
``nodes_eval`` holds the V3 nodes.
"""

CATEGORY = "video edit/Evaluate"

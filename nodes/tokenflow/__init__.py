"""TokenFlow (training-free video editing): DDIM inversion (``ddim.py``), keyframes and token
propagation (``propagation.py``), the keyframe token store; engines patch and sample a ComfyUI
model; ``nodes_tokenflow.py`` holds the nodes."""

CATEGORY = "video edit/TokenFlow"

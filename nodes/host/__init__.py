"""Shared ComfyUI-bound code of the pack (may import ComfyUI and ``core``, never a family):
model-family checks, model folders, the one way to attach pack data to a MODEL, text/image
encoding for trainers, the trainer nodes' shared inputs and the live-chart runner."""

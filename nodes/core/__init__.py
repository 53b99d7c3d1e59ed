"""Shared pure code of the pack (no ComfyUI import, nothing from ``host`` or a family): frame
chunks, atomic files, the trainer loop with its checkpoints, DDP helpers and loss curve, the
distillation losses of EVE and MoViE, weight deltas and the sinusoidal embedding."""

"""What kind of model a MODEL input is (ComfyUI-bound): its UNet, the family fields an adapter
must match, and the InstructPix2Pix check with the error that names the input and the fix."""
from __future__ import annotations


def unet_of(model):
    return model.get_model_object("diffusion_model")


def model_family(model) -> dict:
    """What an adapter must match: the model class and the UNet's shape."""
    u = unet_of(model)
    return {"model": type(model.model).__name__, "in_channels": int(u.in_channels),
            "model_channels": int(u.model_channels), "out_channels": int(u.out_channels),
            "channel_mult": list(u.channel_mult),
            "context_dim": int(model.model.model_config.unet_config.get("context_dim") or 0)}


def require_ip2p(model, input_name: str = "model") -> None:
    c = int(unet_of(model).in_channels)
    if c != 8:
        raise ValueError(
            f"{input_name}: not an InstructPix2Pix model: its UNet takes {c} input channels, an "
            "InstructPix2Pix UNet takes 8 (4 noisy + 4 source-image latent channels). Load an "
            "InstructPix2Pix checkpoint (e.g. instruct-pix2pix-00-22000.safetensors) with Load Checkpoint.")

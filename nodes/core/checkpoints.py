"""Training checkpoints as one safetensors file (pure torch + safetensors, no ComfyUI import):
the trainable tensors, the optimizer state, the RNG state and the loss history, no pickle, so a
resumed run continues exactly where the checkpoint was written."""
from __future__ import annotations

import json
import os

import torch

from .atomic_file import atomic_save_safetensors
from .weight_files import read_metadata, read_weights


def _fix(path: str) -> str:
    return f"set resume to false to start the run over, or delete {path}"


def capture_state(step: int, params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                  losses: list[float], config: dict) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Everything a resumed run needs, as (tensors, string metadata)."""
    tensors = {f"param.{k}": v.detach().clone().cpu() for k, v in params.items()}
    osd = optimizer.state_dict()
    scalars = {}
    for idx, st in osd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{idx}.{k}"] = v.detach().clone().cpu()
            else:
                scalars[f"{idx}.{k}"] = v
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"step": str(step), "losses": json.dumps(losses), "config": json.dumps(config, sort_keys=True),
            "param_groups": json.dumps(osd["param_groups"]), "opt_scalars": json.dumps(scalars),
            "param_names": json.dumps(list(params))}
    return tensors, meta


def save_checkpoint(path: str, step: int, params, optimizer, losses, config) -> None:
    tensors, meta = capture_state(step, params, optimizer, losses, config)
    atomic_save_safetensors(tensors, path, meta)


def load_checkpoint(path: str, params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                    config: dict | None = None) -> tuple[int, list[float]]:
    """Restore params (in place), optimizer and RNG; return (step, losses)."""
    tensors, meta = read_weights(path, "resume", _fix(path))
    if config is not None and "config" in meta:
        saved = json.loads(meta["config"])
        diff = [k for k in sorted(set(saved) | set(config)) if saved.get(k) != config.get(k)]
        if diff:
            raise ValueError(f"checkpoint {os.path.basename(path)} was written with different settings "
                             f"({', '.join(f'{k}: {saved.get(k)!r} vs {config.get(k)!r}' for k in diff)}); "
                             "use the same settings to resume, or another output name to start over")
    try:
        names = json.loads(meta["param_names"])
    except (KeyError, ValueError):
        raise ValueError(f"resume: {path} is not a checkpoint of the pack's trainers; {_fix(path)}") from None
    if names != list(params):
        raise ValueError(f"checkpoint {os.path.basename(path)} holds other parameters than this run")
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(tensors[f"param.{k}"])
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, idx, k = key.split(".", 2)
            state.setdefault(int(idx), {})[k] = v
    for key, v in json.loads(meta["opt_scalars"]).items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    torch.set_rng_state(tensors["rng.torch"])
    return int(meta["step"]), json.loads(meta["losses"])


def checkpoint_step(path: str) -> int:
    """The step a checkpoint file was written at (0 when there is none)."""
    if not os.path.exists(path):
        return 0
    step = read_metadata(path, "resume", _fix(path)).get("step", "0")
    if not step.isdigit():
        raise ValueError(f"resume: {path} has a corrupt step ({step!r}); {_fix(path)}")
    return int(step)


def checkpoint_config(path: str) -> dict:
    """The settings record a checkpoint was written with ({} when it holds none)."""
    return json.loads(read_metadata(path, "resume", _fix(path)).get("config", "{}"))

"""The base class of every node of the pack: before a node's ``execute`` runs, its inputs are
checked against the node's own schema, so a bad value stops with a message that names the input
and the fix instead of turning into a black video, a ``KeyError`` or a raw library error.

Checked, by the schema's input types:
- FLOAT: a finite number (a NaN passes ComfyUI's own min/max check, in 0.3.75 and current core;
  the range itself stays ComfyUI's to check, as it does for widget values);
- COMBO: one of the listed options (ComfyUI 0.3.75 does not validate V3 combo values, current
  ComfyUI validates only those typed into a widget). An input the node's own ``validate_inputs``
  takes is that node's to check, as ComfyUI itself does;
- IMAGE / LATENT: at least one frame, every value finite (frame by frame, in chunks);
- CONDITIONING / SIGMAS: every tensor finite.

Why at ``execute`` and not in a ``validate_inputs`` of this base class: a linked input (frames,
latents, a number from another node) has no value at validation time, so the check must run at
execution anyway; a base-class ``validate_inputs`` would have to take ``**kwargs``, which turns
off ComfyUI's own min/max/combo validation of every input and reports one failure per widget;
and a rerun after the fix loses nothing, since ComfyUI caches the upstream nodes' outputs.
"""
from __future__ import annotations

import functools
import inspect
import math

import torch

from comfy_api.v0_0_2 import io

from ..core.tensor_checks import first_non_finite

_WRAPPED = "_videoedit_checks_inputs"
_SHOWN_OPTIONS = 12


class CheckedNode(io.ComfyNode):
    """A V3 node whose ``execute`` first runs ``check_inputs`` (every node of the pack derives from it)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("execute")
        func = getattr(own, "__func__", None)
        # ComfyUI runs each prompt on a shallow clone of the class, whose execute is already ours
        if func is None or getattr(func, _WRAPPED, False):
            return
        if inspect.iscoroutinefunction(func):
            raise TypeError(f"{cls.__name__}.execute: CheckedNode wraps synchronous execute methods only")
        signature = inspect.signature(func)

        @functools.wraps(func)
        def execute(node_cls, *args, **kw):
            bound = signature.bind_partial(node_cls, *args, **kw)
            check_inputs(node_cls, dict(list(bound.arguments.items())[1:]))
            return func(node_cls, *args, **kw)

        setattr(execute, _WRAPPED, True)
        cls.execute = classmethod(execute)


def check_inputs(node_cls, values: dict) -> None:
    """ValueError naming the input and the fix for the first bad value in ``values`` (input id ->
    value; an unconnected optional input is absent or None)."""
    own = _own_validated(node_cls)
    for inp in node_cls.define_schema().inputs:
        value = values.get(inp.id)
        if value is None:
            continue
        check = _CHECKS.get(inp.get_io_type())
        if check is not None and not (inp.get_io_type() == "COMBO" and inp.id in own):
            check(inp, value)


def _own_validated(node_cls) -> set[str]:
    """The inputs the node's own ``validate_inputs`` (if it defines one) takes."""
    fn = getattr(node_cls, "validate_inputs", None)
    base = getattr(io.ComfyNode, "validate_inputs", None)
    if fn is None or getattr(fn, "__func__", fn) is getattr(base, "__func__", base):
        return set()
    return set(inspect.getfullargspec(fn).args)


def _number(x) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _range_text(inp) -> str:
    low = "-inf" if inp.min is None else _number(inp.min)
    high = "inf" if inp.max is None else _number(inp.max)
    default = "" if inp.default is None else f" (default {_number(inp.default)})"
    return f"between {low} and {high}{default}"


def _check_number(inp, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{inp.id}: got {value!r}, not a number; set a number {_range_text(inp)}")
    if not math.isfinite(value):
        raise ValueError(f"{inp.id}: {value} is not a finite number; set a number {_range_text(inp)}")


def _check_combo(inp, value) -> None:
    options = list(inp.options or [])
    if value in options:
        return
    shown = ", ".join(repr(o) for o in options[:_SHOWN_OPTIONS]) + (
        f" and {len(options) - _SHOWN_OPTIONS} more" if len(options) > _SHOWN_OPTIONS else "")
    raise ValueError(f"{inp.id}: {value!r} is not one of its options ({shown or 'none listed'}); pick one from "
                     "the node's list (after adding a file, refresh the list: press R on the canvas)")


def _bad_values(inp, where: str) -> ValueError:
    return ValueError(
        f"{inp.id}: {where} holds NaN or infinite values, which would come out as a black or broken video; "
        f"they come from the node that feeds '{inp.id}' (e.g. a model or VAE that overflowed in float16, a value "
        "typed as NaN, or a damaged file): fix that node or its settings (e.g. run it in float32) and queue again")


def _check_frames(inp, frames) -> None:
    if not isinstance(frames, torch.Tensor):
        return
    if frames.ndim == 0 or frames.shape[0] == 0:
        raise ValueError(f"{inp.id}: the clip has zero frames; connect frames of a video with at least one frame "
                         "(a Load Video that read nothing, or a batch slice that selected none, gives zero)")
    bad = first_non_finite(frames)
    if bad is not None:
        raise _bad_values(inp, f"frame {bad} of {frames.shape[0]}")


def _check_latent(inp, latent) -> None:
    if not isinstance(latent, dict):
        return
    _check_frames(inp, latent.get("samples"))
    for key, value in latent.items():
        if key != "samples" and isinstance(value, torch.Tensor) and first_non_finite(value) is not None:
            raise _bad_values(inp, f"the latent's '{key}'")


def _check_conditioning(inp, conditioning) -> None:
    for i, entry in enumerate(conditioning or []):
        tensors = [("the text embedding", entry[0])]
        if len(entry) > 1 and isinstance(entry[1], dict):
            tensors += [(f"'{k}'", v) for k, v in entry[1].items()]
        for what, t in tensors:
            if isinstance(t, torch.Tensor) and first_non_finite(t) is not None:
                raise _bad_values(inp, f"{what} of conditioning {i}")


def _check_sigmas(inp, sigmas) -> None:
    bad = first_non_finite(sigmas) if isinstance(sigmas, torch.Tensor) else None
    if bad is not None:
        raise _bad_values(inp, f"sigma {bad}")


_CHECKS = {"FLOAT": _check_number, "COMBO": _check_combo, "IMAGE": _check_frames,
           "LATENT": _check_latent, "CONDITIONING": _check_conditioning,
           "SIGMAS": _check_sigmas}

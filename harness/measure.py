"""Measuring tools for the benchmarks: FLOPs with CPU attention counted, timing, peak RSS.

See ../shared/MEASURING.md: torch's FlopCounterMode counts CPU attention
(``aten._scaled_dot_product_flash_attention_for_cpu``) as 0, so we map it to the same
formula torch uses for the CUDA flash-attention op; without it the UNet's attention and the
VAE's mid-block attention vanish from the count.
"""
from __future__ import annotations

import resource
import statistics
import time
from contextlib import contextmanager

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

aten = torch.ops.aten


def _cpu_flash_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Same count as torch's formula for the CUDA flash-attention op (QK^T and PV)."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


CPU_ATTENTION_FLOPS = {aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flops}


def count_flops(fn, *args, **kwargs) -> tuple[int, object]:
    """Total FLOPs of ``fn(*args, **kwargs)`` (CPU attention included) and its result."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        out = fn(*args, **kwargs)
    return counter.get_total_flops(), out


def peak_live_bytes(fn, *args, **kwargs) -> tuple[int, object]:
    """Peak bytes of the tensors ``fn`` allocates and holds at once (its own working memory, on
    any device), and its result. Every storage an op creates (not one of its inputs': views and
    in-place results are no allocation) counts from its creation until Python frees it; the
    storages of tensors that existed before the call are not counted."""
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    live = {"now": 0, "peak": 0}

    def storages(tree):
        return [t.untyped_storage() for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]

    def freed(nbytes):
        live["now"] -= nbytes

    class Tracker(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            seen = {s.data_ptr() for s in storages((args, kwargs))}
            for st in storages(out):
                if st.data_ptr() in seen or st.nbytes() == 0:
                    continue
                seen.add(st.data_ptr())
                live["now"] += st.nbytes()
                weakref.finalize(st, freed, st.nbytes())
            live["peak"] = max(live["peak"], live["now"])
            return out

    with Tracker():
        result = fn(*args, **kwargs)
    return live["peak"], result


def median_seconds(fn, repeats: int = 3, warmup: int = 0) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs (after ``warmup`` untimed runs)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@contextmanager
def no_grad():
    with torch.inference_mode():
        yield


def fmt_flops(flops: float) -> str:
    for unit, scale in (("TFLOPs", 1e12), ("GFLOPs", 1e9), ("MFLOPs", 1e6)):
        if flops >= scale:
            return f"{flops / scale:.1f} {unit}"
    return f"{flops:.0f} FLOPs"


def print_table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"
    text = "\n".join([f"\n### {title}\n", line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *map(line, rows)])
    print(text, flush=True)
    return text

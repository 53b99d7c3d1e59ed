"""Where a TokenFlow step keeps its keyframe tokens: on the compute device, in CPU memory, or
in an anonymous temporary file. Pure torch + the standard library, no ComfyUI import.

Why: every chunk of a step reads the tokens of its adjacent keyframes (Eq. 5-7), so the
keyframe pass has to keep, per self-attention layer, all keyframes' source tokens and their
edited outputs per cond/uncond until the last chunk has run. That is ~35 MB per keyframe at
256^2 on SD1.5 (~140 MB at 512^2) and there is one keyframe per 8 frames, so on a long clip
this store, not the chunk being denoised, sets the peak. Written to a file, it costs the
process nothing while a chunk runs; a chunk reads back only the rows (keyframes) it needs,
a few per chunk. The file is unlinked the moment it is created (``tempfile.TemporaryFile``),
so a cancelled or crashed run leaves nothing on disk.

A store holds named tensors whose first dimension is the keyframe; ``rows(name, index)``
returns the selected keyframes, ``get(name)`` all of them, on ``device``.
"""
from __future__ import annotations

import math
import os
import tempfile

import torch

PLACES = ("device", "cpu", "disk")


class TokenStore:
    """Named [K, ...] tensors kept on ``place``: "device" (as given, no copy), "cpu" (offloaded
    to CPU memory) or "disk" (a temp file in ``folder``, default the system temp folder)."""

    def __init__(self, place: str = "device", folder: str | None = None):
        if place not in PLACES:
            raise ValueError(f"token store: place must be one of {PLACES}, got '{place}'")
        self.place = place
        self._folder = folder
        self._file = None
        self._end = 0  # bytes written since the last clear
        self._items: dict = {}  # name -> tensor (device/cpu) or (offset, shape, dtype, device)

    # ---------------------------------------------------------------- writing
    def put(self, name, tensor: torch.Tensor) -> None:
        t = tensor.detach()
        if self.place == "device":
            self._items[name] = t
        elif self.place == "cpu":
            self._items[name] = (t.to("cpu", copy=True), t.device)
        else:
            raw = memoryview(t.to("cpu").contiguous().view(-1).view(torch.uint8).numpy())
            fd = self._open().fileno()
            done = 0
            while done < raw.nbytes:  # appends; nothing reads past _end
                done += os.pwrite(fd, raw[done:], self._end + done)
            self._items[name] = (self._end, tuple(t.shape), t.dtype, t.device)
            self._end += raw.nbytes

    def _open(self):
        if self._file is None:
            if self._folder:
                os.makedirs(self._folder, exist_ok=True)
            self._file = tempfile.TemporaryFile(prefix="videoedit_tokens_", dir=self._folder)
        return self._file

    # ---------------------------------------------------------------- reading
    def __contains__(self, name) -> bool:
        return name in self._items

    def get(self, name) -> torch.Tensor:
        item = self._items[name]
        if self.place == "device":
            return item
        if self.place == "cpu":
            return item[0].to(item[1])
        return self._read(item, None)

    def rows(self, name, index: torch.Tensor) -> torch.Tensor:
        """``tensor[index]`` for a 1-D LongTensor ``index``; from disk only those rows are read."""
        item = self._items[name]
        if self.place == "device":
            return item[index.to(item.device)]
        if self.place == "cpu":
            return item[0][index.cpu()].to(item[1])
        return self._read(item, index)

    def _read(self, item, index):
        offset, shape, dtype, device = item
        row_bytes = math.prod(shape[1:]) * torch.empty((), dtype=dtype).element_size()
        picks = range(shape[0]) if index is None else [int(i) for i in index]
        out = torch.empty((len(picks), *shape[1:]), dtype=dtype)
        buf = out.view(-1).view(torch.uint8).numpy()
        fd = self._file.fileno()
        for j, r in enumerate(picks):
            if not 0 <= r < shape[0]:
                raise IndexError(f"token store: row {r} out of range for {shape[0]} keyframes")
            view = memoryview(buf)[j * row_bytes:(j + 1) * row_bytes]
            got = os.preadv(fd, [view], offset + r * row_bytes)
            if got != row_bytes:
                raise OSError(f"token store: short read ({got} of {row_bytes} bytes) from the temp file")
        return out.to(device)

    # ---------------------------------------------------------------- lifetime
    @property
    def nbytes(self) -> int:
        """Bytes held (in memory, or written to the file) since the last clear."""
        if self.place == "disk":
            return self._end
        tensors = [v if self.place == "device" else v[0] for v in self._items.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def clear(self) -> None:
        """Forget everything (the next step writes over the file from its start)."""
        self._items.clear()
        self._end = 0

    def close(self) -> None:
        self.clear()
        if self._file is not None:
            self._file.close()  # already unlinked: closing frees its blocks
            self._file = None


def choose_place(setting: str, num_frames: int, frames_per_chunk: int, device: torch.device) -> str:
    """The node's ``keyframe_store`` setting -> a ``TokenStore`` place.

    "auto": a clip that fits one chunk keeps its few keyframes where it computes; a longer clip
    offloads them (to CPU memory from a GPU, to a temp file when the CPU computes, since there
    the RAM is the memory being saved).
    """
    if setting == "memory":
        return "device"
    if setting == "disk":
        return "disk"
    if setting != "auto":
        raise ValueError(f"keyframe_store: expected auto, memory or disk, got '{setting}'")
    if num_frames <= frames_per_chunk:
        return "device"
    return "disk" if torch.device(device).type == "cpu" else "cpu"

"""The sample clip: a real photograph panned by known integer shifts per frame.

``panned_frames`` crops a moving window out of scikit-image's bundled ``astronaut`` photo
(512x512, public domain, shipped inside the package; nothing is downloaded). The window
moves by ``shift = (dx, dy)`` pixels per frame, so for every frame ``i``::

    frames[i][r, c] == frames[0][r + i*dy, c + i*dx]     (where both are inside the frame)

i.e. the content moves by (-dx, -dy) per frame; tests measure temporal consistency against
this known motion. ``write_mp4`` writes frames with PyAV (h264 if available, else mpeg4),
atomically.

``python -m harness.sample_clip OUT.mp4 [--frames N] [--size S] [--fps F]`` writes one.
"""
from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from .pack import import_pack

import_pack()
from videoedit.nodes.core.atomic_file import atomic_path  # noqa: E402

# where the window starts (top-left) when there is room: the astronaut's face and badge
_PREFERRED_ORIGIN = (140, 60)  # (x, y)


def source_image(name: str = "astronaut") -> np.ndarray:
    """A photograph bundled with scikit-image, uint8 [H, W, 3]."""
    from skimage import data
    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3])


def panned_frames(num_frames: int, size=64, shift=(2, 1), image: str = "astronaut"):
    """Frames [F, H, W, 3] float32 in 0..1 and the per-frame window offsets [F, 2] (x, y).

    ``size`` is an int (square) or (height, width); ``shift`` is (dx, dy) pixels per frame.
    ``offsets[i] == (i*dx, i*dy)``: where frame i's window sits relative to frame 0's.
    """
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    dx, dy = int(shift[0]), int(shift[1])
    if num_frames < 1 or h < 1 or w < 1:
        raise ValueError(f"need at least one frame of at least 1x1 pixels, got {num_frames} frames of {w}x{h}")
    img = source_image(image)
    ih, iw = img.shape[:2]
    span_x, span_y = (num_frames - 1) * dx, (num_frames - 1) * dy
    need_w, need_h = w + abs(span_x), h + abs(span_y)
    if need_w > iw or need_h > ih:
        raise ValueError(f"a {w}x{h} window panned by ({dx}, {dy}) for {num_frames} frames needs "
                         f"{need_w}x{need_h} pixels; the '{image}' photo has {iw}x{ih}")
    # start so that the whole pan stays inside the photo
    x0 = min(max(_PREFERRED_ORIGIN[0], -min(span_x, 0)), iw - w - max(span_x, 0))
    y0 = min(max(_PREFERRED_ORIGIN[1], -min(span_y, 0)), ih - h - max(span_y, 0))
    frames = np.stack([img[y0 + i * dy: y0 + i * dy + h, x0 + i * dx: x0 + i * dx + w]
                       for i in range(num_frames)])
    offsets = torch.tensor([[i * dx, i * dy] for i in range(num_frames)], dtype=torch.int64)
    return torch.from_numpy(frames).float() / 255.0, offsets


def _codec() -> str:
    import av
    for name in ("libx264", "h264", "mpeg4"):
        if name in av.codecs_available:
            try:
                av.codec.Codec(name, "w")
                return name
            except Exception:  # decoder-only build
                continue
    raise RuntimeError("PyAV has neither an h264 nor an mpeg4 encoder")


def write_mp4(frames: torch.Tensor, path, fps: float = 8, crf: int = 12) -> Path:
    """Write [F, H, W, 3] frames in 0..1 to an mp4 (yuv420p), atomically."""
    import av
    frames = torch.as_tensor(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames: expected [frames, height, width, 3], got {list(frames.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (frames.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    h, w = arr.shape[1:3]
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p video needs even width and height, got {w}x{h}")
    with atomic_path(path) as tmp:
        codec = _codec()
        with av.open(tmp, mode="w", format="mp4") as out:
            stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            if codec in ("libx264", "h264"):
                stream.options = {"crf": str(crf), "preset": "medium"}
            else:
                stream.bit_rate = 8_000_000
            for frame in arr:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
    return path


def read_video(path) -> tuple[torch.Tensor, float]:
    """Decode a video file to [F, H, W, 3] float frames in 0..1 and its frame rate."""
    import av
    with av.open(str(path)) as f:
        stream = f.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or 0)
        frames = [fr.to_ndarray(format="rgb24") for fr in f.decode(stream)]
    if not frames:
        return torch.zeros(0, 0, 0, 3), rate
    return torch.from_numpy(np.stack(frames)).float() / 255.0, rate


def main() -> None:
    ap = argparse.ArgumentParser(description="Write the panned sample clip.")
    ap.add_argument("out", type=Path)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--fps", type=float, default=8)
    ap.add_argument("--shift", type=int, nargs=2, default=(2, 1), metavar=("DX", "DY"))
    a = ap.parse_args()
    frames, _ = panned_frames(a.frames, a.size, tuple(a.shift))
    print(write_mp4(frames, a.out, a.fps))


if __name__ == "__main__":
    main()

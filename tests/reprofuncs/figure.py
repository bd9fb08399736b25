"""A pipeline that renders a figure as a PNG, for the reproduce tests:
``python figure.py STORE [--image IMAGE] [--noisy]`` prints one JSON line with the keys.

Inside a container this module is imported by its file name with only the ``hither``
stand-in: numpy and the standard library are imported inside the function bodies.
"""

import hither as hi


def _png(pixels):
    """A greyscale 8-bit PNG of a 2-D uint8 array (zlib + CRC chunks, no dependency)."""
    import struct
    import zlib

    h, w = pixels.shape
    raw = b"".join(b"\x00" + pixels[i].tobytes() for i in range(h))

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


@hi.function("repro_signal", "1")
def repro_signal(n, freq):
    import numpy as np

    t = np.linspace(0.0, 1.0, n)
    return np.sin(2 * np.pi * freq * t)


@hi.function("repro_noise", "1")
def repro_noise(n):
    """Not deterministic: a different array on every run."""
    import numpy as np

    return np.random.default_rng().normal(size=n)


@hi.function("repro_render", "1")
def repro_render(signals, height):
    import os

    import numpy as np

    img = np.zeros((height * len(signals), len(signals[0])), dtype=np.uint8)
    for k, s in enumerate(signals):
        rows = ((1 - (np.clip(s, -1, 1) + 1) / 2) * (height - 1)).round().astype(int)
        img[k * height + rows, np.arange(len(s))] = 255
    import tempfile

    path = os.path.join(tempfile.mkdtemp(prefix="figure-"), "figure.png")
    with open(path, "wb") as f:
        f.write(_png(img))
    print(f"rendered {img.shape}")
    return hi.File(path)


def run(image=None, noisy=False):
    """The pipeline; returns the keys of the figure job and of its upstream jobs."""
    with hi.Config(container=image or False):
        signals = [repro_signal.run(n=64, freq=f) for f in (1, 2, 3)]
        if noisy:
            signals.append(repro_noise.run(n=64))
        fig = repro_render.run(signals=signals, height=16)
        fig.wait()
    return {"figure": fig.key, "signals": [s.key for s in signals]}


if __name__ == "__main__":
    import argparse
    import json

    p = argparse.ArgumentParser()
    p.add_argument("store")
    p.add_argument("--image")
    p.add_argument("--noisy", action="store_true")
    a = p.parse_args()
    with hi.Config(job_cache=hi.JobCache(path=a.store)):
        print(json.dumps(run(a.image, a.noisy)))

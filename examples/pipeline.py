"""A small cached analysis pipeline: the main example of hither.

Run it twice: the first run computes every step on two local worker processes and stores
each result in the job cache; the second run takes every result from the cache.

    python examples/pipeline.py            # uses $HITHER_STORE or the user cache dir
    python examples/pipeline.py --store /tmp/hither-demo
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import hither as hi


@hi.function("simulate", "0.1.0")
def simulate(seed: int, n: int) -> np.ndarray:
    """A noisy sine recording of n samples."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 20 * np.pi, n)
    return np.sin(t) + 0.3 * rng.standard_normal(n)


@hi.function("smooth", "0.1.0")
def smooth(signal: np.ndarray, width: int) -> np.ndarray:
    """Moving average over `width` samples."""
    kernel = np.ones(width) / width
    return np.convolve(signal, kernel, mode="same")


@hi.function("summarize", "0.1.0")
def summarize(signal: np.ndarray) -> dict:
    print(f"summarizing {signal.size} samples")
    return {"mean": float(signal.mean()), "std": float(signal.std()),
            "peaks": int(np.sum((signal[1:-1] > signal[:-2]) & (signal[1:-1] > signal[2:])))}


@hi.function("combine", "0.1.0")
def combine(summaries: list) -> dict:
    return {"recordings": len(summaries),
            "mean_std": float(np.mean([s["std"] for s in summaries])),
            "total_peaks": sum(s["peaks"] for s in summaries)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="job cache folder (default: $HITHER_STORE or the "
                                        "user cache dir)")
    parser.add_argument("--recordings", type=int, default=8)
    args = parser.parse_args()

    cache = hi.JobCache(path=args.store) if args.store else hi.JobCache()
    t0 = time.perf_counter()
    with hi.ParallelJobHandler(2) as handler, \
            hi.Config(job_handler=handler, job_cache=cache):
        jobs = []
        for seed in range(args.recordings):
            raw = simulate.run(seed=seed, n=200_000)
            smoothed = smooth.run(signal=raw, width=25)
            jobs.append(summarize.run(signal=smoothed))
        total = combine.run(summaries=jobs)
        result = total.wait()
    elapsed = time.perf_counter() - t0

    all_jobs = jobs + [total]
    hits = sum(j.cache_hit for j in all_jobs)
    print("per recording:")
    for seed, j in enumerate(jobs):
        s = j.result()
        print(f"  seed {seed}: mean={s['mean']:+.4f} std={s['std']:.4f} peaks={s['peaks']}")
    print(f"combined: {result}")
    print(f"{len(all_jobs)} final jobs, {hits} from the cache, {elapsed:.2f} s")
    print(f"store: {cache.path}  (inspect it with: hither cache ls --store {cache.path})")
    print(f"result key: {total.key}")


if __name__ == "__main__":
    main()

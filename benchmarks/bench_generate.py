"""Generation and storage benchmark: samples/s, where the time goes, peak memory vs N, random-access reads.

Run::

    python benchmarks/bench_generate.py                       # everything, default sizes
    python benchmarks/bench_generate.py --only generate --sizes 256 512 --num 12
    python benchmarks/bench_generate.py --only memory --mem-small 200 --mem-large 2000
    python benchmarks/bench_generate.py --only read

Figures (all printed as ``name: value`` lines):

* ``generate``: complete samples/s of the full pipeline (sample -> FLAME -> labels -> render -> HDF5 write, all
  modalities) per image size, wall-clock and per CPU-second, with the share of each stage; then the same through
  ``synthforge generate``'s multi-process path (``--workers``, default one per CPU), steady state and with
  start-up. A reference workload (a fixed float32 matmul) is timed in the same process before and after, so a
  figure can be compared across machine loads as a ratio (``samples per reference unit``).
* ``memory``: peak RSS (``VmHWM`` of fresh child processes) for the storage path writing N_small vs
  N_large rows of real 256x256 samples (generated once, written in rotation), and for the full pipeline at a small
  image size for 200 vs 2,000 samples.
* ``read``: random-access reads of 256x256 samples from one process (all fields).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from next3d_gen import h5  # noqa: E402
from next3d_gen.pipeline import SamplePipeline, generate_shard  # noqa: E402
from next3d_gen.sampling import load_config  # noqa: E402

CONFIG = REPO / "configs" / "generate" / "default.yaml"


def reference_seconds(repeats: int = 5) -> float:
    """Seconds of a fixed CPU workload (a 512x512 float32 matmul chain), best of ``repeats``: the load gauge."""
    a = torch.randn(512, 512, generator=torch.Generator().manual_seed(0))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        b = a
        for _ in range(20):
            b = (b @ a).clamp_(-1, 1)
        best = min(best, time.perf_counter() - t)
    return best


class StageTimer:
    """Wraps pipeline stages with wall-clock accumulators."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, obj: object, attr: str, label: str) -> None:
        fn = getattr(obj, attr)

        def timed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - t

        setattr(obj, attr, timed)


def bench_generate(size: int, num: int, workdir: Path) -> dict[str, float]:
    cfg = load_config(CONFIG, {"image_size": size})
    pipe = SamplePipeline(cfg)
    timer = StageTimer()
    timer.wrap(pipe, "params", "sampling")
    timer.wrap(pipe.layer, "forward", "flame")
    timer.wrap(pipe, "labeler", "raster+annotate")
    timer.wrap(pipe.renderer, "render", "render")
    timer.wrap(pipe, "to_record", "to_record")
    orig_write = h5.ShardWriter.write

    def write(self, row, sample):  # noqa: ANN001, ANN202
        t = time.perf_counter()
        try:
            return orig_write(self, row, sample)
        finally:
            timer.seconds["hdf5 write"] += time.perf_counter() - t

    h5.ShardWriter.write = write  # type: ignore[method-assign]
    try:
        pipe.generate(10**6)  # warm-up (lazy caches), not stored
        timer.seconds.clear()
        out = workdir / f"gen{size}.h5"
        ref0 = reference_seconds()
        t, c = time.perf_counter(), time.process_time()
        generate_shard(pipe, str(out), num)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        ref1 = reference_seconds()
    finally:
        h5.ShardWriter.write = orig_write  # type: ignore[method-assign]
    ref = (ref0 + ref1) / 2
    result = {
        "samples_per_s": num / wall,
        "samples_per_cpu_s": num / cpu,
        "samples_per_reference_unit": num / wall * ref,
        "reference_s": ref,
        "file_kb_per_sample": out.stat().st_size / num / 1e3,
    }
    total = sum(timer.seconds.values())
    threads = torch.get_num_threads()
    print(f"generate {size}px: {num} samples in {wall:.1f} s wall, {cpu:.1f} s CPU (torch threads {threads})")
    print(f"generate {size}px samples/s (wall): {result['samples_per_s']:.3f}")
    print(f"generate {size}px samples per CPU-second: {result['samples_per_cpu_s']:.3f}")
    norm = result["samples_per_reference_unit"]
    print(f"generate {size}px samples/s x reference seconds (load-normalised): {norm:.5f}")
    print(f"generate {size}px reference workload: {ref * 1e3:.1f} ms (before {ref0 * 1e3:.1f}, after {ref1 * 1e3:.1f})")
    print(f"generate {size}px file size per sample: {result['file_kb_per_sample']:.0f} KB")
    for label, sec in sorted(timer.seconds.items(), key=lambda kv: -kv[1]):
        print(f"generate {size}px stage {label:16s}: {sec / num * 1e3:8.1f} ms/sample ({100 * sec / total:5.1f}%)")
    return result


def bench_generate_workers(size: int, num: int, workers: int, workdir: Path) -> float:
    """Samples/s of ``synthforge generate``'s multi-process path (``workers`` generator processes, this process
    writing), steady state: from the first written sample to the last, so the one-off start-up of the worker
    processes (spawn, imports, building the head model) is reported separately."""
    cfg = load_config(CONFIG, {"image_size": size})
    pipe = SamplePipeline(cfg)
    stamps: list[tuple[float, int]] = []
    done = 0

    def progress(n: int) -> None:
        nonlocal done
        done += n
        stamps.append((time.perf_counter(), done))

    ref0 = reference_seconds()
    t0 = time.perf_counter()
    generate_shard(pipe, str(workdir / f"gen{size}_w{workers}.h5"), num, progress=progress, workers=workers)
    total = time.perf_counter() - t0
    ref1 = reference_seconds()
    (t_first, n_first), (t_last, n_last) = stamps[0], stamps[-1]
    rate = (n_last - n_first) / max(t_last - t_first, 1e-9)
    ref = (ref0 + ref1) / 2
    print(
        f"generate {size}px with {workers} worker processes: {num} samples in {total:.1f} s "
        f"(start-up {t_first - t0:.1f} s)"
    )
    print(f"generate {size}px with {workers} worker processes, steady samples/s (wall): {rate:.2f}")
    print(f"generate {size}px with {workers} worker processes, samples/s incl. start-up: {num / total:.2f}")
    print(f"generate {size}px with {workers} worker processes, samples/s x reference seconds: {rate * ref:.5f}")
    return rate


PEAK_RSS = """
def peak_rss_kib():
    # VmHWM: this process image's peak RSS (ru_maxrss would include the parent's peak, kept across exec on Linux)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
"""

CHILD_WRITE = (
    PEAK_RSS
    + """
import sys, numpy as np, json
sys.path.insert(0, {repo!r})
from next3d_gen import h5
recs = np.load({records!r}, allow_pickle=True)["records"]
shapes = json.loads({shapes!r})
shapes = {{k: tuple(v) for k, v in shapes.items()}}
n = int(sys.argv[1])
attrs = h5.make_attrs("{{}}", {{"bench": n}}, 256)
w = h5.ShardWriter(sys.argv[2], n, shapes, attrs)
for i in range(n):
    w.write(i, recs[i % len(recs)])
w.finalize()
print(peak_rss_kib())
"""
)

CHILD_PIPE = (
    PEAK_RSS
    + """
import logging, sys
logging.disable(logging.WARNING)
sys.path.insert(0, {repo!r})
from next3d_gen.pipeline import SamplePipeline, generate_shard
from next3d_gen.sampling import load_config
pipe = SamplePipeline(load_config({config!r}, {{"image_size": int(sys.argv[3])}}))
generate_shard(pipe, sys.argv[2], int(sys.argv[1]))
print(peak_rss_kib())
"""
)


def _child_rss(script: str, args: list[str]) -> float:
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, check=True)
    return int(proc.stdout.strip().splitlines()[-1]) / 1024.0  # MiB (Linux reports KiB)


def bench_memory(small: int, large: int, pipe_small: int, pipe_large: int, pipe_size: int, workdir: Path) -> None:
    cfg = load_config(CONFIG, {"image_size": 256})
    pipe = SamplePipeline(cfg)
    records = [pipe.generate(i) for i in range(4)]
    rec_path = workdir / "records.npz"
    arr = np.empty(len(records), dtype=object)
    arr[:] = records
    np.savez(rec_path, records=arr)
    shapes = json.dumps({k: list(v) for k, v in pipe.shapes.items()})
    script = CHILD_WRITE.format(repo=str(REPO), records=str(rec_path), shapes=shapes)
    rss = {}
    for n in (small, large):
        rss[n] = _child_rss(script, [str(n), str(workdir / f"mem{n}.h5")])
        print(f"memory storage path 256px, N={n}: peak RSS {rss[n]:.1f} MiB")
    print(f"memory storage path peak RSS ratio N={large} / N={small}: {rss[large] / rss[small]:.3f}")
    script = CHILD_PIPE.format(repo=str(REPO), config=str(CONFIG))
    prss = {}
    for n in (pipe_small, pipe_large):
        prss[n] = _child_rss(script, [str(n), str(workdir / f"pipe{n}.h5"), str(pipe_size)])
        print(f"memory full pipeline {pipe_size}px, N={n}: peak RSS {prss[n]:.1f} MiB")
    ratio = prss[pipe_large] / prss[pipe_small]
    print(f"memory full pipeline peak RSS ratio N={pipe_large} / N={pipe_small}: {ratio:.3f}")


def bench_read(num_rows: int, reads: int, workdir: Path) -> None:
    cfg = load_config(CONFIG, {"image_size": 256})
    pipe = SamplePipeline(cfg)
    records = [pipe.generate(i) for i in range(4)]
    path = workdir / "read.h5"
    attrs = h5.make_attrs(pipe.label_space.to_json(), {"bench": "read"}, 256)
    st = cfg.storage
    w = h5.ShardWriter(
        path,
        num_rows,
        pipe.shapes,
        attrs,
        compression=st.filter("compression"),
        image_compression=st.filter("image_compression"),
        compression_level=st.compression_level,
    )
    for i in range(num_rows):
        w.write(i, records[i % len(records)])
    w.finalize()
    reader = h5.SampleReader(path)
    order = np.random.default_rng(0).integers(0, len(reader), reads)
    reader[0]
    ref = reference_seconds()
    t, c = time.perf_counter(), time.process_time()
    for i in order:
        reader[int(i)]
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    print(f"read 256px random access, all fields, {reads} reads of {num_rows} rows: {reads / wall:.0f} samples/s")
    print(f"read 256px samples per CPU-second: {reads / cpu:.0f}")
    print(f"read 256px samples/s x reference seconds (load-normalised): {reads / wall * ref:.2f}")
    print(f"read reference workload: {ref * 1e3:.1f} ms")
    image_only = h5.SampleReader(path, fields=["image", "seg", "depth", "landmarks_2d"])
    image_only[0]
    t = time.perf_counter()
    for i in order:
        image_only[int(i)]
    print(f"read 256px random access, image+seg+depth+landmarks_2d: {reads / (time.perf_counter() - t):.0f} samples/s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=("generate", "memory", "read"), action="append")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--num", type=int, default=20, help="samples per single-process generation run")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes of the multi-process run")
    p.add_argument("--workers-num", type=int, default=200, help="samples per multi-process run (0: skip it)")
    p.add_argument("--mem-small", type=int, default=200)
    p.add_argument("--mem-large", type=int, default=2000)
    p.add_argument("--pipe-small", type=int, default=200)
    p.add_argument("--pipe-large", type=int, default=2000)
    p.add_argument("--pipe-size", type=int, default=64)
    p.add_argument("--read-rows", type=int, default=500)
    p.add_argument("--reads", type=int, default=2000)
    args = p.parse_args()
    logging.disable(logging.WARNING)
    only = set(args.only or ("generate", "memory", "read"))
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (other processes share the CPUs)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "generate" in only:
            for size in args.sizes:
                bench_generate(size, args.num, work)
            if args.workers_num > 0:
                for size in args.sizes:
                    bench_generate_workers(size, args.workers_num, args.workers, work)
        if "memory" in only:
            bench_memory(args.mem_small, args.mem_large, args.pipe_small, args.pipe_large, args.pipe_size, work)
        if "read" in only:
            bench_read(args.read_rows, args.reads, work)
    print(f"machine load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

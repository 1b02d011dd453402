"""Peak memory of `specscope analyze` on safetensors files several times the size of their largest tensor.

Cases, side by side in one run: square float32 matrices (8 of 4096 x 4096 by default: 64 MiB
each, 512 MiB in all); wide float32 matrices (n/2 x 2n); a 3-D packed float32 tensor (a
convolution weight n/2 x n/2 x 4, whose 4 kernel positions are pooled into one spectrum);
square bfloat16 matrices. For each case a fresh child process with specscope, torch, numpy
and scipy imported reads its RSS (the interpreter baseline), resets the kernel's peak-RSS
mark (``/proc/self/clear_refs``), runs ``ss.analyze(file)``, and reads the peak (``VmHWM``).
Prints (peak - baseline) / largest tensor per case, twice: once every spectrum is out (the
peak of reading and eigensolving, before the metrics are computed from the spectra) and for
the whole call; with ``--runs R``, the min / median / max over R rounds (each round runs
every case once). Target: < 3. Beside it, the float64 Gram's size over the tensor's
(``8 r^2`` bytes per slice, ``r = min(d_out, d_in)``): what a fully resident Gram would cost
(the eigensolver only touches its lower triangle, so about half of it is ever resident).

    python benchmarks/memory.py [--n 4096] [--count 8] [--runs 1] [--only square,wide] [--dir DIR]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import sys
import numpy, scipy.linalg, torch, specscope, specscope.offline, specscope.spectra


def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024


spectra = []  # the peak when every spectrum is out, before the metrics (offline._frame) start
frame = specscope.offline._frame
specscope.offline._frame = lambda *a, **k: spectra.append(status("VmHWM:")) or frame(*a, **k)
base = status("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM to the current RSS
df = specscope.analyze(sys.argv[1], progress=False)
assert len(df) == int(sys.argv[2]) and (df["status"] == "ok").all(), df
print(base, spectra[0] if spectra else -1, status("VmHWM:"))
"""


def cases(n: int, count: int) -> dict[str, tuple[str, tuple[int, ...], str, int]]:
    """Case name -> (tensor name pattern, shape, dtype, tensors in the file)."""
    h = n // 2
    return {"square": ("layers.{}.mlp.fc.weight", (n, n), "float32", count),
            "wide": ("layers.{}.mlp.proj.weight", (h, 2 * n), "float32", count),
            "3-D": ("layers.{}.conv.weight", (h, h, 4), "float32", max(2, count // 4)),
            "bf16": ("layers.{}.mlp.fc.weight", (n, n), "bfloat16", max(2, count // 4))}


def write(path: Path, pattern: str, shape: tuple[int, ...], dtype: str, count: int) -> tuple[int, float]:
    """Write the case's file; returns (largest tensor bytes, Gram bytes / largest tensor bytes)."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    tensors = {pattern.format(i): torch.randn(*shape, generator=g).to(getattr(torch, dtype)) for i in range(count)}
    t = next(iter(tensors.values()))
    nbytes = t.numel() * t.element_size()
    slices = shape[2] if len(shape) == 3 else 1
    gram = 8 * min(shape[:2]) ** 2 * slices
    save_file(tensors, str(path))
    return nbytes, gram / nbytes


def measure(path: Path, rows: int) -> tuple[int, int, int]:
    """RSS after imports, peak once the spectra are out, and peak of the whole ``analyze`` (bytes)."""
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(rows)], capture_output=True, text=True, check=True)
    base, spectra, hwm = out.stdout.strip().splitlines()[-1].split()
    return int(base), int(spectra), int(hwm)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--count", type=int, default=8, help="tensors per file (3-D and bf16: a quarter, at least 2)")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--only", default="", help="comma-separated cases (default: all)")
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    todo = {k: v for k, v in cases(a.n, a.count).items() if not a.only or k in a.only.split(",")}
    mib = 2**20
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        info, ratios = {}, {k: ([], []) for k in todo}
        for name, (pattern, shape, dtype, count) in todo.items():
            path = Path(d) / f"{name}.safetensors"
            largest, gram = write(path, pattern, shape, dtype, count)
            info[name] = (path, count, largest, gram, shape, dtype)
        for run in range(a.runs):
            line = []
            for name, (path, count, largest, *_rest) in info.items():
                base, spectra, hwm = measure(path, count)
                ratios[name][0].append((spectra - base) / largest if spectra > 0 else float("nan"))
                ratios[name][1].append((hwm - base) / largest)
                line.append(f"{name} {ratios[name][0][-1]:.2f} / {ratios[name][1][-1]:.2f}")
            print(f"run {run + 1} (spectra / analyze): " + ", ".join(line), flush=True)
    spread = lambda r: f"{min(r):.2f} / {statistics.median(r):.2f} / {max(r):.2f}"  # noqa: E731
    print(f"\n{'case':<7}{'tensor':>21}{'file':>14}{'Gram/largest':>14}{'spectra: peak/largest':>24}"
          f"{'analyze: peak/largest':>24}{'target':>8}")
    print(f"{'':<56}{'min / median / max':>24}{'min / median / max':>24}")
    for name, (path, count, largest, gram, shape, dtype) in info.items():
        tensor = "x".join(map(str, shape)) + f" {dtype}"
        print(f"{name:<7}{tensor:>21}{f'{count} x {largest / mib:.3g} MiB':>14}{gram:>14.2f}"
              f"{spread(ratios[name][0]):>24}{spread(ratios[name][1]):>24}{'< 3':>8}")
    print(f"({a.runs} run(s); peak = VmHWM - RSS after imports, over the largest tensor's bytes; spectra: when the last "
          "spectrum is out, before the metrics; analyze: the whole call)")


if __name__ == "__main__":
    main()

"""Peak memory of `specscope analyze` on a safetensors file 8x the size of its largest tensor.

Writes a safetensors file of 8 float32 matrices (4096 x 4096 by default: 64 MiB each, 512 MiB
in all), then, in a fresh child process with specscope, torch, numpy and scipy imported:
reads its RSS (the interpreter baseline), resets the kernel's peak-RSS mark
(``/proc/self/clear_refs``), runs ``ss.analyze(file)``, and reads the peak (``VmHWM``).
Prints (peak - baseline) / largest tensor. Target: < 3.

    python benchmarks/memory.py [--n 4096] [--count 8] [--dir DIR]
"""
from __future__ import annotations

import argparse
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


base = status("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM to the current RSS
df = specscope.analyze(sys.argv[1], progress=False)
assert len(df) == int(sys.argv[2]), len(df)
print(base, status("VmHWM:"))
"""


def measure(*args: str) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, check=True)
    base, hwm = out.stdout.strip().splitlines()[-1].split()
    return int(base), int(hwm)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    import torch
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        path = Path(d) / "big.safetensors"
        g = torch.Generator().manual_seed(0)
        tensors = {f"layers.{i}.mlp.fc.weight": torch.randn(a.n, a.n, generator=g) for i in range(a.count)}
        largest = max(t.numel() * t.element_size() for t in tensors.values())
        save_file(tensors, str(path))
        del tensors
        size = path.stat().st_size
        base, used = measure(str(path), str(a.count))
    mib = 2**20
    print(f"file {size / mib:.0f} MiB = {size / largest:.1f} x the largest tensor ({largest / mib:.0f} MiB)")
    print(f"RSS: interpreter after imports {base / mib:.0f} MiB, peak during analyze {used / mib:.0f} MiB")
    print(f"(peak - interpreter) / largest tensor = {(used - base) / largest:.2f}   (target < 3)")


if __name__ == "__main__":
    main()

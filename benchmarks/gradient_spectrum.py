"""Per-sample gradient spectrum: the probe vs the loop reference vs torch.func, same model and sequences.

The demo-sized reference GPT (4 layers, width 128, 128-token sequences), M sequences, the
final block's attention output ``o``. Each method runs in a fresh child process that resets
the kernel's peak-RSS mark after building the model, so "peak" is the memory the method
itself adds. Methods:
  probe       ss.measure.gradient_spectrum: hooks on that layer, one batched forward/backward per batch
  loop        M single-sequence full backward passes (every parameter, as the paper's code does),
              the probed gradient flattened and stacked, svdvals in float64
  torch.func  vmap(grad(...)) over a functional_call that differentiates only the probed weight
Targets: probe >= 10x faster than the loop, no slower than torch.func, peak memory no higher.

On a CUDA device (``--device cuda``) times are taken after ``torch.cuda.synchronize()`` and
"peak" is ``torch.cuda.max_memory_allocated`` above what the model holds.

    python benchmarks/gradient_spectrum.py [--samples 64] [--batch 16] [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, sys, time
import numpy as np, torch
import specscope as ss
from specscope.measure import find_matrix, sequence_losses
from specscope.train import GPT, GPTConfig

method, M, B, dev = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
cuda = dev.startswith("cuda")
torch.manual_seed(0)
model = GPT(GPTConfig(vocab_size=256, seq_len=128, n_layer=4, n_head=4, d_model=128)).eval().to(dev)
seqs = torch.randint(0, 256, (M, 128)).to(dev)


def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024


def torch_func():
    from torch.func import functional_call, grad, vmap
    ref = find_matrix(model, "o", -1)
    wname = ref.source + ".weight"
    w = model.get_submodule(ref.source).weight.detach()

    def loss(weight, x):
        return sequence_losses(lambda inp: functional_call(model, {wname: weight}, (inp,)), x[None]).sum()

    rows = [vmap(grad(loss), in_dims=(None, 0))(w, seqs[i:i + B]).reshape(-1, w.numel()).double() for i in range(0, M, B)]
    g = torch.cat(rows)
    return np.sqrt(np.clip(np.linalg.eigvalsh((g @ g.T).detach().cpu().numpy())[::-1], 0, None))


run = {"probe": lambda: ss.measure.gradient_spectrum(model, seqs, "o", -1, batch=B),
       "loop": lambda: ss.measure.gradient_spectrum_reference(model, seqs, "o", -1),
       "torch.func": torch_func}[method]
run()  # warm-up
if cuda:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
else:
    base = status("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
t0 = time.perf_counter()
sv = run()
if cuda:
    torch.cuda.synchronize()
dt = time.perf_counter() - t0
peak = (torch.cuda.max_memory_allocated() if cuda else status("VmHWM:")) - base
print(json.dumps({"seconds": dt, "peak_extra": peak, "sv": np.asarray(sv)[:8].tolist()}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    res = {}
    for method in ("probe", "loop", "torch.func"):
        out = subprocess.run([sys.executable, "-c", CHILD, method, str(a.samples), str(a.batch), a.device], capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{method}: failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
            continue
        res[method] = json.loads(out.stdout.strip().splitlines()[-1])
    mib = 2**20
    print(f"reference GPT 4x128 on {a.device}, {a.samples} sequences of 128 tokens, matrix o of the final block, batch {a.batch}")
    for method, r in res.items():
        print(f"{method:11s} {r['seconds']:8.3f} s   peak +{r['peak_extra'] / mib:7.1f} MiB   top sv {r['sv'][0]:.6g}")
    if {"probe", "loop"} <= res.keys():
        print(f"speed-up over the loop       {res['loop']['seconds'] / res['probe']['seconds']:7.1f}x   (target >= 10)")
    if {"probe", "torch.func"} <= res.keys():
        print(f"speed vs torch.func          {res['torch.func']['seconds'] / res['probe']['seconds']:7.2f}x   (target >= 1)")
        print(f"peak memory vs torch.func    {res['probe']['peak_extra'] / max(1, res['torch.func']['peak_extra']):7.2f}   (target <= 1)")
        top = [r["sv"][0] for r in res.values()]
        print(f"largest singular value agrees across methods to {max(top) / min(top) - 1:.1e} relative")


if __name__ == "__main__":
    main()

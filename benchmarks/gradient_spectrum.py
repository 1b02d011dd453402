"""Per-sample gradient spectrum: the probe vs the loop reference vs torch.func, against a plain forward+backward.

The demo-sized reference GPT (4 layers, width 128, 128-token sequences), M sequences, the
final block's attention output ``o``, batches of B. Every method is timed against the same
reference in the same child process, the two alternating, R times: the plain batched
forward+backward of the M sequences (``loss.backward()`` over every parameter, batches of B,
the mean next-token loss of each batch). Ratios are taken pair by pair (method / plain of the
same round), so load on a shared machine cancels; min and median over the R rounds ("plain" against
itself shows how much does not cancel).
  forward     the M sequences' batched forward alone, without autograd (no backward at all)
  probe       ss.measure.gradient_spectrum: hooks on that layer, one batched forward per batch with the
              graph built from the probed layer on, the backward down to its output only
  loop        M single-sequence full backward passes (every parameter, as the paper's code does),
              the probed gradient flattened and stacked, svdvals in float64
  torch.func  vmap(grad(...)) over a functional_call that differentiates only the probed weight
The probe's floor is one batched forward plus the backward of the layers after the probed one.
Targets: probe <= ~0.6x a plain forward+backward, no slower than torch.func, faster than the loop.

Piggyback (ss.probes.StepGradients): one training step (AdamW, the M sequences in micro-batches
of B, mean loss, train mode) with the probe armed (arming, the capture during the step, the
spectrum at the monitor step) vs the same step without it, alternating, R rounds.

Each method runs in fresh child processes, one for times, one for memory: "peak" is the memory a
warmed-up run adds above what the model holds (CPU: the kernel's peak-RSS mark reset before it,
with glibc serving large blocks from mmap so that freed memory leaves the process;
``--device cuda``: ``torch.cuda.max_memory_allocated``, times after ``torch.cuda.synchronize()``).
On a CPU, "cpu-time ratio" is the same ratio in process CPU time (steadier on a shared machine).

    python benchmarks/gradient_spectrum.py [--samples 64] [--batch 32] [--repeats 5] [--threads 1] [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, sys, time
import numpy as np, torch
import specscope as ss
from specscope.measure import find_matrix, sequence_losses
from specscope.probes import ProbeContext
from specscope.train import GPT, GPTConfig

method, M, B, R, dev, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
peak_only = sys.argv[7] == "peak"
cuda = dev.startswith("cuda")
if threads > 0:
    torch.set_num_threads(threads)
torch.manual_seed(0)
model = GPT(GPTConfig(vocab_size=256, seq_len=128, n_layer=4, n_head=4, d_model=128)).eval().to(dev)
seqs = torch.randint(0, 256, (M, 128)).to(dev)


def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024


def plain():
    model.zero_grad(set_to_none=True)
    for i in range(0, M, B):
        sequence_losses(model, seqs[i:i + B]).mean().backward()
    model.zero_grad(set_to_none=True)


def forward():
    with torch.no_grad():
        for i in range(0, M, B):
            sequence_losses(model, seqs[i:i + B])


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


class Training:
    # one optimizer step over the M sequences (micro-batches of B); with the probe: armed at the monitor step before
    # (observe), captured during the step, measured at its own monitor step (observe + measure)
    def __init__(self):
        model.train()
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        self.probe = ss.probes.StepGradients("o", -1, every=2)
        self.catalog = ss.catalog(model)
        self.step = 1
        self.sv = None

    def ctx(self, step):
        return ProbeContext(model, self.catalog, step)

    def train_step(self):
        self.opt.zero_grad(set_to_none=True)
        for i in range(0, M, B):
            _, loss = model(seqs[i:i + B, :-1], seqs[i:i + B, 1:])
            (loss * (B / M)).backward()
        self.opt.step()

    def armed(self):  # an even step: due
        if self.step % 2:
            self.step += 1
        with torch.no_grad():
            self.probe.observe(self.ctx(self.step - 1))
        self.train_step()
        with torch.no_grad():
            self.probe.observe(self.ctx(self.step))
            out = self.probe.measure(self.ctx(self.step))
        self.sv = out.spectra[0]["values"] if out.spectra else [float("nan")]
        self.step += 1
        return self.sv

    def unarmed(self):  # an odd step: not due, no hooks on the model
        if self.step % 2 == 0:
            self.step += 1
        self.train_step()
        self.step += 1


if method == "piggyback":
    tr = Training()
    run, ref = tr.armed, tr.unarmed
else:
    run = {"plain": plain, "forward": forward,
           "probe": lambda: ss.measure.gradient_spectrum(model, seqs, "o", -1, batch=B),
           "loop": lambda: ss.measure.gradient_spectrum_reference(model, seqs, "o", -1),
           "torch.func": torch_func}[method]
    ref = plain


def timed(fn):
    if cuda:
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0, out


def peak_of(fn):
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = status("VmRSS:")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    fn()
    if cuda:
        torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() if cuda else status("VmHWM:")) - base


run(), ref()  # warm-up
if peak_only:
    print(json.dumps({"peak_extra": peak_of(run), "ref_peak_extra": peak_of(ref)}))
    sys.exit(0)
times, refs, cpu, ref_cpu, sv = [], [], [], [], None
for r in range(R):  # alternate which goes first
    pair = [(run, times, cpu), (ref, refs, ref_cpu)][:: 1 if r % 2 == 0 else -1]
    for fn, into, into_cpu in pair:
        dt, dc, out = timed(fn)
        into.append(dt)
        into_cpu.append(dc)
        if fn is run and out is not None:
            sv = out
print(json.dumps({"seconds": times, "ref_seconds": refs, "cpu": cpu, "ref_cpu": ref_cpu,
                  "sv": None if sv is None else [float(v) for v in np.asarray(sv)[:8]]}))
"""

METHODS = ("plain", "forward", "probe", "loop", "torch.func", "piggyback")


def stats(xs: list[float]) -> tuple[float, float]:
    s = sorted(xs)
    n = len(s)
    return s[0], (s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2)


def ratios(r: dict, key: str = "seconds") -> tuple[float, float]:
    """Min and median over the rounds of method / reference of the same round."""
    ref = "ref_seconds" if key == "seconds" else "ref_cpu"
    return stats([m / p for m, p in zip(r[key], r[ref])])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5, help="alternating rounds of method and reference")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in each child (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {', '.join(METHODS)}")
    a = ap.parse_args()
    res = {}
    # memory in its own child: large blocks straight from mmap there, so freed memory leaves the process and the
    # peak-RSS mark sees live memory only (that slows allocation down, so times come from a child without it)
    peak_env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    for method in a.methods.split(","):
        r = {}
        for mode, env in (("time", None), ("peak", peak_env)):
            out = subprocess.run([sys.executable, "-c", CHILD, method, str(a.samples), str(a.batch), str(a.repeats),
                                  a.device, str(a.threads), mode], capture_output=True, text=True, env=env)
            if out.returncode != 0:
                print(f"{method}: failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
                break
            r.update(json.loads(out.stdout.strip().splitlines()[-1]))
        else:
            res[method] = r
    mib = 2**20
    cpu = not a.device.startswith("cuda")
    print(f"reference GPT 4x128 on {a.device}, {a.samples} sequences of 128 tokens, matrix o of the final block, "
          f"batch {a.batch}; {a.repeats} alternating rounds with the reference, min / median")
    print(f"{'method':11s} {'wall s':>16s}  {'x plain fwd+bwd':>16s}" + (f"  {'cpu-time ratio':>16s}" if cpu else "")
          + "  peak above the model")
    for method, r in res.items():
        if method == "piggyback":
            continue
        t, w = stats(r["seconds"]), ratios(r)
        c = ratios(r, "cpu")
        top = f"  top sv {r['sv'][0]:.6g}" if r["sv"] else ""
        print(f"{method:11s} {t[0]:7.3f} /{t[1]:7.3f}  {w[0]:7.2f} /{w[1]:7.2f}"
              + (f"  {c[0]:7.2f} /{c[1]:7.2f}" if cpu else "") + f"  +{r['peak_extra'] / mib:6.1f} MiB{top}")
    if "probe" in res:
        for key in ("seconds", "cpu") if cpu else ("seconds",):
            probe = ratios(res["probe"], key)
            for other in ("loop", "torch.func"):
                if other in res:
                    o = ratios(res[other], key)
                    print(f"probe speed-up over {other:10s} {o[0] / probe[0]:6.2f}x (min) / {o[1] / probe[1]:6.2f}x "
                          f"(median), from the {'wall' if key == 'seconds' else 'cpu-time'} ratios to the plain "
                          f"forward+backward")
    if "piggyback" in res:
        r = res["piggyback"]
        armed, plain = stats(r["seconds"]), stats(r["ref_seconds"])
        w, c = ratios(r), ratios(r, "cpu")
        print(f"piggyback: training step with StepGradients armed {armed[0]:.3f} / {armed[1]:.3f} s vs without "
              f"{plain[0]:.3f} / {plain[1]:.3f} s: {w[0]:.3f}x / {w[1]:.3f}x wall"
              + (f", {c[0]:.3f}x / {c[1]:.3f}x cpu time" if cpu else "")
              + f" (min / median of round ratios); peak +{r['peak_extra'] / mib:.1f} MiB armed vs "
              f"+{r['ref_peak_extra'] / mib:.1f} MiB without")
    tops = [r["sv"][0] for m, r in res.items() if r["sv"] and m != "piggyback"]
    if len(tops) > 1:
        print(f"largest singular value agrees across methods to {max(tops) / min(tops) - 1:.1e} relative")


if __name__ == "__main__":
    main()

"""GPU path of the weight probe: run with `pytest -m gpu` on a machine with CUDA."""
import numpy as np
import pytest
import torch

import specscope as ss
from specscope.spectra import singular_values_many

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_spectra_on_gpu_match_cpu():
    mats = {f"m{i}": torch.randn(*s) for i, s in enumerate([(64, 256), (256, 64), (64, 256), (128, 128)])}
    cpu = singular_values_many(mats)
    gpu = singular_values_many({k: v.cuda() for k, v in mats.items()})
    for k in mats:
        np.testing.assert_allclose(gpu[k].sv, cpu[k].sv, rtol=1e-9)


def test_monitor_on_gpu_model(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Linear(128, 64)).cuda().to(torch.bfloat16)
    with ss.Monitor(model, tmp_path / "r", probes=[ss.probes.Weights(every=1)]) as mon:
        mon.step(0, loss=torch.tensor(1.0, device="cuda"))
    m = ss.open_run(tmp_path / "r").metrics(metric="stable_rank")
    ref = {}  # brute force on the CPU, in float64, from the bf16 weights
    for name, lin in (("0", model[0]), ("1", model[1])):
        sv = torch.linalg.svdvals(lin.weight.detach().cpu().double())
        ref[name] = float((sv ** 2).sum() / sv[0] ** 2)
    assert len(m) == 2 and dict(zip(m["name"], m["value"])) == pytest.approx(ref, rel=1e-6)

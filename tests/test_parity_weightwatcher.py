"""Parity with WeightWatcher 0.7.7 analyze() on the same matrices (to 1e-3 relative)."""
import logging

import numpy as np
import pandas as pd
import pytest
import torch

import specscope as ss
from specscope.train import GPTConfig, TrainConfig, train

ww = pytest.importorskip("weightwatcher")

COLUMNS = {"alpha_mle": "alpha", "alpha_weighted": "alpha_weighted", "stable_rank": "stable_rank",
           "entropy_norm": "entropy", "log_norm": "log_norm", "xmin": "xmin", "ks_d": "D", "alpha_sigma": "sigma",
           "n_tail": "num_pl_spikes"}


def as_linears(mats: list[torch.Tensor]) -> torch.nn.Module:
    seq = torch.nn.Sequential(*[torch.nn.Linear(w.shape[1], w.shape[0], bias=False) for w in mats])
    with torch.no_grad():
        for lin, w in zip(seq, mats):
            lin.weight.copy_(w)
    return seq


def compare(mats: list[torch.Tensor]) -> pd.DataFrame:
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    model = as_linears(mats)
    theirs = ww.WeightWatcher(model=model).analyze().reset_index(drop=True)
    ours = ss.analyze(model, progress=False)
    ours = ours.set_index(ours["name"].astype(int)).sort_index().reset_index(drop=True)
    assert len(theirs) == len(ours) == len(mats)
    for mine, col in COLUMNS.items():
        np.testing.assert_allclose(ours[mine].to_numpy(float), theirs[col].to_numpy(float), rtol=1e-3, err_msg=mine)
    return ours


def test_gaussian_matrices():
    g = torch.Generator().manual_seed(0)
    compare([torch.randn(s, generator=g) for s in [(200, 500), (300, 300), (768, 192), (64, 256)]])


def test_heavy_tailed_student_t_matrices():
    torch.manual_seed(1)
    t = torch.distributions.StudentT(torch.tensor([2.5]))
    ours = compare([t.sample(s).squeeze(-1) for s in [(300, 300), (256, 640), (500, 120)]])
    assert (ours["alpha_mle"] < 6).all()  # heavy tails: small alpha


def test_trained_reference_gpt(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECSCOPE_CACHE", str(tmp_path / "cache"))
    res = train(GPTConfig(n_layer=2, n_head=2, d_model=64, seq_len=64),
                TrainConfig(steps=80, micro_batch=8, eval_every=40, probe_every=40, max_corpus_bytes=1_000_000),
                tmp_path / "run", progress=False)
    ckpt = sorted((res.run_dir / "checkpoints").glob("*.safetensors"))[-1]
    from safetensors.torch import load_file
    mats = [w for k, w in sorted(load_file(str(ckpt)).items()) if w.ndim == 2 and k.startswith("blocks.")]
    assert len(mats) == 12
    compare(mats)

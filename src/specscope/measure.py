"""One-shot Spectral Lens measurements on any model and data (``ss.measure``).

- :func:`activation_spectrum`: eigenvalues of the covariance of a block's residual-stream
  output over the given sequences (SPEC 1.2), accumulated streaming in float64.
- :func:`gradient_spectrum`: singular values of the per-sample gradient matrix of one weight
  matrix (SPEC 1.3), one sample = one sequence, from one batched forward/backward per chunk
  with hooks on that layer only; :func:`gradient_spectrum_reference` is the loop of
  single-sequence backward passes it must equal.

Works on the reference GPT and on HF GPT-2 / NeoX / LLaMA-family models. Parameter ``.grad``
fields are never touched, and the model's train/eval modes are restored.
"""
from __future__ import annotations

import re
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .models import MatrixRef, catalog
from .models.modes import kept_modes
from .streams import PerSampleGradGram, StreamingCovariance

_BLOCK_LIST = re.compile(r"(?:^|\.)(?:blocks|h|layers|layer)$")


def find_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks, in order: the longest ``ModuleList`` named blocks / h / layers."""
    best: list[nn.Module] = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and _BLOCK_LIST.search(name) and len(mod) > len(best):
            best = list(mod)
    if not best:
        raise ValueError("no list of transformer blocks (blocks / h / layers) found in the model")
    return best


def _logits(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)):
        return out[0]
    raise TypeError(f"cannot find logits in the model output ({type(out).__name__})")


def sequence_losses(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of each sequence of ``x`` (B, T): shape (B,)."""
    logits = _logits(model(x))[:, :-1]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), x[:, 1:].reshape(-1), reduction="none")
    return ce.view(x.shape[0], -1).mean(dim=1)


def _batches(sequences: torch.Tensor, batch: int, device) -> Iterator[torch.Tensor]:
    seqs = torch.as_tensor(sequences)
    for i in range(0, len(seqs), batch):
        yield seqs[i : i + batch].to(device=device, dtype=torch.long)


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def rms_normalize(h: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    h = h.to(torch.float64)
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)


def activation_covariances(model: nn.Module, sequences: torch.Tensor, layers=(-1,), normalize: str = "rms",
                           batch: int = 16) -> dict[int, StreamingCovariance]:
    """Streaming covariances of the residual-stream outputs of the given blocks (negative = from the end)."""
    if normalize not in ("rms", "none"):
        raise ValueError("normalize must be 'rms' or 'none'")
    blocks = find_blocks(model)
    idx = sorted({l % len(blocks) for l in layers})
    covs: dict[int, StreamingCovariance] = {}
    handles = []

    def hook(i: int):
        def fn(_mod, _inp, out):
            h = out[0] if isinstance(out, (tuple, list)) else out
            h = rms_normalize(h) if normalize == "rms" else h
            if i not in covs:
                covs[i] = StreamingCovariance(h.shape[-1], device=h.device)
            covs[i].update(h)
        return fn

    for i in idx:
        handles.append(blocks[i].register_forward_hook(hook(i)))
    try:
        with torch.no_grad(), kept_modes(model, eval=True):
            for x in _batches(sequences, batch, _device(model)):
                model(x)
    finally:
        for h in handles:
            h.remove()
    return covs


def desc_eigvalsh(sym: torch.Tensor) -> np.ndarray:
    """Eigenvalues of a symmetric matrix, descending, clipped at 0."""
    lam = np.linalg.eigvalsh(sym.detach().cpu().numpy())[::-1]
    return np.clip(lam, 0.0, None)


def activation_spectrum(model: nn.Module, sequences: torch.Tensor, layer: int = -1, normalize: str = "rms",
                        batch: int = 16) -> np.ndarray:
    """Covariance eigenvalues (descending) of block ``layer``'s output over ``sequences`` (N, T)."""
    covs = activation_covariances(model, sequences, (layer,), normalize, batch)
    return desc_eigvalsh(next(iter(covs.values())).compute())


def find_matrix(model: nn.Module, matrix: str = "o", layer: int = -1) -> MatrixRef:
    """The cataloged matrix of kind ``matrix`` in block ``layer`` (negative = from the end)."""
    refs = [r for r in catalog(model) if r.kind == matrix and r.layer >= 0]
    if not refs:
        raise ValueError(f"no matrix of kind {matrix!r} in the model's blocks")
    layers = sorted({r.layer for r in refs})
    want = layers[layer] if layer < 0 else layer
    for r in refs:
        if r.layer == want:
            return r
    raise ValueError(f"no matrix of kind {matrix!r} in block {layer}")


def gradient_gram(model: nn.Module, sequences: torch.Tensor, matrix: str = "o", layer: int = -1, batch: int = 16,
                  chunk: int = 16) -> tuple[torch.Tensor, MatrixRef]:
    """Float64 Gram ``G G^T`` of the per-sequence gradients of one matrix, and the matrix."""
    ref = find_matrix(model, matrix, layer)
    module = model.get_submodule(ref.source)
    acc = PerSampleGradGram(chunk=chunk)
    seen: dict[str, torch.Tensor] = {}

    def pre(_mod, inp):
        torch.set_grad_enabled(True)  # build the graph only from the probed layer on

    def fwd(_mod, inp, out):
        seen["x"], seen["y"] = inp[0], out

    handles = [module.register_forward_pre_hook(pre), module.register_forward_hook(fwd)]
    try:
        with torch.no_grad(), kept_modes(model, eval=True):
            for x in _batches(sequences, batch, _device(model)):
                loss = sequence_losses(model, x).sum()  # d(sum_m L_m)/dy at sequence m's positions = dL_m/dy
                torch.set_grad_enabled(False)
                (delta,) = torch.autograd.grad(loss, seen["y"])
                if ref.out_index is not None:
                    delta = delta[..., ref.out_index.to(delta.device)]
                inp = seen["x"]
                acc.update(inp, delta)  # g_m = sum_t delta_t x_t^T, as d_out x d_in
                seen.clear()
    finally:
        for h in handles:
            h.remove()
    return acc.compute(), ref


def gradient_spectrum(model: nn.Module, sequences: torch.Tensor, matrix: str = "o", layer: int = -1, batch: int = 16,
                      chunk: int = 16) -> np.ndarray:
    """Singular values (descending) of the per-sample gradient matrix ``G`` (M x P), ``sqrt(eigvalsh(G G^T))``."""
    gram, _ = gradient_gram(model, sequences, matrix, layer, batch, chunk)
    return np.sqrt(desc_eigvalsh(gram))


def gradient_spectrum_reference(model: nn.Module, sequences: torch.Tensor, matrix: str = "o", layer: int = -1) -> np.ndarray:
    """The loop the probe must equal: one full backward pass per sequence (every parameter's gradient, as a
    training step computes them; ``.grad`` fields are left alone), the probed gradient flattened, stacked,
    ``svdvals`` in float64."""
    ref = find_matrix(model, matrix, layer)
    module = model.get_submodule(ref.source)
    weight = module.weight
    params = [p for p in model.parameters() if p.requires_grad]
    at = next(i for i, p in enumerate(params) if p is weight)
    rows = []
    with torch.enable_grad(), kept_modes(model, eval=True):
        for x in _batches(sequences, 1, _device(model)):
            g = torch.autograd.grad(sequence_losses(model, x).sum(), params, allow_unused=True)[at]
            if type(module).__name__ == "Conv1D":
                g = g.T
            if ref.out_index is not None:
                g = g[ref.out_index.to(g.device)]
            rows.append(g.reshape(-1).to(torch.float64))
    return torch.linalg.svdvals(torch.stack(rows)).cpu().numpy()

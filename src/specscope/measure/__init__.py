"""One-shot Spectral Lens measurements on any model and data (``ss.measure``).

- :func:`activation_spectrum` / :func:`activation_covariances`: eigenvalues of the covariance
  of activations (a block's residual-stream output, any module's output or input) over a pool,
  accumulated streaming in float64 (SPEC 1.2); :mod:`.activations`.
- :func:`gradient_spectrum` / :func:`gradient_gram`: singular values of the per-sample gradient
  matrix of one cataloged matrix (SPEC 1.3), through hooks on a linear layer, ``torch.func`` or
  a loop of single-sample backward passes; :func:`gradient_spectrum_reference` is the loop of
  full single-sample backward passes they must equal; :mod:`.gradients`.
- :func:`activations_and_gradient`: both from one forward per batch when they read one pool
  (:func:`shared_rows`), equal to the separate passes; :mod:`.shared`.

Works on token language models (the reference GPT, HF GPT-2 / NeoX / LLaMA families) and on
any other model (vision, audio, regression, CNN, LSTM): a pool is a tensor or a tuple / dict of
tensors batched along dim 0, never cast; ``forward_fn(model, batch)`` says how to call the
model and ``loss_fn(output, batch)`` gives per-sample losses (:mod:`.common`). Parameter
``.grad`` fields are never touched; the model runs in eval mode and its train/eval modes and
the RNG states are restored.
"""
from .activations import (Site, activation_covariances, activation_sites, activation_spectrum, block_index, block_list,
                          default_site, find_blocks, flatten_features, rms_normalize)
from .common import (LossShapeError, _batches, _device, _logits, as_pool, call_model, desc_eigvalsh, first_tensor,
                     kept_rng, measuring, next_token_losses, per_sample, pool_len, pool_rows, pool_shapes, resolve_loss,
                     sequence_losses)
from .gradients import METHODS, find_matrix, gradient_gram, gradient_spectrum, gradient_spectrum_reference, gradient_stream
from .shared import ActivationRequest, NotShared, activations_and_gradient, shared_rows

__all__ = ["METHODS", "ActivationRequest", "LossShapeError", "NotShared", "Site", "activation_covariances",
           "activation_sites", "activation_spectrum", "activations_and_gradient", "as_pool", "block_index",
           "block_list", "call_model", "default_site", "desc_eigvalsh", "find_blocks", "find_matrix", "first_tensor",
           "flatten_features", "gradient_gram", "gradient_spectrum", "gradient_spectrum_reference", "gradient_stream", "kept_rng",
           "measuring", "next_token_losses", "per_sample", "pool_len", "pool_rows", "pool_shapes", "resolve_loss",
           "rms_normalize", "sequence_losses", "shared_rows"]

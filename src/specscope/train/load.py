"""Load a live model for the analyses that run it (``specscope prune``): a reference-GPT safetensors
checkpoint (its config is in the file's metadata) or an HF model directory with safetensors weights.
Nothing is unpickled."""
from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from ..errors import CheckpointError
from ..models.loading import resolve
from .model import GPT, GPTConfig


def load_model(path: str) -> tuple[nn.Module, str]:
    """A live model from a reference-GPT safetensors checkpoint (config in its metadata) or an HF model directory.

    Returns the model (eval mode, float32) and its family: ``"reference"`` or ``"hf"``. A path that is neither,
    has no safetensors weights or lacks the config is a :class:`CheckpointError` (nothing is unpickled).
    """
    p = Path(path)
    if p.is_dir() and (p / "config.json").is_file():
        try:
            from transformers import AutoModelForCausalLM
        except ImportError as exc:
            raise CheckpointError("loading an HF model directory needs `transformers`") from exc
        if not any(p.glob("*.safetensors")):
            raise CheckpointError(f"{p}: no .safetensors weights (pickled weights are not loaded)")
        try:
            model = AutoModelForCausalLM.from_pretrained(str(p), local_files_only=True, use_safetensors=True)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{p}: {exc}") from None
        return model.float().eval(), "hf"
    ck = resolve(p)[-1]
    from safetensors import safe_open

    if ck.path.suffix != ".safetensors":
        raise CheckpointError(f"{ck.path}: specscope prune needs a safetensors checkpoint of the reference GPT or an HF directory")
    with safe_open(str(ck.path), "pt") as f:
        meta = f.metadata() or {}
    if "config" not in meta:
        raise CheckpointError(f"{ck.path}: no model config in the checkpoint metadata (not a specscope checkpoint)")
    from safetensors.torch import load_model as st_load

    model = GPT(GPTConfig(**json.loads(meta["config"])))
    st_load(model, str(ck.path))
    return model.eval(), "reference"

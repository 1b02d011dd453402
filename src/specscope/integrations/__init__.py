"""Integrations with training frameworks: ``hf`` (transformers.Trainer), ``lightning`` (PyTorch Lightning).

Each wraps the :class:`~specscope.Monitor`; import the submodule you need (they import
their framework).
"""

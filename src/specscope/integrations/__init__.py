"""Integrations with training frameworks: ``hf`` (transformers.Trainer), ``lightning`` (PyTorch Lightning).

Each drives the :class:`~specscope.Monitor` once per optimizer step, as a plain loop calling
``mon.step`` would, so every probe schedule runs (every-step probes included); import the
submodule you need (they import their framework).
"""

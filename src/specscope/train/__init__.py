"""The reference trainer only: model, corpora, schedules, Muon, spectral warm-up and the training loop (a client of the monitor; the studies are in :mod:`specscope.experiments`)."""
from .corpus import Corpus, load_corpus
from .model import GPT, GPTConfig
from .trainer import TrainConfig, TrainResult, train

__all__ = ["Corpus", "GPT", "GPTConfig", "TrainConfig", "TrainResult", "load_corpus", "train"]

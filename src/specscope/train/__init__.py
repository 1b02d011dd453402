"""Reference trainer, corpora and model: a client of the monitor's public API."""
from .corpus import Corpus, load_corpus
from .model import GPT, GPTConfig
from .trainer import TrainConfig, TrainResult, train

__all__ = ["Corpus", "GPT", "GPTConfig", "TrainConfig", "TrainResult", "load_corpus", "train"]

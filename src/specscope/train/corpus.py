"""Built-in and user corpora, tokenized byte-level or with a locally trained byte-level BPE.

The built-in corpus is the Python standard library's own ``.py`` sources found on the
machine (about 30 MB of real text, present everywhere Python is). Files are taken in a
deterministic order and split into train / validation / probe pool by a hash of their
relative path, so the split never depends on the machine's file order.
"""
from __future__ import annotations

import hashlib
import logging
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CorpusError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "probe")
# Per-mille thresholds of the path hash: [0, 900) train, [900, 950) val, [950, 1000) probe pool.
SPLIT_PER_MILLE = (900, 950)
DOC_SEPARATOR = b"\x00"  # never occurs in source text; byte-level id 0
BPE_EOS = "<|endoftext|>"


def megabytes(mb: float | None) -> int | None:
    """A corpus size limit given in MiB, as bytes (None: no limit)."""
    return int(mb * 2**20) if mb else None


def cache_dir() -> Path:
    d = Path(os.environ.get("SPECSCOPE_CACHE", Path.home() / ".cache" / "specscope"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def list_files(root: Path, stdlib: bool) -> list[Path]:
    """Deterministic list of corpus files under ``root``."""
    if stdlib:
        files = [p for p in root.rglob("*.py") if "site-packages" not in p.parts and "__pycache__" not in p.parts]
    else:
        files = [p for p in root.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.relative_to(root).parts)]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def split_of(relpath: str) -> str:
    h = int.from_bytes(hashlib.md5(relpath.encode()).digest()[:4], "little") % 1000
    return SPLITS[0] if h < SPLIT_PER_MILLE[0] else SPLITS[1] if h < SPLIT_PER_MILLE[1] else SPLITS[2]


def read_documents(root: Path, stdlib: bool, max_bytes: int | None = None) -> dict[str, list[bytes]]:
    """Documents of each split; binary files (NUL bytes) and undecodable files are skipped."""
    docs: dict[str, list[bytes]] = {s: [] for s in SPLITS}
    total = 0
    for path in list_files(root, stdlib):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if not data or b"\x00" in data:
            continue
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        docs[split_of(path.relative_to(root).as_posix())].append(data)
        total += len(data)
        if max_bytes is not None and total >= max_bytes:
            break
    return docs


@dataclass
class Corpus:
    """Token ids per split (int32 arrays) and the vocabulary size."""

    name: str
    tokenizer: str
    vocab_size: int
    train: np.ndarray
    val: np.ndarray
    probe: np.ndarray

    def split(self, name: str) -> np.ndarray:
        return getattr(self, name)

    def summary(self) -> dict:
        return {"corpus": self.name, "tokenizer": self.tokenizer, "vocab_size": self.vocab_size,
                **{f"{s}_tokens": int(len(self.split(s))) for s in SPLITS}}


def _fingerprint(root: Path, stdlib: bool, max_bytes: int | None, tokenizer: str, vocab: int) -> str:
    h = hashlib.sha1(f"{root}|{stdlib}|{max_bytes}|{tokenizer}|{vocab}".encode())
    for p in list_files(root, stdlib):
        st = p.stat()
        h.update(f"{p.relative_to(root).as_posix()}|{st.st_size}|{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def _train_bpe(docs: list[bytes], vocab_size: int, path: Path):
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator((d.decode("utf-8") for d in docs), vocab_size=vocab_size, min_frequency=2,
                            special_tokens=[BPE_EOS], show_progress=False)
    tok.save(str(path))
    return tok


def _encode(docs: list[bytes], tokenizer: str, bpe=None) -> np.ndarray:
    if not docs:
        return np.zeros(0, dtype=np.int32)
    if tokenizer == "byte":
        return np.frombuffer(DOC_SEPARATOR.join(docs), dtype=np.uint8).astype(np.int32)
    eos = bpe.token_to_id(BPE_EOS)
    enc = bpe.encode_batch([d.decode("utf-8") for d in docs])
    ids: list[int] = []
    for e in enc:
        ids.extend(e.ids)
        ids.append(eos)
    return np.asarray(ids, dtype=np.int32)


def load_corpus(
    source: str = "stdlib",
    tokenizer: str = "byte",
    bpe_vocab: int = 2048,
    max_bytes: int | None = None,
    use_cache: bool = True,
) -> Corpus:
    """Load ``source`` ("stdlib" or a directory of text files), tokenized and split.

    Tokenized splits (and a trained BPE) are cached under ``$SPECSCOPE_CACHE``
    (default ``~/.cache/specscope``), keyed by the files' names, sizes and times.
    """
    if tokenizer not in ("byte", "bpe"):
        raise CorpusError(f"tokenizer must be 'byte' or 'bpe', got {tokenizer!r}")
    stdlib = source == "stdlib"
    root = stdlib_root() if stdlib else Path(source)
    if not root.is_dir():
        raise CorpusError(f"corpus directory not found: {root}")
    vocab = 256 if tokenizer == "byte" else bpe_vocab
    key = _fingerprint(root, stdlib, max_bytes, tokenizer, vocab)
    cached = cache_dir() / f"corpus-{key}.npz"
    name = "stdlib" if stdlib else str(root)
    if use_cache and cached.exists():
        try:
            z = np.load(cached)
            return Corpus(name, tokenizer, int(z["vocab_size"]), z["train"], z["val"], z["probe"])
        except Exception as exc:  # a damaged cache is rebuilt
            log.warning("ignoring unreadable corpus cache %s: %s", cached, exc)
    docs = read_documents(root, stdlib, max_bytes)
    if not docs["train"]:
        raise CorpusError(f"no readable text files in {root}")
    for s in ("val", "probe"):  # tiny corpora: borrow the last training document so no split is empty
        if not docs[s]:
            docs[s] = docs["train"][-1:]
    bpe = None
    if tokenizer == "bpe":
        bpe = _train_bpe(docs["train"], bpe_vocab, cache_dir() / f"bpe-{key}.json")
        vocab = bpe.get_vocab_size()
    arrays = {s: _encode(docs[s], tokenizer, bpe) for s in SPLITS}
    if use_cache:
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, vocab_size=vocab, **arrays)
        os.replace(tmp, cached)
    return Corpus(name, tokenizer, vocab, arrays["train"], arrays["val"], arrays["probe"])


def sample_batch(tokens: np.ndarray, batch: int, seq_len: int, gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``batch`` random windows of ``seq_len + 1`` tokens: inputs and next-token targets."""
    if len(tokens) < seq_len + 2:
        raise CorpusError(f"split has {len(tokens)} tokens, fewer than seq_len + 2 = {seq_len + 2}")
    starts = gen.integers(0, len(tokens) - seq_len - 1, size=batch)
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
    w = tokens[idx]
    return w[:, :-1], w[:, 1:]

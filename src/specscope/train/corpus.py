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
    """A corpus size limit given in MiB, as an int of bytes; None (no limit) for None or 0."""
    return int(mb * 2**20) if mb else None


def cache_dir() -> Path:
    """The cache directory of tokenized corpora and trained BPEs: ``$SPECSCOPE_CACHE``, default
    ``~/.cache/specscope``, created if absent. Returns its Path."""
    d = Path(os.environ.get("SPECSCOPE_CACHE", Path.home() / ".cache" / "specscope"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def stdlib_root() -> Path:
    """The directory of this Python's standard library sources (the built-in corpus): a Path."""
    return Path(sysconfig.get_paths()["stdlib"])


def list_files(root: Path, stdlib: bool) -> list[Path]:
    """Deterministic list of corpus files under ``root``, sorted by relative path: every ``.py`` outside
    ``site-packages`` and ``__pycache__`` for the standard library, else every file not under a hidden name."""
    if stdlib:
        files = [p for p in root.rglob("*.py") if "site-packages" not in p.parts and "__pycache__" not in p.parts]
    else:
        files = [p for p in root.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.relative_to(root).parts)]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def split_of(relpath: str) -> str:
    """The split of a file from a hash of its relative path: ``"train"`` (90%), ``"val"`` (5%) or ``"probe"`` (5%);
    the same on every machine."""
    h = int.from_bytes(hashlib.md5(relpath.encode()).digest()[:4], "little") % 1000
    return SPLITS[0] if h < SPLIT_PER_MILLE[0] else SPLITS[1] if h < SPLIT_PER_MILLE[1] else SPLITS[2]


def read_documents(root: Path, stdlib: bool, max_bytes: int | None = None) -> dict[str, list[bytes]]:
    """Documents of each split: a dict split name -> list of file contents (UTF-8 bytes), reading files in order
    until ``max_bytes`` (bytes) is reached; binary files (NUL bytes) and undecodable files are skipped."""
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
    """A tokenized corpus: token ids per split (``train``, ``val``, ``probe``: 1-D int32 arrays, documents separated
    by a separator / end-of-text token), the ``vocab_size`` (ids are ``0..vocab_size-1``), its ``name`` and its
    ``tokenizer`` (``"byte"`` or ``"bpe"``)."""

    name: str
    tokenizer: str
    vocab_size: int
    train: np.ndarray
    val: np.ndarray
    probe: np.ndarray

    def split(self, name: str) -> np.ndarray:
        """The token ids of split ``name`` (``"train"``, ``"val"`` or ``"probe"``): a 1-D int32 array."""
        return getattr(self, name)

    def summary(self) -> dict:
        """The corpus for run metadata: ``corpus``, ``tokenizer``, ``vocab_size`` and ``<split>_tokens`` (token counts)."""
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
    """Load ``source`` ("stdlib" or a directory of text files), tokenized (``"byte"``, or a byte-level BPE of
    ``bpe_vocab`` tokens trained on the train split) and split: a :class:`Corpus`. ``max_bytes`` caps the text read
    (bytes). A missing directory, no readable text or an unknown tokenizer is a :class:`CorpusError`.

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
    """``batch`` random windows of ``seq_len + 1`` tokens: ``(inputs, targets)``, two ``batch x seq_len`` arrays of
    token ids, the targets shifted by one token. A split shorter than ``seq_len + 2`` is a :class:`CorpusError`."""
    if len(tokens) < seq_len + 2:
        raise CorpusError(f"split has {len(tokens)} tokens, fewer than seq_len + 2 = {seq_len + 2}")
    starts = gen.integers(0, len(tokens) - seq_len - 1, size=batch)
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
    w = tokens[idx]
    return w[:, :-1], w[:, 1:]

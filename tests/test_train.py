import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_model

import specscope as ss
from specscope.errors import CorpusError
from specscope.train import GPT, GPTConfig, TrainConfig, load_corpus, train
from specscope.train.corpus import split_of
from specscope.train.optim import lr_at


@pytest.fixture
def text_dir(tmp_path):
    d = tmp_path / "texts"
    d.mkdir()
    rng = np.random.default_rng(0)
    words = ["spectrum", "matrix", "rank", "train", "loss", "tail", "head", "layer"]
    for i in range(40):
        (d / f"doc{i:02d}.txt").write_text(" ".join(rng.choice(words, 300)) + "\n")
    (d / "binary.bin").write_bytes(b"\x00\x01\x02")
    return d


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECSCOPE_CACHE", str(tmp_path / "cache"))


def test_corpus_from_directory_and_cache(text_dir):
    c = load_corpus(str(text_dir))
    assert c.vocab_size == 256
    docs = {"train": [], "val": [], "probe": []}  # by the documented rule: md5 of the relative path, per mille
    for path in sorted(text_dir.glob("*.txt")):  # binary.bin (NUL bytes) is skipped
        h = int.from_bytes(hashlib.md5(path.name.encode()).digest()[:4], "little") % 1000
        docs["train" if h < 900 else "val" if h < 950 else "probe"].append(path.read_bytes())
    assert docs["val"] == []  # 40 documents: none hashes into val, which borrows the last training document
    for name in ("val", "probe"):
        docs[name] = docs[name] or docs["train"][-1:]
    for name, texts in docs.items():  # byte ids, documents joined by a NUL byte
        np.testing.assert_array_equal(c.split(name), np.frombuffer(b"\x00".join(texts), dtype=np.uint8))
    c2 = load_corpus(str(text_dir))
    assert np.array_equal(c.train, c2.train)
    assert split_of("a/b.py") == split_of("a/b.py")
    with pytest.raises(CorpusError):
        load_corpus(str(text_dir / "nope"))


def test_stdlib_corpus_split_is_deterministic():
    c = load_corpus("stdlib", max_bytes=2_000_000)
    assert sum(len(c.split(s)) for s in ("train", "val", "probe")) >= 2_000_000
    assert c.train.max() < 256
    assert np.array_equal(c.val, load_corpus("stdlib", max_bytes=2_000_000, use_cache=False).val)


def test_bpe_tokenizer(text_dir):
    c = load_corpus(str(text_dir), tokenizer="bpe", bpe_vocab=300)
    assert 256 < c.vocab_size <= 300 and c.train.max() < c.vocab_size
    assert len(c.train) < len(load_corpus(str(text_dir)).train)  # merges shorten the text


def test_lr_schedule():
    cfg = TrainConfig(steps=110, lr=1.0, warmup=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0) and lr_at(60, cfg) == pytest.approx(0.55)
    assert lr_at(110, cfg) == pytest.approx(0.1)
    const = TrainConfig(steps=110, lr=1.0, warmup=10, schedule="constant")
    assert lr_at(100, const) == 1.0


@pytest.mark.parametrize("positions,tied,activation,norm", [("learned", True, "gelu", "rms"), ("rope", False, "relu2", "layer")])
def test_model_variants_forward(positions, tied, activation, norm):
    cfg = GPTConfig(vocab_size=40, seq_len=12, n_layer=2, n_head=2, d_model=16, positions=positions, tied=tied,
                    activation=activation, norm=norm)
    m = GPT(cfg)
    x = torch.randint(0, 40, (3, 12))
    logits, loss = m(x, x)
    assert logits.shape == (3, 12, 40)
    picked = torch.log_softmax(logits.double(), -1).gather(-1, x[..., None])  # the target's log-probability
    assert loss.item() == pytest.approx(-picked.mean().item(), rel=1e-5)
    assert (m.lm_head.weight is m.tok_emb.weight) == tied
    assert len(m.hidden_states(x)) == 2
    # causal: the first position's output ignores later tokens
    y = x.clone()
    y[:, 5:] = (y[:, 5:] + 1) % 40
    assert torch.allclose(m(y)[0][:, :5], logits[:, :5], atol=1e-5)


def test_train_end_to_end(text_dir, tmp_path):
    mcfg = GPTConfig(seq_len=32, n_layer=2, n_head=2, d_model=32)
    tcfg = TrainConfig(steps=12, micro_batch=4, grad_accum=2, eval_every=6, probe_every=5, corpus=str(text_dir),
                       warmup=2, ckpt_every=6)
    res = train(mcfg, tcfg, tmp_path / "run", progress=False)
    assert res.tokens == 12 * 4 * 2 * 32
    run = ss.open_run(tmp_path / "run")
    assert set(run.metrics()["step"]) == {0, 5, 10, 12}  # init, schedule, and always the final model
    sc = run.scalars()
    assert {"loss", "val_loss", "lr", "tokens_per_s", "grad_norm"} <= set(sc.columns)
    assert sc["val_loss"].dropna().size == 3  # step 0, 6, 12
    ckpts = sorted((tmp_path / "run" / "checkpoints").glob("*.safetensors"))
    assert [p.name for p in ckpts] == ["step_0000006.safetensors", "step_0000012.safetensors"]
    with safe_open(str(ckpts[-1]), "pt") as f:
        cfg = GPTConfig(**json.loads(f.metadata()["config"]))
    fresh = GPT(cfg)
    load_model(fresh, str(ckpts[-1]))
    assert run.config["train"]["grad_accum"] == 2 and run.meta["summary"]["tokens"] == res.tokens

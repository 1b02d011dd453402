"""The sosd and lifecycle experiments in their quick modes, and `specscope prune`."""
import json

import pandas as pd
import pytest
import torch

from specscope.cli import main


def test_sosd_experiment_quick(tmp_path, capsys):
    assert main(["experiment", "sosd", "--quick", "--out", str(tmp_path / "s"), "--no-progress"]) == 0
    table = pd.read_csv(tmp_path / "s" / "sosd.csv")
    assert list(table["variant"]) == ["cosine", "step", "muon"] and (tmp_path / "s" / "sosd.png").exists()
    assert table["floor_per_step"].notna().all() and table["final_val_loss"].notna().all()
    claims = pd.read_csv(tmp_path / "s" / "sosd_claims.csv")
    assert "Muon's SD-variation floor is below AdamW's" in set(claims["claim"])
    assert "reproduced" in capsys.readouterr().out
    assert main(["findings", str(tmp_path / "s" / "step")]) == 0
    assert "Stability of the singular distribution" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "s" / "step")]) == 0
    page = (tmp_path / "s" / "step" / "report.html").read_text()
    for section in ("SoSD onset and the loss knee", "Compression per layer and step", "Compression wave across depth",
                    "Depth profile of"):
        assert section in page


def test_lifecycle_experiment_quick_and_prune(tmp_path, capsys):
    assert main(["experiment", "lifecycle", "--quick", "--out", str(tmp_path / "l"), "--no-progress"]) == 0
    table = pd.read_csv(tmp_path / "l" / "lifecycle.csv")
    assert list(table["depth"]) == [2, 3] and (tmp_path / "l" / "lifecycle.png").exists()
    pruning = pd.read_csv(tmp_path / "l" / "pruning.csv")
    assert set(pruning["rule"]) == {"spectral", "last_n", "random"}
    capsys.readouterr()
    assert main(["prune", str(tmp_path / "l" / "L3"), "--sequences", "4", "--seq-len", "16", "--random-seeds", "2",
                 "--max-corpus-mb", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["importance"]) == 3 and "Last-N / spectral" in doc["verdict"]["verdict"]
    assert (tmp_path / "l" / "L3" / "artifacts" / "pruning" / "summary.parquet").exists()
    assert main(["findings", str(tmp_path / "l" / "L3"), "--json"]) == 0
    names = [f["name"] for f in json.loads(capsys.readouterr().out)]
    assert names[-1] == "pruning" and "compression_waves" in names
    assert main(["report", str(tmp_path / "l" / "L3")]) == 0
    assert "Layer importance and pruning" in (tmp_path / "l" / "L3" / "report.html").read_text()


def test_prune_hf_directory_and_bad_input(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=300, n_positions=32, n_embd=32, n_layer=4, n_head=2))
    model.save_pretrained(tmp_path / "gpt2", safe_serialization=True)
    assert main(["prune", str(tmp_path / "gpt2"), "--k", "1,2", "--sequences", "4", "--seq-len", "32", "--random-seeds", "2",
                 "--max-corpus-mb", "1"]) == 0
    out = capsys.readouterr().out
    assert "last_n" in out and "Spearman rho" in out
    assert main(["prune", str(tmp_path / "missing")]) == 2
    assert "no such file" in capsys.readouterr().err

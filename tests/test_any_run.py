"""findings / report / prune on runs of models that are not the reference GPT (SPEC section 5: every analysis
runs on any model's run and says what the run lacks): the README's plain MLP (with and without tokens), a deeper
MLP, a small CNN (kind ``conv``) and an LSTM (kinds ``rnn_ih`` / ``rnn_hh``, one part per gate)."""
import json
import re

import numpy as np
import pytest
import torch
from torch import nn

import specscope as ss
from specscope.analysis.edge import edge_analysis, phases
from specscope.analysis.sosd import loss_knee
from specscope.cli import main

STEPS, EVERY = 40, 10  # weight measurements at 0, 10, 20, 30; trajectory windows at 10, 20, 30


def _train(model: nn.Module, run_dir, batch, loss_fn, tokens: bool = True, **extra) -> ss.Run:
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    seen = 0
    probes = [ss.probes.Weights(every=EVERY), ss.probes.Trajectory(window=8, every=EVERY)]
    with ss.Monitor(model, run_dir, probes=probes) as mon:
        for step in range(STEPS):
            x, y = batch()
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(x)
            mon.step(step, loss=loss.item(), **({"tokens": seen} if tokens else {}), **extra)
    return ss.open_run(run_dir)


def _mlp_batch():
    x = torch.randn(16, 32)
    return x, x[:, :8]


def _mse(out, y):
    return (out - y).pow(2).mean()


class _CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).mean((2, 3)))


class _LSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm, self.fc = nn.LSTM(8, 16, batch_first=True), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(self.lstm(x)[0][:, -1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, ss.Run]:
    root = tmp_path_factory.mktemp("any")
    torch.manual_seed(0)
    ce = nn.functional.cross_entropy
    deep = nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(48, 48), nn.GELU())], nn.Linear(48, 48))
    return {
        # the README example (plus the trajectory probe)
        "mlp": _train(nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 8)), root / "mlp", _mlp_batch, _mse),
        "mlp_notok": _train(nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 8)), root / "mlp_notok", _mlp_batch, _mse,
                            tokens=False),
        "deep": _train(deep, root / "deep", lambda: (torch.randn(16, 48), torch.randint(0, 48, (16,))), ce, lr=1e-3),
        "cnn": _train(_CNN(), root / "cnn", lambda: (torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))), ce),
        "lstm": _train(_LSTM(), root / "lstm", lambda: (torch.randn(8, 5, 8), torch.randint(0, 4, (8,))), ce),
    }


def _by_name(run) -> dict:
    return {f.name: f for f in ss.findings(run)}


def test_runs_have_the_catalog_the_analyses_rely_on(runs):
    kinds = {k: set(r.metrics(probe="weights")["kind"]) for k, r in runs.items()}
    assert kinds["mlp"] == {"other"} and kinds["cnn"] == {"conv", "other"} and kinds["lstm"] == {"rnn_ih", "rnn_hh", "other"}
    parts = runs["lstm"].metrics(probe="weights", kind="rnn_hh").groupby("layer")["part"].unique()
    assert sorted(parts.loc[0]) == [0, 1, 2, 3]


def test_findings_on_the_readme_mlp_say_what_is_missing(runs):
    f = _by_name(runs["mlp"])
    assert list(f) == ["sosd", "compression_waves", "depth_profile", "spectral_edge", "pruning"]
    sosd = f["sosd"].verdict
    loss = runs["mlp"].scalars()[["step", "tokens", "loss"]].dropna(subset=["loss"])
    knee = loss_knee(loss["step"].to_numpy(), loss["loss"].to_numpy(), 0.1, 0.05, loss["tokens"].to_numpy(float))
    assert sosd["applies"] and sosd["knee_loss"] == "loss" and sosd["knee"] == knee and isinstance(knee, int)
    assert "no validation loss logged: loss knee on the training loss" in sosd["missing"]
    assert "no tokens logged" not in sosd["verdict"]
    assert "no learning rate logged: onset on the raw SD variation, no stability bound lr / ||W||_*" in sosd["missing"]
    assert "no paired measurements (t, t+1) for 2 of 2 matrices" in sosd["verdict"] and not sosd["paired"]
    assert set(f["sosd"].table["layer"]) == {0, 1} and (f["sosd"].table["part"] == -1).all()
    waves = f["compression_waves"].verdict
    assert not waves["applies"] and waves["verdict"].startswith("only 2 layers: a compression wave across depth needs >= 3")
    assert "no transformer blocks: layers 0..1 are the weight layers in order of depth (kinds other)" in waves["verdict"]
    prof = f["depth_profile"].verdict
    # the 64 -> 8 matrix has 8 singular values: no tail window, so alpha_tail is finite at layer 0 only
    assert not prof["applies"] and prof["n_layers"] == 2 and prof["n_layers_finite"] == 1
    assert prof["verdict"].startswith("only 1 layer with a finite alpha_tail (of 2): a depth profile of alpha_tail needs >= 4")
    assert "alpha_tail is NaN at layer 1 (other): no tail window fits a spectrum of length 8" in prof["verdict"]
    assert "no q, k and v, o matrices: no Q/K-V/O asymmetry" in prof["verdict"]
    assert f["pruning"].verdict["verdict"] == "no transformer blocks in this run: layer importance needs block skipping"
    assert "no validation loss logged: no lagged correlation" in f["spectral_edge"].verdict["verdict"]


def test_edge_analysis_gives_its_per_window_table_on_the_mlp(runs):
    run = runs["mlp"]
    table, events, verdict = edge_analysis(run)
    assert table["step"].tolist() == [10, 20, 30]  # the window at step 0 holds no update yet
    stored = run.metrics(probe="trajectory", metric="gap_ratio").query("name == 'global'").dropna(subset=["value"])
    np.testing.assert_allclose(table["gap_ratio"].to_numpy(), stored.sort_values("step")["value"].to_numpy())
    spec = run.spectra(probe="trajectory").query("name == 'global'").set_index("step")["values"]
    for r in table.itertuples():  # kstar: where the stored window spectrum has its largest consecutive ratio
        sv = np.asarray(spec[r.step])
        assert r.kstar == np.argmax(sv[:-1] / sv[1:]) + 1 and r.gap_ratio == pytest.approx(np.max(sv[:-1] / sv[1:]))
    assert table["phase"].tolist() == phases(table["gap_ratio"].to_numpy()).tolist()  # the rule test_edge checks
    assert verdict["applies"] and verdict["windows"] == 3 and verdict["best_lag"] is None
    assert verdict["peak_gap_ratio"] == pytest.approx(table["gap_ratio"].max())
    assert "val_loss" not in table


def test_no_tokens_is_said(runs):
    v = _by_name(runs["mlp_notok"])["sosd"].verdict
    assert "no tokens logged: loss-decrease rate per step" in v["verdict"]
    path = ss.write_report(runs["mlp_notok"].dir)
    assert "no tokens logged: loss against steps" in path.read_text()


def test_a_deeper_mlp_gets_its_wave_and_depth_profile(runs):
    f = _by_name(runs["deep"])
    waves, prof = f["compression_waves"], f["depth_profile"]
    assert waves.applies and waves.verdict["n_layers"] == 5
    assert waves.verdict["direction"] in ("early -> late", "late -> early", "not significant")
    assert waves.table["step"].tolist() == [0, 10, 20, 30]
    alpha = runs["deep"].metrics(probe="weights", metric="alpha_tail").query("layer >= 0")
    profile = alpha[alpha["step"] == alpha["step"].max()].groupby("layer")["value"].mean()
    assert prof.applies and prof.verdict["n_layers_finite"] == 5 and prof.verdict["peak_layer"] == profile.idxmax()
    assert re.match(r"alpha_tail depth profile: (inverted U|U|monotone|no shape) \(curvature .*\), peak at layer \d", prof.verdict["verdict"])
    assert "no learning rate logged" not in f["sosd"].verdict["verdict"]  # lr was logged: the bound is there
    spec = runs["deep"].spectra(probe="weights")
    # the last sample is the interval (20, 30), indexed at 20: lr / ||W_20||_*
    nuclear = spec[spec["step"] == 20].set_index("name")["values"].map(np.sum)
    bound = f["sosd"].table.set_index("name")["bound_final"]
    assert bound.to_dict() == pytest.approx((1e-3 / nuclear[bound.index]).to_dict(), rel=1e-9)


def test_cnn_and_lstm_findings(runs):
    cnn = _by_name(runs["cnn"])
    assert cnn["compression_waves"].applies and "kinds conv, other" in cnn["compression_waves"].verdict["verdict"]
    prof = cnn["depth_profile"]
    assert prof.verdict["verdict"].startswith("only 2 layers with a finite alpha_tail (of 3)")
    assert set(prof.table["kind"]) == {"conv", "other"}
    conv = runs["cnn"].metrics(probe="weights", metric="alpha_tail", kind="conv")
    final = conv[conv["step"] == conv["step"].max()].groupby("layer")["value"].mean()  # the last measurement per layer
    assert np.isfinite(final).all()  # pooled conv spectra have a tail
    assert prof.table.set_index("kind").loc["conv", "values"] == pytest.approx(final.round(4).tolist(), abs=1e-12)
    lstm = _by_name(runs["lstm"])
    sosd = lstm["sosd"].table
    assert sorted(sosd.query("kind == 'rnn_hh'")["part"]) == [0, 1, 2, 3]  # one row per gate, never averaged
    assert lstm["depth_profile"].table.set_index("kind").loc["rnn_ih", "parts"] == 4
    note = "parts of one layer (experts, gates) averaged per layer: rnn_hh (4 parts), rnn_ih (4 parts)"
    assert note in lstm["depth_profile"].verdict["verdict"] and note in lstm["compression_waves"].verdict["verdict"]
    for f in (cnn, lstm):
        assert f["pruning"].verdict["verdict"] == "no transformer blocks in this run: layer importance needs block skipping"


def test_paired_lstm_run_gets_a_sosd_verdict(tmp_path):
    torch.manual_seed(0)
    model = _LSTM()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with ss.Monitor(model, tmp_path / "p", probes=[ss.probes.Weights(every=5, paired=True)]) as mon:
        for step in range(40):
            x, y = torch.randn(8, 5, 8), torch.randint(0, 4, (8,))
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(step, loss=loss.item(), lr=1e-2, **({"val_loss": loss.item()} if step % 4 == 0 else {}))
    f = _by_name(ss.open_run(tmp_path / "p"))["sosd"]
    table, v = f.table, f.verdict
    assert v["applies"] and v["paired"] and v["knee_loss"] == "val_loss" and table["paired"].all()
    assert not any("paired" in m for m in v["missing"]) and "no learning rate" not in v["verdict"]
    assert set(table["kind"]) >= {"rnn_ih", "rnn_hh"} and np.isfinite(table["floor_lr"]).all()
    assert (table["bound_final"] > 0).all()


def test_waves_per_kind_and_alpha_variants_without_blocks(runs):
    from specscope.analysis.lifecycle import sv_decay_alpha
    from specscope.analysis.waves import compression_frame, half_step

    deep = _by_name(runs["deep"])
    w = deep["compression_waves"].verdict
    assert set(w["by_kind"]) == {"other"}  # every kind of a model without blocks
    comp = compression_frame(runs["deep"]).query("kind == 'other'").pivot_table(index="step", columns="layer",
                                                                                  values="compression")
    t50 = [half_step(comp.index.to_numpy(float), comp[c].to_numpy()) for c in comp.columns]  # brute force per layer
    np.testing.assert_allclose(w["by_kind"]["other"]["t50"], np.round(t50, 3), equal_nan=True)
    variants = deep["depth_profile"].verdict["variants"]
    assert set(variants) == {"alpha_sv", "alpha_weighted", "alpha_mle"}
    spec = runs["deep"].spectra(probe="weights").query("layer >= 0")
    spec = spec[spec["step"] == spec["step"].max()]
    ref = np.median([sv_decay_alpha(v) for v in spec["values"]])  # each layer one matrix: the median over layers
    assert variants["alpha_sv"]["median"] == pytest.approx(ref, abs=5e-5)  # the table keeps 4 decimals
    assert "paper's Weighted Alpha range 0.1-0.55: matched by" in deep["depth_profile"].verdict["verdict"]
    cnn = _by_name(runs["cnn"])["compression_waves"].verdict  # conv: 2 layers, other: 1; pooled over 3 layers
    assert cnn["by_kind"] == {} and "conv: only 2 layers, no wave of its own" in cnn["verdict"]


@pytest.mark.parametrize("name", ["mlp", "cnn", "lstm"])
def test_cli_findings_and_report(runs, name, capsys):
    d = str(runs[name].dir)
    assert main(["findings", d]) == 0
    out = capsys.readouterr().out
    for title in ("Stability of the singular distribution", "Compression waves across depth", "Depth profile of alpha_tail",
                  "Trajectory gap dynamics", "Layer importance and pruning"):
        assert f"== {title}" in out
    assert "no transformer blocks in this run: layer importance needs block skipping" in out
    assert main(["findings", d, "--json"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert main(["report", d]) == 0
    page = (runs[name].dir / "report.html").read_text()
    for section in ("Loss", "Stable rank per layer and step", "SoSD onset and the loss knee", "Compression wave across depth",
                    "Depth profile of alpha_tail", "Layer importance and pruning", "Trajectory gap ratio and phases"):
        assert f"<h2>{section}" in page
    missing = re.findall(r'<p class="note missing">(.*?)</p>', page)
    assert "no transformer blocks in this run: layer importance needs block skipping" in missing
    assert any(m.startswith("only ") and "a depth profile of alpha_tail needs &gt;= 4" in m for m in missing)
    assert page.count("<svg") >= 8  # loss, weights, SoSD, compression, trajectory figures
    if name == "mlp":  # 2 layers: the wave is one line; the CNN (3 layers) gets its figure
        assert any(m.startswith("only 2 layers: a compression wave") for m in missing)
    if name == "cnn":
        assert not any("compression wave" in m for m in missing)


def test_findings_json_exposes_onset_knee_and_wave_velocities(runs, capsys):
    assert main(["findings", str(runs["deep"].dir), "--json"]) == 0
    doc = {f["name"]: f["verdict"] for f in json.loads(capsys.readouterr().out)}
    sosd, waves = doc["sosd"], doc["compression_waves"]
    assert {"onset_median", "knee", "knee_loss"} <= set(sosd) and sosd["knee_loss"] in ("val_loss", "loss")
    assert set(waves["by_kind"]) == {"other"}
    assert {"velocity", "velocity_ci_lower", "velocity_ci_upper", "direction"} <= set(waves["by_kind"]["other"])


def test_prune_refuses_a_model_without_blocks_in_one_line(runs, tmp_path, capsys):
    assert main(["prune", str(runs["mlp"].dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("specscope: error: ")
    assert "no transformer blocks in this run: layer importance needs block skipping" in err[0]
    from safetensors.torch import save_file

    mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 8))
    save_file({k: v.contiguous() for k, v in mlp.state_dict().items()}, str(tmp_path / "mlp.safetensors"))
    assert main(["prune", str(tmp_path / "mlp.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a specscope checkpoint" in err[0]
    with pytest.raises(ss.SpecscopeError, match="no transformer blocks in this model"):
        ss.prune.pruning_study(mlp, torch.randint(0, 8, (4, 16)))


def test_prune_on_a_run_with_blocks_but_no_checkpoints(tmp_path, capsys):
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2)
    run = _train(nn.Sequential(enc, nn.Flatten(), nn.Linear(4 * 16, 4)), tmp_path / "enc",
                 lambda: (torch.randn(8, 4, 16), torch.randint(0, 4, (8,))), nn.functional.cross_entropy)
    f = _by_name(run)
    assert f["pruning"].verdict["verdict"].startswith("not measured: `specscope prune RUN`")
    assert main(["prune", str(run.dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the run kept no checkpoints" in err[0]


def test_forecast_on_runs_without_batch_sizes_val_loss_or_activation_spectra(runs, capsys):
    from specscope.analysis.lens import forecast

    table, v = forecast([runs["mlp"], runs["cnn"], runs["lstm"]])
    assert not v["applies"] and v["target"] is None and v["window"] is None and v["rho_within_family"] is None
    assert v["verdict"] == ("no validation loss logged: no T(B), eps_tok or rho (give a token budget to rank only); "
                            "no activation spectra stored: no early tail exponent (add the Activations probe); "
                            "3 run(s) without a batch size in their config (train.micro_batch or batch)")
    assert len(table) == 3 and table["early_alpha"].isna().all() and not table["censored"].any()
    assert main(["forecast", str(runs["mlp"].dir)]) == 0
    assert "no activation spectra stored" in capsys.readouterr().out


def test_taxonomy_on_runs_without_losses_or_lens_probes_is_unscored(runs):
    from specscope.analysis.lens import taxonomy, taxonomy_over_seeds

    tables = [taxonomy([runs["mlp"], runs["cnn"], runs["lstm"]], target=1.0, names=["mlp", "cnn", "lstm"]) for _ in range(2)]
    assert tables[0]["label"].tolist() == ["unscored", "unscored"]  # no validation loss: no T, said, not raised
    summary = taxonomy_over_seeds(tables)
    assert summary["label"].tolist() == ["unscored", "unscored"] and (summary["seeds"] == 0).all()


def test_grok_step_of_an_mlp_run_ignores_a_lucky_evaluation(tmp_path):
    from specscope.report.edge_figures import grokking

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
    accs = {10: 0.2, 20: 0.97, 30: 0.6, 40: 0.96, 50: 0.99}  # lucky at 20, then a drop: the grok step is 40
    with ss.Monitor(model, tmp_path / "g", probes=[ss.probes.Weights(every=10)]) as mon:
        for step in range(1, 51):
            extra = {"train_acc": 1.0, "test_acc": accs[step]} if step in accs else {}
            mon.step(step, loss=1.0 / step, **extra)
    run = ss.open_run(tmp_path / "g")
    fig = grokking(run.scalars(), run.metrics())
    assert "grok step 40" in fig.axes[0].get_title()

"""The HTML report on runs of any model: numbers through one formatter (at most 6 significant digits in any table
cell), every scalar under Hugging Face's names too, every probe's metrics (a custom probe's included), no failure on
MoE / empty / one-step runs, several runs overlaid in one report, figures as inline SVG with file export; progress
lines off a terminal; ``--help`` with defaults."""
import io
import re
from html.parser import HTMLParser

import pytest
import torch
from torch import nn

import specscope as ss
from specscope import progress
from specscope.cli import main
from specscope.report.format import fmt, unit_of
from specscope.report.scalar_figures import group_of, panels

STEPS = 12


class WeightNorm(ss.probes.Probe):
    """A custom probe: the Frobenius norm of the first layer's weight (metric ``w0_norm``)."""

    name = "wnorm"
    needs = frozenset({"parameters"})

    def measure(self, ctx):
        m = ss.probes.Measurement()
        m.add_metric(0, "other", "0.weight", "w0_norm", float(ctx.model[0].weight.detach().norm()))
        return m


def _mlp_run(path, run_id="mlp", steps=STEPS, tokens=True, probes=None):
    """An MLP trained ``steps`` steps with the weight probe and :class:`WeightNorm`, logging HF-named scalars; the
    opened run and the first layer's weight norm after each step (step -> norm)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 8))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    probes = [ss.probes.Weights(every=4), WeightNorm(every=4)] if probes is None else probes
    norms = {}
    with ss.Monitor(model, path, probes=probes, run_id=run_id) as mon:
        for step in range(steps):
            x = torch.randn(16, 32)
            loss = (model(x) - x[:, :8]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            norms[step] = float(torch.linalg.matrix_norm(model[0].weight.detach().double()))
            mon.step(step, loss=loss.item(), **({"tokens": 16 * (step + 1)} if tokens else {}))
            mon.log(step, learning_rate=1e-3 * (1 - step / steps), grad_norm=1.0 + step / 7, epoch=step / 6)
            if step % 4 == 3:
                mon.log(step, eval_loss=loss.item() * 1.1 + 1 / 3)
    return ss.open_run(path), norms


class _Cells(HTMLParser):
    """Every table cell's text (``<td>``)."""

    def __init__(self):
        super().__init__()
        self.cells, self._in = [], False

    def handle_starttag(self, tag, attrs):
        if tag == "td":
            self._in = True
            self.cells.append("")

    def handle_endtag(self, tag):
        if tag == "td":
            self._in = False

    def handle_data(self, data):
        if self._in:
            self.cells[-1] += data


def _significant_digits(number: str) -> int:
    mantissa = re.split(r"[eE]", number)[0].replace(",", "").replace(".", "").lstrip("0")
    return len(mantissa)


def _max_digits(page: str) -> tuple[int, str]:
    parser = _Cells()
    parser.feed(page)
    worst = (0, "")
    for cell in parser.cells:
        for num in re.findall(r"\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?", cell):
            worst = max(worst, (_significant_digits(num), cell))
    return worst


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    return _mlp_run(tmp_path_factory.mktemp("rep") / "mlp")


def test_fmt_known_answers():
    assert fmt(1 / 3) == "0.3333" and fmt(1 / 3, digits=9) == "0.333333" and fmt(1 / 3, digits=0) == "0.3"
    assert fmt(2457600, "tokens") == "2.458M tokens" and fmt(1200, "steps") == "1200 steps" and fmt(123456) == "123.5k"
    assert fmt(6e-5) == "6e-5" and fmt(-1.23456e-7) == "-1.235e-7" and fmt(0) == "0" and fmt(162.149, "s") == "162.1 s"
    assert fmt(float("nan")) == "–" and fmt(None) == "–" and fmt(True) == "True" and fmt("q") == "q"
    assert fmt(float("inf")) == "∞"
    assert unit_of("probe_seconds/weights") == "s" and unit_of("tokens_per_s") == "tokens/s" and unit_of("step") == "steps"
    assert unit_of("eval_runtime") == "s" and unit_of("eval_samples_per_second") == "/s" and unit_of("loss") is None


def test_scalars_are_grouped_under_any_name():
    names = ["loss", "eval_loss", "val_loss", "learning_rate", "lr", "lr_hidden", "grad_norm", "epoch",
             "probe_seconds/weights", "probe_seconds/wnorm", "tokens_per_s", "eval_samples_per_second", "eval_runtime",
             "test_acc", "h_s"]
    assert {n: group_of(n) for n in names} == {
        "loss": "loss", "eval_loss": "loss", "val_loss": "loss", "learning_rate": "learning rate", "lr": "learning rate",
        "lr_hidden": "learning rate", "grad_norm": "gradient norm", "epoch": "epoch", "probe_seconds/weights": "probe time",
        "probe_seconds/wnorm": "probe time", "tokens_per_s": "throughput", "eval_samples_per_second": "throughput",
        "eval_runtime": "runtime", "test_acc": "accuracy", "h_s": "h_s"}
    assert [g for g, _ in panels(names)] == ["loss", "learning rate", "gradient norm", "accuracy", "epoch", "throughput",
                                             "probe time", "runtime", "h_s"]
    assert dict(panels(names))["loss"] == ["eval_loss", "loss", "val_loss"]


def test_report_of_a_plain_model_shows_hf_scalars_and_the_custom_probe(mlp, tmp_path):
    run, norms = mlp
    path = ss.write_report(run.dir, tmp_path / "r.html", figures="png")
    page = path.read_text()
    for needle in ("eval_loss", "learning_rate", "grad_norm", "epoch", ">learning rate<", "<h2>Probe wnorm: metrics over steps",
                   "<h2>Probe wnorm: values at step 8", "w0_norm", "<h2>Loss and training scalars"):
        assert needle in page, needle
    assert f"<td>{fmt(norms[8])}</td>" in page  # the custom probe's value at its last measurement (step 8)
    assert "data:image/png" not in page.split("<svg", 1)[0] and page.count("<svg") >= 6
    assert "could not draw" not in page
    digits, cell = _max_digits(page)
    assert digits <= 6, f"{cell!r} has {digits} significant digits"
    files = sorted(p.name for p in (tmp_path / "r_figures").iterdir())
    assert len(files) == page.count("<svg") and files[0] == "01-loss-and-training-scalars.png"


def test_custom_probe_value_is_the_measured_norm(mlp):
    """The latest-values table holds the norm at step 8 (the last measurement of 12 steps), as computed in the loop."""
    from specscope.report.probe_figures import latest_values

    run, norms = mlp
    table = latest_values(run.metrics(), "wnorm")
    assert table["w0_norm"].tolist() == [pytest.approx(norms[8], rel=1e-6)] and table["status"].tolist() == ["ok"]
    assert table[["layer", "kind", "part", "name"]].values.tolist() == [[0, "other", -1, "0.weight"]]


def test_loss_against_steps_without_tokens(tmp_path):
    run, _ = _mlp_run(tmp_path / "notok", tokens=False, probes=[])
    page = ss.write_report(run.dir).read_text()
    assert "no tokens logged: loss against steps" in page
    section = page.split("<h2>Loss and training scalars</h2>", 1)[1].split("</section>", 1)[0]
    assert "<svg" in section and ">step<" in section and ">tokens<" not in section


class _Experts(nn.Module):
    """A packed expert stack (``n_experts x 2f x d`` gate/up, ``n_experts x d x f`` down), as MoE models hold it."""

    def __init__(self, e=4, d=8, f=6):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.randn(e, 2 * f, d) * 0.3)
        self.down_proj = nn.Parameter(torch.randn(e, d, f) * 0.3)

    def forward(self, x):
        g, u = torch.einsum("bd,efd->bef", x, self.gate_up_proj).chunk(2, -1)
        return torch.einsum("bef,edf->bd", torch.relu(g) * u, self.down_proj) / len(self.down_proj)


class _MoE(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(2):
            block = nn.Module()
            block.mlp = nn.Module()
            block.mlp.gate, block.mlp.experts = nn.Linear(d, 4, bias=False), _Experts(d=d)
            self.layers.append(block)

    def forward(self, x):
        for b in self.layers:
            x = x + b.mlp.experts(x)
        return x


def test_moe_empty_and_one_step_runs_render(tmp_path):
    torch.manual_seed(0)
    moe = _MoE()
    with ss.Monitor(moe, tmp_path / "moe", probes=[ss.probes.Weights(every=2)]) as mon:
        for step in range(5):
            x = torch.randn(16, 8)
            loss = (moe(x) - x).pow(2).mean()
            loss.backward()
            mon.step(step, loss=loss.item())
    m = ss.open_run(tmp_path / "moe").metrics(probe="weights")
    assert m.groupby("kind")["part"].nunique().to_dict()["mlp_in"] == 4  # one matrix per expert
    assert m[m["metric"] == "alpha_tail"]["value"].isna().all()  # spectra of 6-12 values: no tail window
    page = ss.write_report(tmp_path / "moe").read_text()
    assert "α_tail is NaN for every hidden matrix" in page and "could not draw" not in page
    with ss.Monitor(nn.Linear(4, 4), tmp_path / "empty"):
        pass
    page = ss.write_report(tmp_path / "empty").read_text()
    assert "this run holds no scalars and no probe measurements yet" in page and "no scalars logged" in page
    run, _ = _mlp_run(tmp_path / "one", steps=1)
    page = ss.write_report(run.dir).read_text()
    assert "<h2>Probe wnorm: values at step 0" in page and "could not draw" not in page
    run, _ = _mlp_run(tmp_path / "scalars_only", probes=[])
    page = ss.write_report(run.dir).read_text()
    assert "no weight-probe measurements in this run" in page and page.count("<svg") == 1


def test_two_runs_overlaid(mlp, tmp_path, capsys):
    run, _ = mlp
    other, _ = _mlp_run(tmp_path / "b", run_id="other-run", steps=8)
    out = tmp_path / "both.html"
    assert main(["report", str(run.dir), str(other.dir), "--out", str(out), "--figures", "svg"]) == 0
    assert sorted(p.name for p in (tmp_path / "both_figures").iterdir()) == [
        "01-loss-and-training-scalars.svg", "02-weight-metrics-over-steps-per-kind.svg"]
    page = out.read_text()
    assert "2 runs · mlp vs other-run" in page and "<h2>Weight metrics over steps per kind" in page
    figure = page.split("<h2>Loss and training scalars</h2>", 1)[1].split("</section>", 1)[0]
    assert ">mlp · loss" in figure and ">other-run · loss" in figure and ">other-run · eval_loss" in figure
    side = page.split("<h2>Latest values side by side</h2>", 1)[1]
    assert "<th>mlp</th>" in side and "<th>other-run</th>" in side and "w0_norm" not in side
    assert _max_digits(page)[0] <= 6
    assert "report: " + str(out) in capsys.readouterr().out


def test_progress_lines_off_a_terminal():
    buf = io.StringIO()
    assert isinstance(progress.bar(100, "train", "step", stream=buf), progress.LineProgress)
    with progress.bar(100, "train", "step", stream=buf) as bar:
        for i in range(100):
            bar.set_postfix(loss=f"{1 / (i + 1):.2f}")
            bar.update(1)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 10 and lines[0].startswith("train: 10/100 step (10%), ") and lines[0].endswith("loss=0.10")
    assert lines[-1].startswith("train: 100/100 step (100%)")
    buf = io.StringIO()
    assert list(progress.track(range(3), "runs", "run", stream=buf)) == [0, 1, 2]
    assert buf.getvalue().splitlines()[-1].startswith("runs: 3/3 run (100%)")
    assert list(progress.track(range(3), "quiet", enabled=False, stream=buf)) == [0, 1, 2]

    class Tty(io.StringIO):
        def isatty(self):
            return True

    from tqdm import tqdm

    assert isinstance(progress.bar(3, "t", stream=Tty()), tqdm)


def test_help_shows_defaults(capsys):
    assert main(["analyze", "--help"]) == 0
    out = capsys.readouterr().out
    assert "default: gram" in out and "(default: 0)" in out and "(default: None)" not in out
    assert main(["report", "--help"]) == 0
    assert "--figures {png,pdf,svg}" in capsys.readouterr().out
    assert main(["train", "--help"]) == 0
    assert "default: 1000" in capsys.readouterr().out


def test_a_figure_that_fails_to_draw_is_one_line():
    from specscope.report.page import Page

    page = Page("t")

    def broken():
        raise ValueError("all-NaN axis")

    page.section("Broken", broken, missing="unused")
    page.section("Absent", None, missing="no data here")
    text = page.html()
    assert '<p class="note missing">could not draw this figure: ValueError: all-NaN axis</p>' in text
    assert '<p class="note missing">no data here</p>' in text

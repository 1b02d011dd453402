"""Where users look from a notebook or a terminal: number formatting, ``Run._repr_html_``, ``describe`` as a table,
and ``specscope watch`` on finished and live runs."""
from __future__ import annotations

import io
import re
import threading
import time

import numpy as np
import pytest
import torch

import specscope as ss
from specscope.cli import main
from specscope.numbers import sig
from specscope.report.live import frame, spark, watch


def _train(run_dir, steps: int = 8, close: bool = True):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv1d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(48, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = ss.Monitor(model, run_dir, probes=[ss.probes.Weights(every=2)], flush_every_s=0)
    for s in range(steps):
        loss = model(torch.randn(5, 3, 8)).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        mon.step(s, loss=loss.item(), tokens=40 * (s + 1))
        mon.log(s, learning_rate=0.1 / (s + 1), eval_loss=1.23456789)
    if close:
        mon.close()
    return mon


def test_sig_known_answers():
    assert sig(3.14159265) == "3.142" and sig(0.000123456) == "0.0001235" and sig(1234) == "1234"
    assert sig(123456) == "123.5k" and sig(1234567) == "1.235M" and sig(2.5e9, 2) == "2.5G"
    assert sig(float("nan")) == "–" and sig(None) == "–" and sig(float("-inf")) == "−∞" and sig(6e-5) == "6e-5"
    assert sig(np.float32(2.0)) == "2" and sig(torch.tensor(0.5)) == "0.5" and sig(torch.ones(2)) == str(torch.ones(2))
    assert sig(1.5, unit="s") == "1.5 s" and sig("x") == "x" and sig(1 / 3, 20) == "0.333333"  # at most 6 digits


def _cells(html: str) -> list[str]:
    return [re.sub("<[^>]+>", "", c) for c in re.findall(r"<td>(.*?)</td>", html, flags=re.S)]


def test_run_repr_html_shows_probes_scalars_and_latest_metrics(tmp_path):
    _train(tmp_path / "r")
    html = ss.open_run(tmp_path / "r")._repr_html_()
    assert "weights" in html and "every 2" in html and "finished" in html
    cells = _cells(html)
    for name in ("loss", "eval_loss", "learning_rate", "stable_rank", "alpha_tail"):
        assert name in cells, name
    assert "1.235" in cells  # eval_loss 1.23456789 at 4 significant digits
    numbers = [c for c in cells if re.fullmatch(r"-?[0-9.]+(e[-+]?\d+)?[kMGT]?", c)]
    assert numbers and all(len(re.sub(r"[^0-9]", "", n.split("e")[0]).lstrip("0")) <= 6 for n in numbers)
    assert html.count("<svg") >= 3  # sparklines of the scalars and the metrics
    # the learning rate decays: its sparkline's last point is the lowest (largest y in SVG)
    lr_row = html[html.index("learning_rate"):].split("</tr>")[0]
    ys = [float(p.split(",")[1]) for p in re.search(r'points="([^"]+)"', lr_row).group(1).split()]
    assert ys[-1] == max(ys) and ys[0] == min(ys)


def test_an_empty_run_says_so(tmp_path):
    ss.Monitor(torch.nn.Linear(3, 3), tmp_path / "e", probes=[ss.probes.Weights(every=5)]).close()
    html = ss.open_run(tmp_path / "e")._repr_html_()
    assert "No rows yet" in html


def test_describe_displays_as_a_table():
    d = ss.describe(np.array([4.0, 2.0, 1.0]))
    assert isinstance(d, dict) and d["stable_rank"] == pytest.approx(21 / 16)
    cells = _cells(d._repr_html_())
    assert "stable_rank" in cells and "1.312" in cells and cells[-1] == d["status"]


def test_spark_known_answer():
    assert spark(range(8)) == "▁▂▃▄▅▆▇█" and spark([1.0, float("nan"), 1.0]) == "▁▁" and spark([3.0]) == ""


def _console():
    from rich.console import Console

    return Console(file=io.StringIO(), force_terminal=False, width=120)


def test_watch_once_prints_the_latest_numbers(tmp_path):
    _train(tmp_path / "r")
    con = _console()
    assert watch(tmp_path / "r", once=True, console=con) == 1
    out = con.file.getvalue()
    assert "[finished]" in out and "last step 7" in out and "320 tokens" in out
    assert "eval_loss" in out and "1.235" in out and "stable_rank" in out


def test_watch_follows_a_live_run_until_it_closes(tmp_path):
    mon = _train(tmp_path / "r", steps=2, close=False)
    con = _console()
    frames = []
    t = threading.Thread(target=lambda: frames.append(watch(tmp_path / "r", interval=0.1, console=con)))
    t.start()
    time.sleep(1.0)
    for s in range(2, 5):
        mon.step(s, loss=0.5, tokens=40 * (s + 1))
        time.sleep(0.4)
    mon.close()
    t.join(timeout=30)
    assert not t.is_alive() and frames[0] >= 2  # redrawn as the run wrote, stopped when it closed
    out = con.file.getvalue()
    assert "[live]" in out and "[finished]" in out and "last step 4" in out


def test_watch_cli(tmp_path, capsys):
    _train(tmp_path / "r")
    assert main(["watch", str(tmp_path / "r"), "--once"]) == 0
    assert "stable_rank" in capsys.readouterr().out
    (tmp_path / "plain").mkdir()
    assert main(["watch", str(tmp_path / "plain"), "--once"]) != 0
    err = capsys.readouterr().err
    assert "not a specscope run" in err and "Traceback" not in err


def test_frame_of_a_run_with_scalars_only(tmp_path):
    mon = ss.Monitor(torch.nn.Linear(3, 3), tmp_path / "s", probes=[])
    mon.log(0, loss=1.0)
    mon.log(1, loss=0.5)
    mon.close()
    con = _console()
    con.print(frame(ss.open_run(tmp_path / "s")))
    out = con.file.getvalue()
    assert "loss" in out and "no probe measurements yet" in out


def test_the_report_can_be_written_while_the_run_is_live(tmp_path):
    mon = _train(tmp_path / "r", steps=4, close=False)
    first = ss.write_report(tmp_path / "r", tmp_path / "a.html")
    mon.step(4, loss=0.5, tokens=200)
    mon.step(5, loss=0.4, tokens=240)
    second = ss.write_report(tmp_path / "r", tmp_path / "b.html")
    mon.close()
    assert first.exists() and second.exists() and second.stat().st_size > 0

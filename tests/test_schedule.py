"""Schedules (when a probe measures) and needs (what it reads), against hand-computed answers."""
import json
import logging

import pytest
import torch
from torch import nn

import specscope as ss
from specscope.errors import ConfigError
from specscope.probes import NEEDS, Measurement, Probe, at, every, log_spaced, log_spaced_steps


def _due(schedule, stop=101):
    return [s for s in range(stop) if schedule(s)]


def test_every_and_at():
    assert _due(every(25)) == [0, 25, 50, 75, 100] and str(every(25)) == "every 25"
    assert _due(every(0)) == [] and str(every(0)) == "never"
    assert _due(at([30, 5, 5])) == [5, 30] and str(at([30, 5])) == "at [5, 30]"
    assert str(at(range(0, 100, 10))) == "at [0, 10, 20, 30, 40, 50, 60, 70, ... 10 steps up to 90]"


def test_log_spaced_yields_the_hand_computed_steps():
    # 10 ** (i / 4) = 1, 1.778, 3.162, 5.623, 10, 17.78, 31.62, 56.23, 100 -> rounded, with step 0
    assert _due(log_spaced(1, 100, 4), 1000) == [0, 1, 2, 3, 6, 10, 18, 32, 56, 100]
    # 10 ** (i / 3) = 1, 2.154, 4.642, 10, 21.54, 46.42, 100, 215.4, 464.2, 1000
    assert log_spaced_steps(1, 1000, 3) == [0, 1, 2, 5, 10, 22, 46, 100, 215, 464, 1000]
    # start 10: 10, 31.62, 100; stop 50 cuts it
    assert log_spaced_steps(10, 100, 2) == [0, 10, 32, 100] and log_spaced_steps(10, 50, 2) == [0, 10, 32]
    # 8 per decade: 1, 1.33, 1.78, 2.37, 3.16, 4.22, 5.62, 7.50, 10 (rounding merges 1,1 and 2,2)
    assert log_spaced_steps(1, 10) == [0, 1, 2, 3, 4, 6, 7, 10]
    assert log_spaced_steps(5, 5, 8) == [0, 5]
    assert str(log_spaced(1, 10000, 8)) == "log_spaced(1, 10000, 8/decade)"
    assert not log_spaced(1, 100, 4)(101) and not log_spaced(1, 100, 4)(-1)


def test_union():
    u = every(50) | log_spaced(1, 100, 4)
    assert _due(u, 201) == [0, 1, 2, 3, 6, 10, 18, 32, 50, 56, 100, 150, 200]
    assert str(u) == "every 50 | log_spaced(1, 100, 4/decade)"
    assert _due(40 | at([3])) == [0, 3, 40, 80]  # a plain int on the left is every(n)

    def odd(step):
        return step % 2 == 1

    assert _due(odd | at([4]), 8) == [1, 3, 4, 5, 7] and str(at([4]) | odd).startswith("at [4] | custom ")


def test_probe_takes_an_int_a_schedule_or_a_callable():
    w = ss.probes.Weights(every=ss.probes.log_spaced(1, 100, 4))
    assert [s for s in range(200) if w.due(s)] == [0, 1, 2, 3, 6, 10, 18, 32, 56, 100]
    assert w.describe()["schedule"] == "log_spaced(1, 100, 4/decade)" and w.describe()["every"] is None

    def warmup(step):
        return step < 3

    d = ss.probes.Weights(every=warmup).describe()
    assert d["schedule"] == "custom test_probe_takes_an_int_a_schedule_or_a_callable.<locals>.warmup"
    d = ss.probes.Weights(every=25, at=[3]).describe()
    assert d["schedule"] == "every 25 | at [3]" and d["every"] == 25 and d["at"] == [3]
    only_at = ss.probes.Weights(every=0, at=[0, 10])
    assert str(only_at.schedule) == "at [0, 10]" and only_at.due(10) and not only_at.due(5)
    assert ss.probes.Weights(every=ss.probes.every(7), at=[3]).due(3)
    json.dumps(ss.probes.Trajectory(every=every(5) | at([1])).describe())  # stored in meta.json


@pytest.mark.parametrize("bad", ["25", -1, True, 2.5, None, b"5", [25]])
def test_bad_schedules_are_config_errors(bad):
    with pytest.raises(ConfigError, match="every"):
        ss.probes.Weights(every=bad)


@pytest.mark.parametrize("call", [lambda: every(-2), lambda: at("12"), lambda: at([1, -1]), lambda: log_spaced(0, 10),
                                  lambda: log_spaced(10, 5), lambda: log_spaced(1, 10, 0), lambda: every(3) | "x"])
def test_bad_schedule_arguments_are_config_errors(call):
    with pytest.raises(ConfigError):
        call()


class Count(Probe):
    name = "count"

    def measure(self, ctx):
        out = Measurement()
        out.add_metric(-1, "other", "", "n", 1.0)
        return out


def test_a_schedule_that_raises_skips_that_step_and_says_so_once(tmp_path, caplog):
    def flaky(step):
        if step in (2, 3):
            raise KeyError(step)
        return step % 2 == 0

    model = nn.Linear(4, 4)
    with caplog.at_level(logging.WARNING), ss.Monitor(model, tmp_path / "r", probes=[Count(every=flaky)]) as mon:
        for step in range(6):
            mon.step(step, loss=1.0)
    assert set(ss.open_run(tmp_path / "r").metrics()["step"]) == {0, 4}
    said = [r for r in caplog.records if "schedule" in r.getMessage()]
    assert len(said) == 1 and "KeyError" in said[0].getMessage() and "custom" in said[0].getMessage()


def test_dense_early_probing_in_the_monitor(tmp_path):
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probes = [ss.probes.Weights(every=ss.probes.log_spaced(1, 20, 4))]
    with ss.Monitor(model, tmp_path / "r", probes=probes) as mon:
        for step in range(25):
            loss = model(torch.randn(4, 6)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(step, loss=loss.item())
    run = ss.open_run(tmp_path / "r")
    assert sorted(set(run.metrics()["step"])) == [0, 1, 2, 3, 6, 10, 18]  # 10 ** (i/4): 1 1.8 3.2 5.6 10 17.8 (31.6)


def test_needs_are_declared_described_and_from_the_vocabulary():
    pool = torch.randint(0, 8, (4, 6))
    probes = {"Weights": ss.probes.Weights(), "Trajectory": ss.probes.Trajectory(),
              "Activations": ss.probes.Activations(pool), "Gradients": ss.probes.Gradients(pool)}
    want = {"Weights": {"parameters"}, "Trajectory": {"update"}, "Activations": {"pool_forward"},
            "Gradients": {"pool_forward", "layer_backward"}}
    for kind, probe in probes.items():
        assert probe.needs == want[kind] and isinstance(type(probe).needs, frozenset)
        assert probe.describe()["needs"] == sorted(want[kind]) and set(probe.needs) <= set(NEEDS)
    assert Probe.needs == frozenset()

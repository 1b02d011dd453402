import subprocess
import sys

import pytest

from specscope.cli import main


def run_cli(*args, cwd=None):
    p = subprocess.run([sys.executable, "-m", "specscope", *args], capture_output=True, text=True, cwd=cwd)
    return p.returncode, p.stdout, p.stderr


def test_train_report_query(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECSCOPE_CACHE", str(tmp_path / "cache"))
    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(30):
        (texts / f"{i}.txt").write_text(f"line {i} of some text about spectra and ranks\n" * 40)
    out = tmp_path / "runs" / "t"
    code = main(["train", "--steps", "6", "--layers", "1", "--width", "32", "--heads", "2", "--seq-len", "32",
                 "--batch", "4", "--probe-every", "3", "--eval-every", "3", "--corpus", str(texts), "--out", str(out),
                 "--no-progress"])
    assert code == 0
    html = (out / "report.html").read_text()
    # 5 weight figures + activation/gradient spectra and trajectories + SoSD, compression; one layer: the wave and the
    # depth profile say so in one line each, as do pruning (never run) and the edge analysis (no trajectory probe)
    assert html.count("<svg") == 9 and html.count('class="note missing"') == 4
    assert "only 1 layer: a compression wave across depth needs &gt;= 3" in html
    assert "only 1 layer: a depth profile of alpha_tail needs &gt;= 4" in html and "no q, k and v, o" not in html
    assert "no trajectory measurements in this run" in html
    code, stdout, _ = run_cli("query", "SELECT count(DISTINCT step) AS n FROM metrics", "--runs", str(tmp_path / "runs"), "--format", "csv")
    assert code == 0 and stdout.split() == ["n", "3"]
    assert main(["report", str(out)]) == 0


@pytest.mark.parametrize("args,needle", [
    (["report", "/no/such/run"], "no such"),
    (["query", "SELEC nonsense", "--runs", "."], "query failed"),
    (["query", "select 1", "--runs", "/etc/passwd"], "not a directory"),
    (["train", "--steps", "0"], "--steps: must be an integer >= 1"),
    (["train", "--width", "30", "--heads", "4"], "divisible"),
    (["train", "--corpus", "/no/such/dir", "--steps", "1"], "--corpus: /no/such/dir: expected 'stdlib' or a directory of text files"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, needle):
    code, stdout, stderr = run_cli(*args, cwd=tmp_path)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in stderr

import csv
import subprocess
import sys

import pytest

from helpers.sweep import Rank, Sweep

UNITS = [{"x": x / 10, "y": y} for x in range(-2, 3) for y in range(2)]


def test_rerun_skips_finished_units_and_keeps_rows(tmp_path):
    path = tmp_path / "grid.csv"
    sweep = Sweep(path, ["x", "y"])
    for unit in sweep.todo(UNITS)[:4]:
        sweep.add({**unit, "loss": unit["x"] ** 2})
    left = Sweep(path, ["x", "y"]).todo(UNITS)
    assert left == UNITS[4:]
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [float(r["loss"]) for r in rows] == [u["x"] ** 2 for u in UNITS[:4]]


def test_ranks_split_the_units_and_fill_one_table(tmp_path):
    path = tmp_path / "grid.csv"
    sweeps = [Sweep(path, ["x", "y"], Rank(r, 3, r)) for r in range(3)]
    shares = [s.todo(UNITS) for s in sweeps]
    assert sorted(map(str, sum(shares, []))) == sorted(map(str, UNITS))  # a partition of all units
    assert all(not set(map(str, a)) & set(map(str, b)) for i, a in enumerate(shares) for b in shares[i + 1:])
    for sweep, share in zip(sweeps, shares):
        for unit in share:
            sweep.add({**unit, "loss": 0.0})
    assert Sweep(path, ["x", "y"]).todo(UNITS) == []


def test_a_line_cut_by_a_crash_is_redone(tmp_path):
    path = tmp_path / "grid.csv"
    sweep = Sweep(path, ["x", "y"])
    sweep.add({"x": -0.2, "y": 0, "loss": 1.0})
    with open(path, "a") as f:
        f.write("-0.2,1")  # killed mid-line: no loss column, no newline
    assert sweep.todo(UNITS)[0] == {"x": -0.2, "y": 1}
    sweep.add({"x": -0.2, "y": 1, "loss": 2.0})
    assert len(sweep.rows()) == 2 and sweep.rows()[1]["loss"] == "2.0"


def test_rows_must_match_the_table(tmp_path):
    sweep = Sweep(tmp_path / "t.csv", ["x"])
    sweep.add({"x": 1, "a": 2})
    with pytest.raises(ValueError, match="columns"):
        sweep.add({"x": 2, "b": 3})
    with pytest.raises(KeyError):
        sweep.add({"a": 3})


def test_concurrent_processes_never_interleave_lines(tmp_path):
    path = tmp_path / "t.csv"
    script = ("import sys; from helpers.sweep import Sweep, Rank; r = int(sys.argv[1]); "
              "s = Sweep(sys.argv[2], ['i'], Rank(r, 2, r)); "
              "[s.add({'i': u['i'], 'payload': 'x' * 5000}) for u in s.todo([{'i': i} for i in range(200)])]")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(r), str(path)]) for r in range(2)]
    assert all(p.wait() == 0 for p in procs)
    rows = Sweep(path, ["i"]).rows()
    assert sorted(int(r["i"]) for r in rows) == list(range(200))
    assert all(r["payload"] == "x" * 5000 for r in rows)

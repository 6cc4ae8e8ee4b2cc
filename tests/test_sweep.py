"""The sweep store: per-process row files with a checksum per line, bound to a definition."""
import os
import subprocess
import sys

import pytest

from helpers.common import Rank, ResultsError
from helpers.sweep import SUFFIX, Table, TableError, fill

UNITS = [{"x": x / 10, "y": y} for x in range(-2, 3) for y in range(2)]


def row(unit):
    return {**unit, "loss": unit["x"] ** 2 + 0.125}


def test_rerun_skips_finished_units_and_keeps_rows(tmp_path):
    table = Table(tmp_path, ["x", "y"])
    assert fill(table, UNITS[:4], row, progress=False) == 4
    again = Table(tmp_path, ["x", "y"])
    assert again.todo(UNITS) == UNITS[4:]
    assert again.frame(UNITS)["loss"].tolist() == [u["x"] ** 2 + 0.125 for u in UNITS[:4]]
    assert fill(again, UNITS, row, progress=False) == len(UNITS) - 4 and again.computed == len(UNITS) - 4


def test_ranks_split_the_units_and_fill_one_table(tmp_path):
    tables = [Table(tmp_path, ["x", "y"], rank_info=Rank(r, 3, r)) for r in range(3)]
    shares = [t.todo(UNITS) for t in tables]
    assert sorted(map(str, sum(shares, []))) == sorted(map(str, UNITS))  # a partition of all units
    assert all(not set(map(str, a)) & set(map(str, b)) for i, a in enumerate(shares) for b in shares[i + 1:])
    for table in tables:
        fill(table, UNITS, row, progress=False)
    assert len(list(tmp_path.glob(f"*{SUFFIX}"))) == 3  # one file per writer: no lock, no interleaving
    assert Table(tmp_path, ["x", "y"]).todo(UNITS) == []


def written(tmp_path, units):
    table = Table(tmp_path, ["x", "y"])
    fill(table, units, row, progress=False)
    (path,) = tmp_path.glob(f"*{SUFFIX}")
    return path, path.read_bytes()


def test_a_last_row_cut_at_any_byte_is_recomputed_never_returned(tmp_path):
    path, content = written(tmp_path, UNITS[:3])
    start = content.rstrip(b"\n").rfind(b"\n") + 1  # the last line
    for cut in range(start, len(content)):
        path.write_bytes(content[:cut])
        table = Table(tmp_path, ["x", "y"])
        assert table.todo(UNITS[:3]) == [UNITS[2]], cut
        assert len(table.frame(UNITS[:3])) == 2


def test_a_row_cut_inside_the_file_is_refused_with_file_and_line(tmp_path):
    path, content = written(tmp_path, UNITS[:3])
    lines = content.splitlines(keepends=True)
    for cut in range(1, len(lines[1]) - 1):  # line 2 loses its end: it runs into line 3
        path.write_bytes(lines[0] + lines[1][:cut] + lines[2])
        with pytest.raises(TableError, match=rf"{path.name}, line 2, is damaged"):
            Table(tmp_path, ["x", "y"]).rows()


def test_a_garbage_row_with_the_right_fields_is_refused(tmp_path):
    path, content = written(tmp_path, UNITS[:2])
    first, second = content.splitlines(keepends=True)
    path.write_bytes(first + second.replace(b'"loss":0.', b'"loss":9.'))  # a plausible value, edited
    with pytest.raises(TableError, match=rf"{path.name}, line 2"):
        Table(tmp_path, ["x", "y"]).todo(UNITS)


def test_a_folder_bound_to_another_definition_is_refused(tmp_path):
    Table(tmp_path, ["x"], definition={"seed": 0})
    Table(tmp_path, ["x"], definition={"seed": 0})  # the same: fine
    with pytest.raises(TableError, match="another definition"):
        Table(tmp_path, ["x"], definition={"seed": 1})


def test_rows_must_hold_the_key(tmp_path):
    with pytest.raises(KeyError):
        Table(tmp_path, ["x"]).add({"a": 3})


def test_concurrent_processes_never_interleave_lines(tmp_path):
    script = ("import sys; from helpers.sweep import Table, fill; from helpers.common import Rank; r = int(sys.argv[1]);"
              " t = Table(sys.argv[2], ['i'], rank_info=Rank(r, 2, r));"
              " fill(t, [{'i': i} for i in range(200)], lambda u: {**u, 'payload': 'x' * 5000}, progress=False)")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(r), str(tmp_path)]) for r in range(2)]
    assert all(p.wait() == 0 for p in procs)
    rows = Table(tmp_path, ["i"]).rows()
    assert sorted(r["i"] for r in rows) == list(range(200))
    assert all(r["payload"] == "x" * 5000 for r in rows)


def test_ctrl_c_says_what_is_kept_and_how_to_resume(tmp_path, capsys):
    def compute(unit):
        if unit is UNITS[3]:
            raise KeyboardInterrupt
        return row(unit)

    with pytest.raises(KeyboardInterrupt):
        fill(Table(tmp_path, ["x", "y"]), UNITS, compute, progress=False)
    out = capsys.readouterr().out
    assert f"3 of {len(UNITS)} units are saved in {tmp_path}" in out and "again to resume" in out


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_named_in_one_line(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(ResultsError, match=f"Cannot write to {tmp_path / 'sweep'}: permission denied"):
            Table(tmp_path / "sweep", ["x"]).add({"x": 1})
    finally:
        tmp_path.chmod(0o700)

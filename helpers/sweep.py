"""Resumable, shardable sweeps: a CSV table filled one finished unit at a time.

Long measurements (landscape grid points, Hessian batches, corruption x severity, CKA batches) are lists of
independent units. `Sweep` appends each finished unit's row to a CSV at once, so a killed run loses at most the
unit in progress; `todo(units)` skips the units already in the table and, under `torchrun`, keeps this rank's
share (every `world_size`-th unit), so N processes fill the same table. Appends take an exclusive lock, so
ranks on one machine never interleave lines.
"""
import csv
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def rank():
    """This process's place under `torchrun` (RANK, WORLD_SIZE, LOCAL_RANK), or a single process."""
    return Rank(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                int(os.environ.get("LOCAL_RANK", 0)))


class Sweep:
    """The CSV at `path`; a unit is identified by the values of the `key` columns."""

    def __init__(self, path, key, rank_info=None):
        self.path, self.key = Path(path), tuple(key)
        self.rank = rank_info or rank()

    def rows(self):
        """The finished rows, as dicts of strings (a line cut short by a crash is ignored)."""
        if not self.path.exists():
            return []
        with open(self.path, newline="") as f:
            return [row for row in csv.DictReader(f) if None not in row.values() and None not in row]

    def done(self):
        return {tuple(row[k] for k in self.key) for row in self.rows()}

    def unit_key(self, unit):
        return tuple(str(unit[k]) for k in self.key)

    def todo(self, units):
        """The units of this rank that are not finished yet; `units` is a list of dicts with the key columns."""
        mine = list(units)[self.rank.rank::self.rank.world_size]
        done = self.done()
        return [unit for unit in mine if self.unit_key(unit) not in done]

    def add(self, row):
        """Append one finished unit's row (a dict whose keys include `key`), flushed to disk before returning."""
        missing = [k for k in self.key if k not in row]
        if missing:
            raise KeyError(f"row lacks the key column(s) {missing}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+", newline="") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            content = f.read()  # tables are small: hundreds of rows
            header = next(csv.reader([content.splitlines()[0]])) if content else None
            columns = header or list(row)
            if set(row) != set(columns):
                raise ValueError(f"{self.path} has columns {columns}, the row has {sorted(row)}; "
                                 "write to another file or delete the old one")
            if content and not content.endswith("\n"):
                f.write("\n")  # a crash cut the last line: keep it apart from this one
            writer = csv.DictWriter(f, fieldnames=columns)
            if not header:
                writer.writeheader()
            writer.writerow(row)
            f.flush()
            os.fsync(f.fileno())

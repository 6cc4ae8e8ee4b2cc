"""Resumable, shardable sweeps whose stored rows cannot lie.

A sweep is a list of independent units (a landscape grid point, a Hessian batch, a corruption at a severity, a
lesioned block, a CKA batch); each finished unit is one row. `Table` keeps the rows of ONE experiment definition
in one folder, with the definition beside them (`definition.json`, see `helpers.experiment`): a folder never
holds rows computed with other settings, data, weights or smoke mode. `fill(table, units, compute)` computes
this process's share of the unfinished units (every `world_size`-th one under `torchrun`) and stores each row as
soon as it is finished, so a killed run loses at most the unit in progress and the same command resumes.

Storage: every process appends to a file of its own (`<host>-<pid>-<random>.rows`), one JSON row per line
followed by the first 16 hex digits of the line's SHA-256. Readers take the union of all files. Why this and not
SQLite (one transaction per unit would be as safe on a local disk): several torchrun nodes meet on a shared
network filesystem, where SQLite's locks, like `flock`, are documented as unreliable; files with a single writer
need no lock at all, so appends of different ranks can never interleave. A line without its final newline is a
unit that was killed while being written: it is ignored and recomputed. A whole line whose digest does not match
is damage (an edit, a disk fault): reading stops with the file and the line number, never returning it.
"""
import hashlib
import json
import os
import socket
import uuid
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from helpers.common import rank, writing

SUFFIX = ".rows"
DIGITS = 16  # hex digits of SHA-256 per line


class TableError(RuntimeError):
    """A damaged table, or a folder bound to another definition."""


def encode(row):
    """One line: the row as compact JSON (floats round-trip exactly), a space, its digest, a newline."""
    payload = json.dumps(row, sort_keys=True, separators=(",", ":"))
    return f"{payload} {hashlib.sha256(payload.encode()).hexdigest()[:DIGITS]}\n"


def decode(line, path, number):
    """The row of a whole line, or a TableError naming the file and the line."""
    payload, _, digest = line.rpartition(" ")
    if digest != hashlib.sha256(payload.encode()).hexdigest()[:DIGITS]:
        raise TableError(f"{path}, line {number}, is damaged (its checksum does not match its content). Delete "
                         f"that line, or the file, and run again: the units it held are recomputed.")
    return json.loads(payload)


class Table:
    """The finished rows of one definition: a folder of per-process row files; a unit is identified by the values
    of the `key` columns. `definition` (a JSON-able dict) is written beside the rows on first use and must match
    what is there."""

    def __init__(self, folder, key, definition=None, rank_info=None):
        self.folder, self.key, self.definition = Path(folder), tuple(key), definition
        self.rank = rank_info or rank()
        self.computed = 0  # rows this process added
        self._file = None
        if definition is not None:
            self.bind(definition)

    def bind(self, definition):
        path = self.folder / "definition.json"
        text = json.dumps(definition, sort_keys=True, indent=1) + "\n"
        if path.exists():
            if json.loads(path.read_text()) != json.loads(text):
                raise TableError(f"{path} holds another definition than this run's; the folder name is the digest "
                                 "of its definition, so it was edited or copied: delete the folder to recompute.")
            return
        partial = path.with_name(f".definition.{uuid.uuid4().hex}.part")
        with writing(path):  # ranks racing here write the same text; each rename is whole
            self.folder.mkdir(parents=True, exist_ok=True)
            partial.write_text(text)
            os.replace(partial, path)

    def unit_key(self, unit):
        return json.dumps([unit[k] for k in self.key])

    def rows(self):
        """The finished rows, the first one stored of each unit, in file order."""
        rows, seen = [], set()
        for path in sorted(self.folder.glob(f"*{SUFFIX}")):
            content = path.read_bytes()
            whole = content[:content.rfind(b"\n") + 1]  # a last line without newline: a unit killed mid-write
            for number, line in enumerate(whole.split(b"\n")[:-1], 1):
                row = decode(line.decode("utf-8", errors="replace"), path, number)
                if self.unit_key(row) not in seen:
                    seen.add(self.unit_key(row))
                    rows.append(row)
        return rows

    def done(self):
        return {self.unit_key(row) for row in self.rows()}

    def todo(self, units):
        """The units of this rank (every `world_size`-th) that are not finished yet."""
        mine = list(units)[self.rank.rank::self.rank.world_size]
        done = self.done()
        return [unit for unit in mine if self.unit_key(unit) not in done]

    def add(self, row):
        """Append one finished unit's row (a dict holding the key columns), on disk before returning."""
        missing = [k for k in self.key if k not in row]
        if missing:
            raise KeyError(f"row lacks the key column(s) {missing}")
        data = encode(row).encode()
        if self._file is None:
            self._file = self.folder / f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}{SUFFIX}"
        with writing(self._file):
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                while data:
                    data = data[os.write(fd, data):]
                os.fsync(fd)
            finally:
                os.close(fd)
        self.computed += 1

    def frame(self, units=None):
        """The finished rows as a DataFrame; with `units`, only theirs, in their order."""
        rows = self.rows()
        if units is not None:
            by_key = {self.unit_key(row): row for row in rows}
            rows = [by_key[key] for key in map(self.unit_key, units) if key in by_key]
        return pd.DataFrame(rows)


def fill(table, units, compute, *, todo=None, desc=None, progress=True):
    """Compute `compute(unit) -> row` for this rank's unfinished `units` (or for `todo`, this rank's unfinished ones
    as the caller read them), storing each row as it finishes; returns the number computed. Ctrl-C stops it after
    saying what is kept."""
    todo = table.todo(units) if todo is None else todo
    try:
        for unit in tqdm(todo, desc=desc or table.folder.name, disable=not progress or not todo):
            table.add(compute(unit))
    except KeyboardInterrupt:
        done = table.done()
        finished = sum(table.unit_key(unit) in done for unit in units)
        print(f"\nInterrupted: {finished} of {len(units)} units are saved in "
              f"{table.folder}; run the same command (or cell) again to resume.", flush=True)
        raise
    return len(todo)

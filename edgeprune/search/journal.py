"""Append-only JSONL journal of evaluation results, so an interrupted search can resume without re-evaluating.

This is the only I/O of the search package, kept in its own small class. One line per record::

    {"kind": "header", "fingerprint": {...}}
    {"kind": "eval", "state": [[0, 3], [2, 1]], "n_worse": 4, "n_better": 2, "n": 1000, "proxy": 0.0123}
    {"kind": "importance", "state": [[0, 3]], "scores": [[0, 0, 0.51], ...]}

A process killed mid-write leaves at most one truncated last line; it is ignored on load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from ..errors import EdgepruneError

State = frozenset  # frozenset[tuple[int, int]] of removed (layer, head)


class JournalError(EdgepruneError):
    """The journal belongs to another search (different model, data, layout, algorithm or seed)."""


def state_key(state: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Canonical, hashable and sortable form of a state: the sorted tuple of removed (layer, head) pairs."""
    return tuple(sorted((int(layer), int(head)) for layer, head in state))


class Journal:
    """JSONL journal keyed by state.

    Args:
        path: the journal file (created with its parent folder if missing).
        fingerprint: JSON-able description of the search (layout, n, algorithm, seed, bound...). A resumed journal
            must carry the same fingerprint, otherwise replaying it would silently mix two searches.
        resume: if True, load existing records; if False, start a fresh journal (an existing file is replaced).

    Raises:
        JournalError: resume=True and the journal's fingerprint differs from ``fingerprint``.
    """

    def __init__(self, path: str | os.PathLike, fingerprint: dict[str, Any], resume: bool = False) -> None:
        self.path = Path(path)
        self.fingerprint = json.loads(json.dumps(fingerprint))  # normalise (tuples -> lists)
        self.evals: dict[tuple, dict[str, Any]] = {}
        self.importance: dict[tuple, dict[tuple[int, int], float]] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume and self.path.exists():
            self._load()
            self._fh = open(self.path, "a", encoding="utf-8")
        else:
            self._fh = open(self.path, "w", encoding="utf-8")
            self._write({"kind": "header", "fingerprint": self.fingerprint})

    def _load(self) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        header_seen = False
        for i, line in enumerate(lines):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if i == len(lines) - 1:
                    break  # truncated last line of a killed process
                raise JournalError(f"{self.path}: corrupt line {i + 1}") from None
            kind = rec.get("kind")
            if kind == "header":
                if rec.get("fingerprint") != self.fingerprint:
                    raise JournalError(
                        f"{self.path} was written by a different search; refusing to resume it "
                        f"(journal {rec.get('fingerprint')} vs now {self.fingerprint}). Delete it or drop --resume."
                    )
                header_seen = True
            elif kind == "eval":
                self.evals[state_key(map(tuple, rec["state"]))] = rec
            elif kind == "importance":
                scores = {(int(l), int(h)): float(s) for l, h, s in rec["scores"]}
                self.importance[state_key(map(tuple, rec["state"]))] = scores
        if not header_seen:
            raise JournalError(f"{self.path} has no header; it is not an edgeprune search journal")
        # Rewrite without a possibly truncated tail so appends start on a fresh line.
        if lines and not lines[-1].strip().endswith("}"):
            self.path.write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")

    def _write(self, rec: dict[str, Any]) -> None:
        self._fh.write(json.dumps(rec, separators=(",", ":")) + "\n")

    def flush(self) -> None:
        """Flush and fsync, so a killed process loses at most the records of the batch being written."""
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def add_eval(self, state: State, n_worse: int, n_better: int, n: int, proxy: float) -> None:
        """Record one evaluation result."""
        key = state_key(state)
        rec = {"kind": "eval", "state": [list(x) for x in key], "n_worse": int(n_worse), "n_better": int(n_better),
               "n": int(n), "proxy": float(proxy)}
        self.evals[key] = rec
        self._write(rec)

    def add_importance(self, state: State, scores: dict[tuple[int, int], float]) -> None:
        """Record the head-importance scores computed for ``state``."""
        key = state_key(state)
        self.importance[key] = dict(scores)
        self._write({"kind": "importance", "state": [list(x) for x in key],
                     "scores": [[l, h, float(s)] for (l, h), s in sorted(scores.items())]})

    def close(self) -> None:
        """Flush and close the file."""
        if not self._fh.closed:
            self.flush()
            self._fh.close()

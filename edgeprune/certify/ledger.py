"""Looks at a certify split across builds.

A certificate is valid for one look at the certify split. A resumed build never looks again (it reuses the tests it
recorded, :func:`edgeprune.certify.core.certify_sequence`); but a *new* build on a split whose results an earlier
build already showed to the user is a second look, and the promise then holds only if one of the builds is taken
before seeing the others. The ledger (``<cache>/certify-ledger.json``) records, per certify split (keyed by the
SHA-256 of its texts and labels), which build folders tested plans on it, so a build can say so (docs/search.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

LEDGER_FILE = "certify-ledger.json"
#: Environment variable naming another ledger file (the test suite points it at a temporary file).
LEDGER_ENV = "EDGEPRUNE_CERTIFY_LEDGER"


def ledger_path(cache: str | Path) -> Path:
    """``$EDGEPRUNE_CERTIFY_LEDGER`` if set, else ``<cache>/certify-ledger.json``."""
    return Path(os.environ.get(LEDGER_ENV) or Path(cache) / LEDGER_FILE)


def split_key(data: Any) -> str:
    """SHA-256 of a dataset's content (texts, text pairs, labels, in order)."""
    h = hashlib.sha256()
    pairs = getattr(data, "text_pairs", None)
    for i, (text, label) in enumerate(zip(data.texts, data.labels)):
        pair = pairs[i] if pairs is not None else ""
        h.update(f"{len(text)}:{text}\x1f{len(pair or '')}:{pair or ''}\x1f{label}\x1e".encode())
    return h.hexdigest()


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def earlier_builds(cache: str | Path, key: str, build_id: str) -> list[dict[str, Any]]:
    """Builds other than ``build_id`` that certified on the split ``key``."""
    entries = _read(ledger_path(cache)).get(key, [])
    return [e for e in entries if e.get("build") != build_id]


def record_build(cache: str | Path, key: str, build_id: str, *, n: int, tests: int) -> None:
    """Add (or refresh) this build's entry for the split ``key`` (atomic replace of the ledger file)."""
    path = ledger_path(cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    ledger = _read(path)
    entries = [e for e in ledger.get(key, []) if e.get("build") != build_id]
    entries.append({"build": build_id, "n": int(n), "tests": int(tests),
                    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    ledger[key] = entries
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(ledger, indent=2) + "\n")
    tmp.replace(path)

"""benchmarks/certify_fraction.py: the --certify-fraction simulation plays the build's procedure and keeps its
guarantee (realised error within 5% at every split), and the split sizes follow the fraction."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("numpy")


def test_every_fraction_keeps_the_error_and_reports_the_split():
    from benchmarks.certify_fraction import markdown, run

    rec = run(3000, sizes=(2000,), fractions=(0.3, 0.7), shapes=("linear",))
    rows = {r["fraction"]: r for r in rec["rows"]}
    assert rows[0.3]["certify_n"] == 600 and rows[0.3]["search_n"] == 1400 and rows[0.7]["certify_n"] == 1400
    for r in rows.values():
        assert r["realised_error"] <= 0.05 + 3 * r["realised_error_se"]  # fixed sequence at 95%
        assert 0 <= r["mean_shipped_index"] <= r["mean_searched_index"] <= 9
    # a larger certify split lets more discordance pass: the shipped plan moves down the frontier
    assert rows[0.7]["mean_shipped_index"] > rows[0.3]["mean_shipped_index"]
    assert rec["best_fraction"]["linear/2000"] in (0.3, 0.7)
    assert "| 2000 |" in markdown(rec)
    json.dumps(rec)

"""Fixed-sequence certification along the frontier, and the pre-flight arithmetic of a certify split.

Fixed-sequence testing (Bauer 1991; "Learn then Test", Angelopoulos et al. 2021, arXiv 2110.01052): hypotheses
H_i = "plan i's accuracy drop exceeds max_drop" are tested in an order frozen before the certify split is read,
each at the *full* level alpha, stopping at the first failure. A false certification needs some true H_i rejected;
the first true H_i of the order (call it i*) must then be rejected too (the procedure only reaches later plans
through it), and its own test rejects with probability <= alpha. So the family-wise error is <= alpha whatever the
dependence between the tests (nested plans share most of their flips; that only helps power). Every plan passed
before the stop is certified at once; the build ships the most compressed of them.

Drops and bounds are fractions (0.01 = one accuracy point) unless a name ends in ``_pts``, as in ``edgeprune.certify.stats``.
Pure statistics: numpy through ``edgeprune.certify.stats``, no torch, no onnxruntime. See docs/certification.md.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

from edgeprune.certify.stats import paired_drop_p_value, paired_drop_upper_bound

__all__ = [
    "SequenceStopped",
    "SequenceTest",
    "SequenceResult",
    "FixedSequence",
    "fixed_sequence_certify",
    "max_worse_table",
    "max_discordance",
    "dense_copy_counts",
    "preflight",
    "certify_n_needed",
    "certify_fraction_needed",
]

#: bound(n_worse, n_better, n, confidence) -> upper bound on the drop (fraction).
BoundFn = Callable[[int, int, int, float], float]

_PASS_TOL = 1e-12  # the same tolerance as bundle.certify: bound <= max_drop + 1e-12 passes


class SequenceStopped(RuntimeError):
    """A test was requested after the sequence stopped (a failure, or the caller ended it)."""


@dataclass(frozen=True)
class SequenceTest:
    """One test of the sequence: counts, bound (fraction) and whether it passed (bound <= max_drop)."""

    index: int
    name: str
    n_worse: int
    n_better: int
    n: int
    bound: float
    passed: bool
    reused: bool = False  # True when the result was recorded by an earlier (resumed) run, not recomputed

    @property
    def drop(self) -> float:
        return (self.n_worse - self.n_better) / self.n


@dataclass(frozen=True)
class SequenceResult:
    """Outcome of a fixed-sequence certification.

    ``stopped_at`` is the index of the first failed test (None when every test passed); ``last_passed`` the index
    of the last passed test (None when the first test failed); ``certified`` the names of all passed tests, every
    one of them certified at ``confidence`` family-wise.
    """

    tests: tuple[SequenceTest, ...]
    max_drop: float
    confidence: float
    stopped_at: int | None
    stop_reason: str
    last_passed: int | None
    order: tuple[str, ...] = ()

    @property
    def certified(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tests if t.passed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (drops and bounds in points too, for report/edgeprune.json)."""
        return {
            "procedure": "fixed sequence (Bauer 1991), each test at the full confidence, stop at the first failure",
            "test": "exact unconditional paired test (Berger-Boos, score statistic; edgeprune.certify.stats)",
            "max_drop_pts": 100.0 * self.max_drop,
            "confidence": self.confidence,
            "order": list(self.order) if self.order else [t.name for t in self.tests],
            "tests": [
                {**asdict(t), "drop_pts": 100.0 * t.drop, "bound_pts": 100.0 * t.bound} for t in self.tests
            ],
            "stopped_at": self.stopped_at,
            "stop_reason": self.stop_reason,
            "last_passed": self.last_passed,
            "last_passed_name": None if self.last_passed is None else self.tests[self.last_passed].name,
            "certified": list(self.certified),
        }


def _check(max_drop: float, confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if not -1.0 < max_drop <= 1.0:
        raise ValueError(f"max_drop is a fraction (0.01 = one point, 1.0 = all 100), got {max_drop}")


class FixedSequence:
    """The lazy form of :func:`fixed_sequence_certify`, for a build that exports each plan only when reached.

    >>> seq = FixedSequence(0.01, 0.95, order=["dense", "p1", "p2"])   # frozen before the certify split is read
    >>> bound, ok = seq.test("dense", 24, 23, 2113)                    # doctest: +SKIP
    >>> while ok and seq.next_name is not None: ...                     # build the next file, test it

    ``test`` refuses (``SequenceStopped``) once a test failed or :meth:`stop` was called, and, when an ``order``
    was given, any name but the next one in it. :meth:`to_dict` / :meth:`from_dict` let a resumed build reuse the
    recorded results instead of looking at the certify split again (``reuse``).
    """

    def __init__(self, max_drop: float, confidence: float, *, order: Sequence[str] | None = None,
                 bound: BoundFn | None = None):
        _check(max_drop, confidence)
        self.max_drop = float(max_drop)
        self.confidence = float(confidence)
        self.order: tuple[str, ...] = tuple(order) if order is not None else ()
        if len(set(self.order)) != len(self.order):
            raise ValueError(f"duplicate names in the frozen order: {self.order}")
        self._bound = bound or paired_drop_upper_bound
        self.tests: list[SequenceTest] = []
        self.stop_reason: str | None = None

    # -- state -----------------------------------------------------------------------------------------------
    @property
    def stopped(self) -> bool:
        return self.stop_reason is not None

    @property
    def next_name(self) -> str | None:
        """The next name of the frozen order (None when it is exhausted, stopped, or no order was given)."""
        if self.stopped or not self.order or len(self.tests) >= len(self.order):
            return None
        return self.order[len(self.tests)]

    @property
    def last_passed(self) -> int | None:
        passed = [t.index for t in self.tests if t.passed]
        return passed[-1] if passed else None

    @property
    def last_passed_name(self) -> str | None:
        i = self.last_passed
        return None if i is None else self.tests[i].name

    # -- testing ---------------------------------------------------------------------------------------------
    def _admit(self, name: str) -> int:
        if self.stopped:
            raise SequenceStopped(f"the sequence stopped ({self.stop_reason}); testing {name!r} now would spend "
                                  f"error the procedure does not have")
        if any(t.name == name for t in self.tests):
            raise ValueError(f"{name!r} was already tested in this sequence")
        if self.order:
            want = self.next_name
            if want is None:
                raise SequenceStopped(f"the frozen order is exhausted; {name!r} is not part of it")
            if name != want:
                raise ValueError(f"the frozen order says {want!r} comes next, not {name!r}")
        return len(self.tests)

    def _record(self, test: SequenceTest) -> tuple[float, bool]:
        self.tests.append(test)
        if not test.passed:
            self.stop_reason = (f"{test.name!r} (test {test.index}) failed: bound {100 * test.bound:.3f} points > "
                                f"{100 * self.max_drop:.3f}")
        elif self.order and len(self.tests) == len(self.order):
            self.stop_reason = "every plan of the frozen order passed"
        return test.bound, test.passed

    def test(self, name: str, n_worse: int, n_better: int, n: int) -> tuple[float, bool]:
        """Test the next plan at the full confidence; returns (bound as a fraction, passed)."""
        index = self._admit(name)
        n_worse, n_better, n = int(n_worse), int(n_better), int(n)
        bound = float(self._bound(n_worse, n_better, n, self.confidence))
        passed = bound <= self.max_drop + _PASS_TOL
        return self._record(SequenceTest(index, name, n_worse, n_better, n, bound, passed))

    def reuse(self, name: str, n_worse: int, n_better: int, n: int, bound: float, passed: bool) -> tuple[float, bool]:
        """Record a result an earlier run already computed on the same split (a resumed build): no new look."""
        index = self._admit(name)
        return self._record(SequenceTest(index, name, int(n_worse), int(n_better), int(n), float(bound),
                                         bool(passed), reused=True))

    def stop(self, reason: str) -> None:
        """End the sequence early (e.g. out of time); passed tests stay certified, nothing more may be tested."""
        if not self.stopped:
            self.stop_reason = str(reason)

    # -- records ---------------------------------------------------------------------------------------------
    def result(self) -> SequenceResult:
        failed = [t.index for t in self.tests if not t.passed]
        if self.stop_reason is not None:
            reason = self.stop_reason
        elif not self.tests:
            reason = "nothing tested yet"
        else:
            reason = "in progress: every plan tested so far passed"
        return SequenceResult(tuple(self.tests), self.max_drop, self.confidence, failed[0] if failed else None,
                              reason, self.last_passed, self.order)

    def to_dict(self) -> dict[str, Any]:
        return self.result().to_dict()

    @classmethod
    def from_dict(cls, record: dict[str, Any], *, bound: BoundFn | None = None) -> "FixedSequence":
        """Rebuild a sequence from :meth:`to_dict` (its recorded tests are reused, never recomputed)."""
        seq = cls(record["max_drop_pts"] / 100.0, record["confidence"], order=record.get("order") or None,
                  bound=bound)
        for t in record["tests"]:
            if seq.stopped:
                break
            seq.reuse(t["name"], t["n_worse"], t["n_better"], t["n"], t["bound"], t["passed"])
        reason = record.get("stop_reason")
        if reason and not seq.stopped and not reason.startswith(("in progress", "nothing tested")):
            seq.stop(reason)
        return seq


def fixed_sequence_certify(tests: Iterable[tuple[int, int]], n: int, max_drop: float, confidence: float, *,
                           names: Sequence[str] | None = None, bound: BoundFn | None = None) -> SequenceResult:
    """Fixed-sequence certification of plans given in their frozen order.

    Args:
        tests: ``(n_worse, n_better)`` of each plan vs the unpruned model on the certify split, in the order
            frozen before the split was read (least to most compressed; the dense INT8 file first).
        n: certify split size (the same examples for every plan).
        max_drop: allowed drop, a fraction (0.01 = one point).
        confidence: the family-wise confidence; every test runs at this full level.
        names: optional names of the plans (default "0", "1", ...).
        bound: the paired bound (default :func:`edgeprune.certify.stats.paired_drop_upper_bound`).

    Returns:
        A :class:`SequenceResult`: per-test bound and pass, where it stopped and why, the last passed index.
        Plans after the first failure are not tested (they appear in ``order`` only).
    """
    tests = [(int(a), int(b)) for a, b in tests]
    names = [str(i) for i in range(len(tests))] if names is None else list(names)
    if len(names) != len(tests):
        raise ValueError(f"{len(names)} names for {len(tests)} tests")
    seq = FixedSequence(max_drop, confidence, order=names, bound=bound)
    for name, (worse, better) in zip(names, tests):
        _, passed = seq.test(name, worse, better, n)
        if not passed:
            break
    if not tests:
        seq.stop("empty sequence: nothing to test")
    return seq.result()


# -- certification region ------------------------------------------------------------------------------------------

def _passes(x: int, y: int, n: int, max_drop: float, confidence: float) -> bool:
    """The certification decision bound(x, y) <= max_drop, taken from the exact p-value (same decision, cheaper)."""
    return paired_drop_p_value(x, y, n, max_drop, confidence) <= 1.0 - confidence


def max_worse_table(n: int, max_drop: float, confidence: float, m_max: int, *, m_min: int = 0) -> list[int]:
    """For every discordant count m in m_min..m_max, the largest n_worse that still certifies (-1: none).

    A plan with m discordant examples certifies iff n_worse <= table[m - m_min]. The bound grows when a "better"
    example becomes "worse" and shrinks when a "better" one is added, so X(m+1) is X(m) or X(m) + 1: one exact
    test per m after the first. Useful for simulations and for early rejection (a partial "worse" count above the
    table at the final m cannot certify).
    """
    _check(max_drop, confidence)
    if not 0 <= m_min <= m_max <= n:
        raise ValueError(f"need 0 <= m_min <= m_max <= n, got {m_min}, {m_max}, {n}")
    # X(m_min) by bisection over x (the bound is increasing in x at fixed m).
    lo, hi = -1, m_min  # invariant: x = lo passes (or lo = -1), x = hi + 1 fails (or hi = m_min)
    if _passes(m_min, 0, n, max_drop, confidence):
        lo = m_min
    else:
        hi = m_min - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if _passes(mid, m_min - mid, n, max_drop, confidence):
                lo = mid
            else:
                hi = mid - 1
    table = [lo]
    for m in range(m_min + 1, m_max + 1):
        x = table[-1] + 1
        table.append(x if x <= m and _passes(x, m - x, n, max_drop, confidence) else table[-1])
    return table


def max_discordance(n: int, max_drop: float, confidence: float, observed_drop: float = 0.0) -> int | None:
    """Largest discordant count D = n_worse + n_better that certifies at the given observed drop (None: none).

    The observed drop fixes n_worse - n_better = round(observed_drop * n); D runs over the same parity.
    """
    _check(max_drop, confidence)
    k = int(round(observed_drop * n))
    d_min = abs(k)

    def ok(d: int) -> bool:
        return _passes((d + k) // 2, (d - k) // 2, n, max_drop, confidence)

    if d_min > n or not ok(d_min):
        return None
    # D = d_min + 2 j. Bracket from the normal approximation D ~ n^2 (m - d)^2 / z^2 + n d^2, then bisect.
    from statistics import NormalDist

    z = NormalDist().inv_cdf(confidence)
    guess = n * n * max(max_drop - k / n, 0.0) ** 2 / z ** 2 + n * (k / n) ** 2
    j_top = (n - d_min) // 2
    g = min(max(int(round((guess - d_min) / 2)), 0), j_top)
    step = max(2, g // 20)
    lo, hi = 0, None  # ok(j = lo) holds; ok(j = hi) does not
    if ok(d_min + 2 * g):
        lo = g
        while hi is None:
            c = min(j_top, lo + step)
            if c == lo:
                return d_min + 2 * j_top
            if ok(d_min + 2 * c):
                lo, step = c, step * 2
            else:
                hi = c
    else:
        hi = g
        while True:
            c = max(0, hi - step)
            if c == 0 or ok(d_min + 2 * c):
                lo = c
                break
            hi, step = c, step * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(d_min + 2 * mid):
            lo = mid
        else:
            hi = mid
    return d_min + 2 * lo


# -- pre-flight ---------------------------------------------------------------------------------------------------

def dense_copy_counts(n: int, discordance_rate: float, net_drop: float) -> tuple[int, int]:
    """Expected (n_worse, n_better) on n examples of a file with the given discordant rate and net drop (fractions).

    D = round(n * rate) and k = round(n * drop), D raised by one when the parities differ (the conservative way).
    """
    if not 0.0 <= discordance_rate <= 1.0:
        raise ValueError(f"discordance rate must be a fraction in [0, 1], got {discordance_rate}")
    k = int(round(net_drop * n))
    d = max(int(round(discordance_rate * n)), abs(k))
    if (d - k) % 2:
        d += 1
    return (d + k) // 2, (d - k) // 2


def preflight(n_certify: int, max_drop_pts: float, confidence: float, dense_int8_discordance_rate: float,
              dense_int8_net_drop_pts: float, *, min_room_fraction: float = 0.25) -> dict[str, Any]:
    """What a certify split of ``n_certify`` examples can certify, before any search.

    Args:
        n_certify: certify split size.
        max_drop_pts: the promise, in accuracy points (``--max-drop``).
        confidence: ``--confidence`` (each fixed-sequence test runs at this level).
        dense_int8_discordance_rate: the dense INT8 file's discordant share vs the unpruned model on the search
            split ((worse + better) / n, a fraction).
        dense_int8_net_drop_pts: the dense INT8 file's observed drop on the search split, in points.
        min_room_fraction: warn when less than this share of ``max_drop_pts`` is left for pruning.

    Returns:
        A dict: ``status`` ("fail": even an exact copy of the dense INT8 file cannot be certified, stop before the
        search; "warn": little room left for pruning; "ok"), ``message`` (plain words), the largest certifiable
        discordance at observed drop 0 and at the dense file's drop, the dense copy's expected counts and bound,
        the room left for pruning (points and discordant examples), and the certify size the dense copy needs.
    """
    n = int(n_certify)
    if n <= 0:
        raise ValueError(f"the certify split is empty (n_certify={n_certify})")
    max_drop, d_dense = max_drop_pts / 100.0, dense_int8_net_drop_pts / 100.0
    x, y = dense_copy_counts(n, dense_int8_discordance_rate, d_dense)
    bound = float(paired_drop_upper_bound(x, y, n, confidence))
    certifiable = bound <= max_drop + _PASS_TOL
    d0 = max_discordance(n, max_drop, confidence, 0.0)
    dd = max_discordance(n, max_drop, confidence, d_dense)
    room_pts = 100.0 * (max_drop - bound)
    room_discordance = None if dd is None else dd - (x + y)
    needed = certify_n_needed(max_drop_pts, confidence, dense_int8_discordance_rate, dense_int8_net_drop_pts)
    conf = f"{100 * confidence:g}%"
    if not certifiable:
        status = "fail"
        message = (f"with {n} certify examples even an exact copy of the dense INT8 model can be certified only to "
                   f"{100 * bound:.1f} points at {conf} (the promise is {max_drop_pts:.1f}); "
                   + (f"it needs about {needed} certify examples. " if needed else "")
                   + "Give more labelled data, a larger --certify-fraction, or a looser --max-drop.")
    else:
        status = "warn" if room_pts < min_room_fraction * max_drop_pts else "ok"
        message = (f"with {n} certify examples an exact copy of the dense INT8 model is bounded at {100 * bound:.2f} "
                   f"points at {conf}: {room_pts:.2f} of the {max_drop_pts:.1f} points are left for pruning (a plan "
                   f"may differ from the unpruned model on at most {dd} examples at the INT8 file's observed drop, "
                   f"{d0} at no drop; INT8 alone accounts for {x + y})")
        if status == "warn":
            message += "; little room for pruning: more certify data or a looser --max-drop buys more"
    return {
        "status": status,
        "message": message,
        "n_certify": n,
        "max_drop_pts": float(max_drop_pts),
        "confidence": float(confidence),
        "max_discordance_at_zero_drop": d0,
        "max_discordance_at_dense_drop": dd,
        "dense_int8_expected_counts": {"n_worse": x, "n_better": y},
        "dense_int8_bound_pts": 100.0 * bound,
        "dense_int8_certifiable": certifiable,
        "room_for_pruning_pts": room_pts,
        "room_for_pruning_discordance": room_discordance,
        "certify_n_needed_for_dense_copy": needed,
    }


def certify_n_needed(max_drop_pts: float, confidence: float, discordance_rate: float, net_drop_pts: float, *,
                     room_pts: float = 0.0, n_max: int = 1_000_000) -> int | None:
    """Smallest certify size at which an exact copy of a file with these search-split rates certifies with
    ``room_pts`` to spare (None: not even at ``n_max``; e.g. when its net drop alone exceeds the promise).

    The expected counts are rounded, so the bound is not exactly monotone in n; the answer is found by doubling and
    bisection and is accurate to a few examples.
    """
    target = (max_drop_pts - room_pts) / 100.0
    drop = net_drop_pts / 100.0
    if not target > drop:
        return None

    def ok(n: int) -> bool:
        x, y = dense_copy_counts(n, discordance_rate, drop)
        return x + y <= n and _passes(x, y, n, target, confidence)

    lo, hi = 1, 64
    while not ok(hi):
        lo = hi
        hi *= 2
        if hi > n_max:
            if not ok(n_max):
                return None
            hi = n_max
            break
    while hi - lo > 1:  # lo fails (or is 1), hi passes
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def certify_fraction_needed(n_rows: int, max_drop_pts: float, confidence: float, discordance_rate: float,
                            net_drop_pts: float, *, room_pts: float = 0.0) -> float | None:
    """Smallest share of ``n_rows`` labelled rows whose certify split certifies an exact copy of the dense INT8
    file with ``room_pts`` to spare (None when all ``n_rows`` are not enough)."""
    need = certify_n_needed(max_drop_pts, confidence, discordance_rate, net_drop_pts, room_pts=room_pts,
                            n_max=max(int(n_rows), 1))
    if need is None or need > n_rows:
        return None
    return need / n_rows

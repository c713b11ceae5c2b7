"""Certifying shipped-form files on the certify split, and the one result object the report and the bundle read.

Certification (DESIGN.md section 2): each candidate plan is compiled to the file that would ship
(:func:`edgeprune.onnx.compile.compile_plan`), run once with onnxruntime on the certify split and paired against
the unpruned PyTorch model's predictions on the same examples; the one-sided upper confidence bound on the accuracy
drop (:func:`edgeprune.certify.stats.paired_drop_upper_bound`) must not exceed ``max_drop``. The candidates and
their order are fixed before the split is read (:func:`edgeprune.certify.policy.certification_sequence`) and tested
by fixed-sequence testing (:class:`edgeprune.certify.sequence.FixedSequence`): each at the full confidence, stopping
at the first failure; the most compressed plan that passed ships (:func:`certify_sequence`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from edgeprune.certify import stats
from edgeprune.errors import CertificationError, EdgepruneError


@dataclass
class Certification:
    """Outcome of certifying one file on the certify split (accuracies and bound as fractions)."""

    n: int
    base_accuracy: float
    accuracy: float
    n_worse: int
    n_better: int
    drop: float
    drop_upper_bound: float
    max_drop: float
    confidence: float
    per_look_confidence: float
    looks_planned: int
    passed: bool
    data_source: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def certify(base_preds: Sequence[int], preds: Sequence[int], labels: Sequence[int], *, max_drop: float,
            confidence: float, looks: int = 1, data_source: str = "") -> Certification:
    """Paired certification of a candidate's predictions against the base model's.

    Args:
        base_preds: unpruned model's predictions.
        preds: shipped model's predictions on the same examples.
        labels: gold labels.
        max_drop: allowed accuracy drop as a fraction (0.01 = 1 point).
        confidence: family-wise confidence of the promise.
        looks: number of candidate files that may be certified on this split (Bonferroni correction).
        data_source: description of the certify split, for the record.

    Returns:
        A :class:`Certification` (``passed`` says whether the bound holds).
    """
    n = len(labels)
    if not (len(base_preds) == len(preds) == n) or n == 0:
        raise EdgepruneError(f"certification needs aligned, non-empty predictions (got {len(base_preds)}, "
                             f"{len(preds)}, {n})")
    base_ok = [p == y for p, y in zip(base_preds, labels)]
    ok = [p == y for p, y in zip(preds, labels)]
    n_worse = sum(1 for b, c in zip(base_ok, ok) if b and not c)
    n_better = sum(1 for b, c in zip(base_ok, ok) if c and not b)
    per_look = float(stats.corrected_confidence(confidence, looks))
    bound = float(stats.paired_drop_upper_bound(n_worse, n_better, n, per_look))
    return Certification(
        n=n, base_accuracy=sum(base_ok) / n, accuracy=sum(ok) / n, n_worse=n_worse, n_better=n_better,
        drop=(n_worse - n_better) / n, drop_upper_bound=bound, max_drop=max_drop, confidence=confidence,
        per_look_confidence=per_look, looks_planned=looks, passed=bound <= max_drop + 1e-12,
        data_source=data_source,
    )


@dataclass
class CertificationResult:
    """The whole certification of a build: every candidate tested (in the frozen order), and what shipped.

    Attributes:
        shipped_index: index (in the candidate order) of the plan that ships.
        certified: the shipped plan's bound holds (``None``: no certify data, nothing was certified).
        forced: nothing certified and the first plan ships anyway on request (``--force``), marked.
        certification: the shipped plan's :class:`Certification` (``None`` without certify data).
        attempts: per tested candidate: ``plan_index``, ``kept_heads``, ``recovery_applied``, ``certification``.
    """

    shipped_index: int
    certified: Optional[bool]
    forced: bool
    certification: Optional[Certification]
    attempts: list[dict[str, Any]] = field(default_factory=list)
    sequence: Optional[dict[str, Any]] = None

    def to_dict(self) -> dict[str, Any]:
        return {"shipped_index": self.shipped_index, "certified": self.certified, "forced": self.forced,
                "certification": self.certification.to_dict() if self.certification else None,
                "attempts": self.attempts, "sequence": self.sequence}


def certify_sequence(
    plans: Sequence[Any],
    build: Callable[[int, Any], Any],
    predict: Callable[[Any], list[int]],
    base_preds: Optional[Sequence[int]],
    labels: Optional[Sequence[int]],
    *,
    max_drop_pts: float,
    confidence: float,
    names: Optional[Sequence[str]] = None,
    force: bool = False,
    data_source: str = "",
    describe: Callable[[Any], dict[str, Any]] = lambda built: {},
    recorded: Optional[dict[str, Any]] = None,
    on_record: Optional[Callable[[dict[str, Any]], None]] = None,
    hook: Callable[[str], None] | None = None,
) -> tuple[CertificationResult, Any]:
    """Fixed-sequence certification: test plans in their frozen order (least to most compressed) at the full
    confidence, stop at the first failure, ship the most compressed plan that passed.

    Args:
        plans: the frozen order (:func:`edgeprune.certify.policy.certification_sequence`).
        build: ``build(index, plan)`` -> the plan's shipped-form artifact (a :class:`~edgeprune.onnx.compile.Compiled`).
        predict: the artifact's predictions on the certify split.
        base_preds, labels: the unpruned model's predictions and the gold labels on the certify split; ``None``
            ships the last plan uncertified.
        max_drop_pts: allowed drop in points.
        confidence: the promise's confidence; every test runs at this level.
        names: the plans' names (default ``"0"``, ``"1"``, ...).
        force: when even the first plan fails, ship it anyway, marked as forced (with its failing numbers).
        data_source: the certify split's description, for the record.
        describe: extra fields of an attempt's record taken from the artifact.
        recorded: the record of an interrupted run on the same split (``on_record``'s last argument): its tests
            are reused, never looked at again.
        on_record: called with the record after every test (persist it to resume without a second look).
        hook: called with ``"certify"`` before each test (progress).

    Returns:
        ``(result, artifact of the shipped plan)``.

    Raises:
        CertificationError: the first plan fails (nothing certifiable) and ``force`` is off.
    """
    from edgeprune.certify.sequence import FixedSequence

    step = hook or (lambda name: None)
    names = [str(i) for i in range(len(plans))] if names is None else [str(n) for n in names]
    if len(names) != len(plans) or not plans:
        raise EdgepruneError(f"certification needs a non-empty sequence with one name per plan ({len(names)} names, "
                             f"{len(plans)} plans)")
    if base_preds is None:
        last = len(plans) - 1
        return CertificationResult(last, None, False, None, []), build(last, plans[last])
    seq = FixedSequence(max_drop_pts / 100.0, confidence, order=names)
    attempts: list[dict[str, Any]] = []
    old = {a["name"]: a for a in (recorded or {}).get("attempts", [])}
    best = None  # (index, artifact) of the most compressed plan that passed, built in this process
    for index, (name, plan) in enumerate(zip(names, plans)):
        if seq.stopped:
            break
        if name in old and old[name].get("certification") is not None:
            a = old[name]  # tested by an earlier, interrupted run of this build: reuse, no second look
            c = Certification(**a["certification"])
            seq.reuse(name, c.n_worse, c.n_better, c.n, c.drop_upper_bound, c.passed)
            attempts.append({**a, "reused": True})
            continue
        built = build(index, plan)
        step("certify")
        cert = certify(base_preds, predict(built), labels, max_drop=max_drop_pts / 100.0, confidence=confidence,
                       looks=1, data_source=data_source)
        seq.test(name, cert.n_worse, cert.n_better, cert.n)
        attempts.append({"plan_index": index, "name": name, "kept_heads": list(plan.kept_counts),
                         "heads_removed": plan.num_removed, "ffn_blocks_removed": plan.ffn_num_removed,
                         **describe(built), "certification": cert.to_dict()})
        if cert.passed or index == 0:
            best = (index, built) if cert.passed or best is None else best
        if on_record is not None:
            on_record({"sequence": seq.to_dict(), "attempts": [dict(a) for a in attempts]})
    record = seq.to_dict()
    last_passed = seq.last_passed
    if last_passed is None:
        if not force:
            a = attempts[0]["certification"]
            raise CertificationError(
                f"even the first plan of the certification sequence ({names[0]}: the unpruned model as it ships) "
                f"fails the bound 'accuracy drop <= {max_drop_pts} pts at {confidence:.0%} confidence' on the "
                f"certify split ({a['n']} examples): drop upper bound {100 * a['drop_upper_bound']:.2f} pts, "
                f"accuracy {100 * a['accuracy']:.2f}% vs base {100 * a['base_accuracy']:.2f}%.\n"
                "No bundle was written. Give more labelled data (a larger certify split), relax --max-drop, or "
                "pass --force to ship anyway (marked as NOT certified)."
            )
        # Forced: ship the plan whose test failed (the first of the order), with its failing numbers on record.
        last = 0
        built = best[1] if best is not None and best[0] == last else build(last, plans[last])
        cert = Certification(**attempts[0]["certification"])
        return CertificationResult(last, False, True, cert, attempts, record), built
    if best is None or best[0] != last_passed:  # passed in an earlier, interrupted run: rebuild its file, no look
        best = (last_passed, build(last_passed, plans[last_passed]))
    cert = Certification(**attempts[last_passed]["certification"])
    return CertificationResult(last_passed, True, False, cert, attempts, record), best[1]

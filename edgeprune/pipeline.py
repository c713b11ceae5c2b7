"""``edgeprune build``: the only place that chains the stages.

    task -> pre-flight -> latency table -> search -> export (+ quantize + certify) -> measure -> report

Every stage writes its result under ``OUT/.edgeprune/`` when it completes; ``resume=True`` reuses completed stages
(and the search journal), so an interrupted build continues where it stopped. A finished build leaves::

    OUT/bundle/        model.onnx (INT8), model.ort, tokenizer, config.json, edgeprune.json
    OUT/plan.json      the search result
    OUT/report.json    machine-readable (schema: README.md, "The report")
    OUT/report.md      a page a person reads in a minute
    OUT/pareto.png     accuracy vs latency
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .config import DEFAULT_SEARCH as _S
from .config import SearchSettings
from .certify.policy import DEFAULT_SEQUENCE_PLANS, DISTILL_SEQUENCE_PLANS
from .errors import BuildInterrupted, EdgepruneError, OutputFolderError, arg, flag
from .versions import versions

STATE_DIR = ".edgeprune"
#: Default search slack per recovery (points the search may lose before recovery, on top of --max-drop): only
#: distillation recovers beyond what the refit-priced search sees. Measured on the default task (docs/recovery.md):
#: the refit alone certified a 50% plan at 4.31 points and with 2 epochs of distillation 0.66; a 65% plan went
#: from 4.10 to 1.22-1.38 (still failing): the slack aims the distilled plan between the two.
SEARCH_SLACK_PTS = {"none": 0.0, "scale": 0.0, "refit": 0.0, "distill": 1.5}
# (the search already bounds at the certify split's size: SearchConfig.bound_scale)
STAGES = ("task", "preflight", "lut", "search", "export", "measure", "report")
# Relative cost of the stages on the default task (used for the overall progress bar and its ETA).
STAGE_WEIGHTS = {"task": 3, "preflight": 3, "lut": 12, "search": 50, "export": 20, "measure": 10, "report": 2}


@dataclass(frozen=True)
class BuildConfig:
    """Everything ``edgeprune build`` takes. Validated on creation; round-trips through dicts.

    Attributes:
        profile: device profile name or .toml path.
        model: model folder or hub id; None = the embedded default task (fine-tuned MiniLM).
        data: labelled dataset (CSV/TSV/JSONL, or a datasets name/folder); None = the default task's data.
        certify_data: separate held-out dataset for certification; None = split ``data``.
        certify_fraction: share of ``data`` that certifies when ``certify_data`` is not given (the rest is the
            search split). 0.6, chosen by measurement (``benchmarks/certify_fraction.py``, docs/certification.md):
            the search bounds its candidates at the certify split's size, so a larger certify split lets the
            shipped plan go further down the frontier (mean shipped index 0.54 -> 0.73 at 2,000 rows, 1.27 -> 1.53
            at 4,000, from 0.5 to 0.6; more up to 0.8); the search split is also the refit's fit data and the
            distillation data, which this simulation does not price, so the default stops at 0.6.
        text_column, text_pair_column, label_column: dataset columns (None = loader defaults).
        max_drop_pts: allowed accuracy drop in percentage points (certified at ``confidence``).
        confidence: one-sided confidence of the certified bound.
        latency_table: LUT JSON (e.g. measured on the device); None = measure on this host at the profile's settings.
        out: output folder.
        resume: continue an interrupted build in ``out``.
        overwrite: replace an existing finished build in ``out``.
        algorithm: search algorithm.
        max_evaluations: search budget (each evaluation is a pass over the search split). The evaluation count,
            not time, is the default budget, so the search does not depend on machine speed; it still depends on
            the latency table, which a build measures afresh unless ``--latency-table`` is given (two builds with
            freshly measured tables picked different plans). 80 evaluations take ~4.5 min on this project's
            2-core host (3.4 s each with 2 threads).
        search_seconds: wall-time safety cap of the search (None = none); when it is hit the best plan so far is
            used (recorded as ``search.stopped_by``) and the result depends on machine speed.
        correction: multiple-comparison correction of the search bound ("bonferroni" or "none"; docs/search.md).
        certify_plans: most plans the fixed-sequence certification tests, the unpruned one included
            (edgeprune.certify.policy.certification_sequence); None = 6, or 3 with ``distill`` (the dense file, the
            refitted fallback, the distilled plan).
        seed: seed for splits and the search.
        force: write the bundle even when certification fails (marked, non-zero exit).
        allow_pickle: allow pickle checkpoints of the user's model (only for trusted files).
        measure_rounds: alternating rounds for the side-by-side latency measurement.
        int8_aware: add the dense INT8 model's flips on the search split to every candidate's counts, so the
            search keeps room for quantization (the certified file is INT8).
        rescore_every: the greedy seed of A* re-scores head importance every this many removals.
        importance_examples: examples per head-importance (gradient) pass; None = the whole search split.
        structures: "heads" or "heads+ffn" (heads and FFN neuron blocks in one search; the LUT measures both).
        ffn_block_size: neurons per FFN block for "heads+ffn" (None = 128).
        recovery: what every pruned plan of the certification sequence gets before it is compiled and certified
            (edgeprune.recovery.chain): ``distill`` (default: the full least-squares weight refit for the plans the
            search priced within the promise; the refit then distillation for the searched plan when it lies
            beyond, up to ``search_slack_pts``; docs/recovery.md), ``refit`` (the refit alone, no training), ``scale``
            (the least-squares rescaling of the kept units) or ``none``. With ``refit`` and ``distill`` the search
            prices candidates after the refit (``SearchSettings.pricing``).
        distill_epochs: passes over the distillation texts for the distilled plan.
        distill_ce_weight: weight of the cross-entropy on the gold labels next to the KL term (0 = KL only).
        distill_int8_aware: distil through the simulated INT8 forward pass (quantization-aware distillation).
        distill_data: extra unlabelled (or labelled) in-domain texts for distillation (a file like ``data``; a
            plain text file has one text per line). Never the certify data.
        distill_augment: augmented unlabelled variants per distillation text (edgeprune.recovery.augment: words
            masked, replaced and windowed; KL term only; 0 = none). None of them equals a certify text.
        search_slack_pts: points the search may lose *before* distillation on top of ``max_drop_pts`` (the refit-
            priced estimate under-states what distillation recovers; the certification sequence still tests every
            shipped-form plan at ``max_drop_pts``). None = the recovery's default (:data:`SEARCH_SLACK_PTS`).
        step_units: units the search removes per move (SearchSettings.step_units).
        recovery_examples: search-split examples the recovery fit uses (evenly strided).
    """

    profile: str = "raspberrypi4"
    model: Optional[str] = None
    data: Optional[str] = None
    certify_data: Optional[str] = None
    certify_fraction: float = 0.6
    text_column: Optional[str] = None
    text_pair_column: Optional[str] = None
    label_column: Optional[str] = None
    max_drop_pts: float = 1.0
    confidence: float = 0.95
    latency_table: Optional[str] = None
    out: str = "edgeprune-out"
    resume: bool = False
    overwrite: bool = False
    algorithm: str = _S.algorithm
    max_evaluations: int = _S.max_evaluations
    search_seconds: Optional[float] = _S.max_seconds
    correction: str = _S.correction
    certify_plans: Optional[int] = None
    seed: int = _S.seed
    force: bool = False
    allow_pickle: bool = False
    measure_rounds: int = 120
    int8_aware: bool = _S.int8_aware
    rescore_every: int = _S.rescore_every
    importance_examples: Optional[int] = _S.importance_examples
    structures: str = _S.structures
    ffn_block_size: Optional[int] = _S.ffn_block_size
    recovery: str = "distill"
    recovery_examples: int = 1024
    distill_epochs: float = 2.0
    distill_ce_weight: float = 0.5
    distill_int8_aware: bool = False
    distill_data: Optional[str] = None
    distill_augment: int = 0
    search_slack_pts: Optional[float] = None
    step_units: int = _S.step_units

    def __post_init__(self) -> None:
        if isinstance(self.recovery, bool):  # the old on/off switch: on meant the scale refit
            object.__setattr__(self, "recovery", "scale" if self.recovery else "none")
        from .recovery.chain import RECOVERIES

        if self.recovery not in RECOVERIES:
            raise EdgepruneError(f"unknown {arg('recovery')} {self.recovery!r}; choose one of {', '.join(RECOVERIES)}")
        if not self.distill_epochs > 0:
            raise EdgepruneError(f"{arg('distill_epochs')} must be > 0, got {self.distill_epochs}")
        if not 0 <= self.distill_augment <= 16:
            raise EdgepruneError(f"{arg('distill_augment')} must be a whole number of variants in [0, 16], got "
                                 f"{self.distill_augment}")
        if not self.distill_ce_weight >= 0:
            raise EdgepruneError(f"{arg('distill_ce_weight')} must be >= 0, got {self.distill_ce_weight}")
        if self.search_slack_pts is not None and not 0 <= self.search_slack_pts <= 100:
            raise EdgepruneError(f"{arg('search_slack_pts')} must be in [0, 100] points, got {self.search_slack_pts}")
        if self.distill_data is not None and not Path(self.distill_data).is_file():
            raise EdgepruneError(f"{arg('distill_data')} {self.distill_data}: no such file")
        if (self.model is None) != (self.data is None):
            raise EdgepruneError(f"give both {arg('model')} and {arg('data')}, or neither (then the embedded default "
                                 "task is used)")
        if self.certify_data is not None and self.data is None:
            raise EdgepruneError(f"{arg('certify_data')} needs {arg('data')}")
        if not 0.0 <= self.max_drop_pts <= 100.0:
            raise EdgepruneError(f"{arg('max_drop_pts')} is in accuracy points and must be in [0, 100], got "
                                 f"{self.max_drop_pts}")
        if not 0.5 <= self.confidence < 1.0:
            raise EdgepruneError(f"{arg('confidence')} must be in [0.5, 1), got {self.confidence}")
        if not 0.05 <= self.certify_fraction <= 0.95:
            raise EdgepruneError(f"{arg('certify_fraction')} must be in [0.05, 0.95], got {self.certify_fraction}")
        if self.certify_plans is not None and self.certify_plans < 1:
            raise EdgepruneError(f"{arg('certify_plans')} must be >= 1, got {self.certify_plans}")
        self.search_settings()  # validates the search settings (one place: edgeprune.config.SearchSettings)
        if self.measure_rounds < 5:
            raise EdgepruneError("measure_rounds >= 5 is required")
        if self.resume and self.overwrite:
            raise EdgepruneError(f"{arg('resume')} and {arg('overwrite')} exclude each other")
        hub_like = self.model is not None and self.model.count("/") == 1 and not self.model.startswith((".", "/", "~"))
        if self.model is not None and not Path(self.model).expanduser().exists() and not hub_like:
            # Not a folder and not shaped like a hub id: almost certainly a typo.
            raise EdgepruneError(f"{arg('model')} {self.model!r}: no such folder (a hub id looks like 'owner/name')")
        if self.latency_table is not None and not Path(self.latency_table).is_file():
            raise EdgepruneError(f"{arg('latency_table')} {self.latency_table}: no such file")

    def search_settings(self) -> SearchSettings:
        """The build's search settings (``edgeprune search`` starts from the same defaults)."""
        return SearchSettings(
            algorithm=self.algorithm, structures=self.structures, ffn_block_size=self.ffn_block_size,
            max_evaluations=self.max_evaluations, max_seconds=self.search_seconds, correction=self.correction,
            int8_aware=self.int8_aware, rescore_every=self.rescore_every,
            importance_examples=self.importance_examples, seed=self.seed, step_units=self.step_units,
            pricing=_S.pricing if self.recovery in ("refit", "distill") else "none")

    @property
    def sequence_plans(self) -> int:
        """Most plans the certification sequence tests (``certify_plans``, or the recovery's default)."""
        if self.certify_plans is not None:
            return int(self.certify_plans)
        return DISTILL_SEQUENCE_PLANS if self.recovery == "distill" else DEFAULT_SEQUENCE_PLANS

    @property
    def slack_pts(self) -> float:
        """Points the search may lose before recovery on top of the promise (see ``search_slack_pts``)."""
        if self.search_slack_pts is not None:
            return float(self.search_slack_pts)
        return SEARCH_SLACK_PTS.get(self.recovery, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BuildConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise EdgepruneError(f"unknown build settings: {', '.join(unknown)}")
        return cls(**data)

    def fingerprint(self) -> dict[str, Any]:
        """The settings a resumed build must share with the interrupted one."""
        d = self.to_dict()
        for k in ("resume", "overwrite", "out", "force", "measure_rounds"):
            d.pop(k)
        return d


# ---------------------------------------------------------------------------------------------------------------------
# progress
# ---------------------------------------------------------------------------------------------------------------------
def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


class _Display:
    """Console output of a build, for a terminal and for a log (on stderr; the result summary goes to stdout).

    In a terminal: one progress bar (overall, ETA, the current step) and a line per finished stage with its time.
    Otherwise (a log file, CI): plain lines only, one when a stage starts, one when it ends with its time, and a
    heartbeat every ``heartbeat_s`` with the stage's latest status (e.g. evaluations and best plan of the search).
    A ticker thread also calls ``on_tick`` every few seconds (the build's time accounting across processes).
    """

    def __init__(self, enabled: bool, *, stream: Any = None, heartbeat_s: float = 30.0,
                 terminal: Optional[bool] = None):
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.terminal = bool(terminal if terminal is not None else (isatty() if callable(isatty) else False))
        self.heartbeat_s = heartbeat_s
        self.progress = None
        self.overall = None
        self._base = 0.0
        self.current: Optional[str] = None
        self.index = 0
        self.info = ""
        self._stage_t0 = 0.0
        self.stage_seconds: dict[str, float] = {}
        self.on_tick: Optional[Callable[[], None]] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self._last_line = time.monotonic()

    def __enter__(self) -> "_Display":
        self._thread = threading.Thread(target=self._ticker, name="edgeprune-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _start_bar(self) -> None:
        # Started after the task stage: the default task's one-time fine-tuning shows its own progress bar.
        if self.enabled and self.terminal and self.progress is None:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                console=Console(file=self.stream),
            )
            self.progress.__enter__()
            self.overall = self.progress.add_task("build", total=sum(STAGE_WEIGHTS.values()), info="")

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def _ticker(self) -> None:
        tick = max(min(5.0, self.heartbeat_s), 0.05)
        while not self._stop.wait(tick):
            if self.on_tick is not None:
                try:
                    self.on_tick()
                except Exception:  # noqa: BLE001 - time accounting must never break the build
                    pass
            if self.enabled and not self.terminal and self.current is not None \
                    and time.monotonic() - self._last_line >= self.heartbeat_s:
                elapsed = time.perf_counter() - self._stage_t0
                self._line(f"  {self.current}: {self.info or 'working'} ({_clock(elapsed)} in this stage)")

    def _line(self, text: str) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._last_line = time.monotonic()
            if self.progress is not None:  # above the bar; markup off: messages may contain [brackets]
                self.progress.console.print(f"[{time.strftime('%H:%M:%S')}] {text}", markup=False, highlight=False)
            else:
                print(f"[{time.strftime('%H:%M:%S')}] {text}", file=self.stream, flush=True)

    def _end_current(self) -> None:
        if self.current is None:
            return
        dt = time.perf_counter() - self._stage_t0
        self.stage_seconds[self.current] = self.stage_seconds.get(self.current, 0.0) + dt
        self._line(f"stage {self.index + 1}/{len(STAGES)}: {self.current} done in {dt:.1f} s")
        self.current = None

    def current_seconds(self) -> dict[str, float]:
        """Seconds per stage in this process so far, the running stage included."""
        out = dict(self.stage_seconds)
        if self.current is not None:
            out[self.current] = out.get(self.current, 0.0) + time.perf_counter() - self._stage_t0
        return out

    def stage(self, name: str, index: int, *, reused: bool = False) -> None:
        """Start stage ``name`` (``index`` in STAGES); ``reused``: its result comes from the interrupted build."""
        self._end_current()
        if self.on_tick is not None:
            self.on_tick()  # the time of the stage that just ended is on disk before the next one starts
        self._base = sum(STAGE_WEIGHTS[s] for s in STAGES[:index])
        if index >= 1:
            self._start_bar()
        label = f"stage {index + 1}/{len(STAGES)}: {name}"
        if self.progress is not None:
            self.progress.update(self.overall, completed=self._base, description=label, info="")
        if reused:
            self._line(f"{label}: reused from the interrupted build")
            return
        self.current, self.index, self.info, self._stage_t0 = name, index, "", time.perf_counter()
        if self.progress is None:
            self._line(label)

    def finish(self) -> None:
        """End the last stage (prints its time)."""
        self._end_current()

    def fraction(self, name: str, frac: float, info: str = "") -> None:
        """Progress inside the current stage (0..1) and its latest status (shown by the heartbeat)."""
        if info:
            self.info = info
        if self.progress is not None:
            frac = min(max(frac, 0.0), 1.0)
            self.progress.update(self.overall, completed=self._base + frac * STAGE_WEIGHTS[name], info=info)

    def log(self, message: str) -> None:
        self._line(message)


@contextlib.contextmanager
def _quiet_libraries():
    """No third-party progress bars or INFO lines in a build's output (transformers' "Loading weights" and "Writing
    model shards" bars, huggingface_hub downloads, onnxruntime tools' INFO logging); restored afterwards."""
    undo: list[Callable[[], None]] = []
    try:
        from transformers.utils import logging as hf_logging

        was_bar, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        undo.append(lambda: (hf_logging.enable_progress_bar() if was_bar else None,
                             hf_logging.set_verbosity(level)))
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    try:
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

        if not are_progress_bars_disabled():
            disable_progress_bars()
            undo.append(enable_progress_bars)
    except ImportError:  # pragma: no cover
        pass
    try:
        yield
    finally:
        for fn in reversed(undo):
            fn()


# ---------------------------------------------------------------------------------------------------------------------
# state
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class _State:
    """The build folder's bookkeeping under ``OUT/.edgeprune/``: finished stages, the lock, and the time every
    process spent on this build (``sessions.json``, updated every few seconds, so a killed process counts too)."""

    out: Path
    cfg: BuildConfig
    done: dict[str, dict] = field(default_factory=dict)
    lock: Any = None
    created: bool = False  # this process created OUT
    sessions: list[dict] = field(default_factory=list)  # earlier processes of this build
    t0: float = field(default_factory=time.perf_counter)  # this process's start
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    closed: bool = False  # the folder was given back (failed start): the ticker must not write into it again
    _tick_lock: Any = field(default_factory=threading.Lock, repr=False)

    @property
    def dir(self) -> Path:
        return self.out / STATE_DIR

    def load(self) -> None:
        for stage in STAGES:
            p = self.dir / f"{stage}.json"
            if p.is_file():
                self.done[stage] = json.loads(p.read_text())
        p = self.dir / "sessions.json"
        if p.is_file():
            try:
                self.sessions = list(json.loads(p.read_text()).get("sessions", []))
            except (json.JSONDecodeError, AttributeError):
                self.sessions = []

    def save(self, stage: str, result: dict) -> dict:
        from .output.folder import atomic_write_text

        # atomic: a stage is either recorded whole or not at all
        atomic_write_text(self.dir / f"{stage}.json", json.dumps(result, indent=2, default=str) + "\n")
        self.done[stage] = result
        return result

    def _mine(self, stages: dict[str, float]) -> dict:
        return {"pid": os.getpid(), "started": self.started, "seconds": round(time.perf_counter() - self.t0, 2),
                "stages_s": {k: round(v, 2) for k, v in stages.items()}}

    def tick(self, stages: dict[str, float]) -> None:
        """Record this process's time so far (called every few seconds and at each stage)."""
        from .output.folder import atomic_write_text

        with self._tick_lock:
            if not self.closed:
                atomic_write_text(self.dir / "sessions.json",
                                  json.dumps({"sessions": self.sessions + [self._mine(stages)]}, indent=2) + "\n")

    def timing(self, stages: dict[str, float]) -> dict:
        """The whole build's time: every process that worked on it (an interrupted one up to its last tick)."""
        all_sessions = self.sessions + [self._mine(stages)]
        per_stage: dict[str, float] = {}
        for sess in all_sessions:
            for k, v in sess.get("stages_s", {}).items():
                per_stage[k] = per_stage.get(k, 0.0) + float(v)
        return {"wall_s": round(sum(float(x.get("seconds", 0.0)) for x in all_sessions), 1),
                "processes": len(all_sessions), "this_process_s": round(time.perf_counter() - self.t0, 1),
                "stages_s": {k: round(per_stage[k], 1) for k in STAGES if k in per_stage}}

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def _folder_entries(out: Path) -> tuple[list[Path], list[str], bool]:
    """(entries other than the state folder, stages recorded, whether the state folder has a config marker)."""
    if not out.is_dir():
        return [], [], False
    others = [p for p in out.iterdir() if p.name != STATE_DIR]
    state = out / STATE_DIR
    stages = [s for s in STAGES if (state / f"{s}.json").is_file()]
    return others, stages, (state / "config.json").is_file()


def _check_out(cfg: BuildConfig) -> str:
    """Decide, without writing anything, how ``cfg.out`` will be used: "fresh", "resume" or "overwrite".

    A folder whose build never got past the task stage (a failed start) counts as empty: nothing in it is worth
    keeping, so it never blocks the next run.

    Raises:
        OutputFolderError: the path cannot be created, another live build uses it, it holds something that is not an
            edgeprune build, or a build there conflicts with the request (settings differ, finished, unfinished).
    """
    from .output.folder import LOCK_NAME, FolderLock, check_out_path

    out = check_out_path(cfg.out, "out")
    FolderLock(out / STATE_DIR / LOCK_NAME, out).refuse_if_held()
    others, stages, marked = _folder_entries(out)
    worth_keeping = bool(others) or (marked and set(stages) - {"task"})
    if cfg.resume:
        if not worth_keeping:
            return "fresh"  # nothing to continue: start (the same command works either way)
        if not marked:
            raise OutputFolderError(f"{out} is not an edgeprune build folder; cannot {arg('resume')} there")
        old = json.loads((out / STATE_DIR / "config.json").read_text())
        now = cfg.fingerprint()
        if old != now:
            diff = sorted(k for k in set(old) | set(now) if old.get(k) != now.get(k))
            raise OutputFolderError(
                f"{out} was built with other settings ({', '.join(diff)}); use the same settings to "
                f"{arg('resume')}, or {arg('overwrite')} to start again")
        return "resume"
    if not worth_keeping:
        return "fresh"
    if not marked:
        if cfg.overwrite:
            raise OutputFolderError(f"{out} is not an edgeprune build folder; refusing to delete it (choose another "
                                    f"{arg('out')})")
        raise OutputFolderError(f"{out} exists, is not empty and is not an edgeprune build folder; choose another "
                                f"{arg('out')}")
    if cfg.overwrite:
        return "overwrite"
    if "report" in stages:
        raise OutputFolderError(f"{out} holds a finished build: pass {flag('overwrite')} to replace it, or choose "
                                f"another {arg('out')}")
    raise OutputFolderError(f"{out} holds an unfinished build (stages done: {', '.join(stages) or 'none'}): pass "
                            f"{flag('resume')} to continue it with the same settings, or {flag('overwrite')} to "
                            "start again")


def _claim_out(cfg: BuildConfig, t0: Optional[float] = None) -> _State:
    """Take ``cfg.out`` for this build, after the inputs were validated: create it, lock it, then (under the lock)
    check it again, clear it for a fresh start, or load the interrupted build and remove its partial files."""
    from .output.folder import LOCK_NAME, FolderLock, atomic_write_text, remove_tree

    out = Path(cfg.out).expanduser()
    created = not out.exists()
    try:
        (out / STATE_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputFolderError(f"{arg('out')} {cfg.out}: cannot be created ({exc.strerror or exc})") from None
    lock = FolderLock(out / STATE_DIR / LOCK_NAME, out)
    lock.acquire()  # if another build holds it, nothing here is ours to remove
    try:
        mode = _check_out(cfg)  # again, under the lock: another build may have used the folder meanwhile
        state = _State(out, cfg, lock=lock, created=created)
        if t0 is not None:
            state.t0 = t0  # the time spent validating before the claim counts too
        if mode == "resume":
            state.load()
            _remove_partial_files(state)
        else:
            for p in out.iterdir():
                if p.name != STATE_DIR:
                    remove_tree(p)
            for p in (out / STATE_DIR).iterdir():
                if p.name != LOCK_NAME:
                    remove_tree(p)
            atomic_write_text(state.dir / "config.json", json.dumps(cfg.fingerprint(), indent=2) + "\n")
        return state
    except BaseException:
        lock.release()
        if created:
            remove_tree(out)
        raise


def _remove_partial_files(state: _State) -> list[str]:
    """Files an interrupted stage may have left half written (they are rebuilt): the bundle's temporary folder,
    temporary files of atomic writes, and the scratch folders of the stages that did not finish."""
    from .output.folder import remove_tree

    removed = []
    for p in list(state.out.glob(".bundle.tmp-*")) + list(state.out.glob(".*.tmp")) + \
            list(state.dir.glob(".*.tmp")) + list(state.dir.glob("*.tmp")):
        remove_tree(p)
        removed.append(p.name)
    scratch = {"search": "dense-int8-preset", "measure": "dense"}
    for stage, name in scratch.items():
        if stage not in state.done and (state.dir / name).exists():
            remove_tree(state.dir / name)
            removed.append(f"{STATE_DIR}/{name}")
    if "export" not in state.done and (state.out / "bundle").exists():
        # export_bundle moves the finished bundle into place by a rename, so a bundle here is whole; it is rebuilt
        # anyway (the export stage is recorded after the rename) and removed so no stale bundle lingers meanwhile.
        remove_tree(state.out / "bundle")
        removed.append("bundle")
    return removed


def _release_failed_start(state: _State) -> None:
    """After a failure before anything worth keeping was built (only the task stage): leave nothing that blocks
    the next run."""
    from .output.folder import remove_tree

    if set(state.done) - {"task"}:
        return
    with state._tick_lock:
        state.closed = True
    remove_tree(state.dir / "config.json")
    for stage in STAGES:
        remove_tree(state.dir / f"{stage}.json")
    remove_tree(state.dir / "sessions.json")
    remove_tree(state.out / "latency_table.json")
    state.release()
    try:
        state.dir.rmdir()
        if state.created:
            state.out.rmdir()
    except OSError:
        pass  # something else is in there: leave it


# ---------------------------------------------------------------------------------------------------------------------
# stages
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class _Task:
    model_dir: str
    search: Any
    certify: Any
    info: dict
    distill: Any = None  # distillation texts (never the certify split); None = the search split


def split_user_data(cfg: BuildConfig, label2id: dict) -> tuple[Any, Any, dict]:
    """The search and certify splits a build makes of the user's ``--data`` (or ``--data`` and ``--certify-data``).

    Public so that a benchmark comparing other models with a build (``benchmarks.smaller_model --task banking77``)
    scores them on the very split the build certified on, not on a re-implementation of it.

    Args:
        cfg: the build's settings (reads ``data``, ``certify_data``, the column names, ``seed`` and
            ``certify_fraction``).
        label2id: the model config's label mapping (label names in the file are mapped through it).

    Returns:
        ``(search, certify, info)``: two ``TextDataset`` objects and the record the report stores under ``data``.

    Raises:
        EdgepruneError: unreadable data, too few examples, or a certify file labelled unlike ``data``.
    """
    import hashlib

    from .task.data import load_dataset
    from .task.default import split_indices

    kw = dict(text_column=cfg.text_column, text_pair_column=cfg.text_pair_column,
              label_column=cfg.label_column, label2id=label2id)
    kw = {k: v for k, v in kw.items() if v is not None}
    data = load_dataset(cfg.data, **kw)
    if cfg.certify_data:
        certify = load_dataset(cfg.certify_data, **kw)
        _check_same_labels(cfg, data, certify)
        return data, certify, {"search": {"source": str(cfg.data), "size": len(data)},
                               "certify": {"source": str(cfg.certify_data), "size": len(certify)}}
    # Ids from position + content: the split is deterministic for a file and seed, and disjoint by construction.
    ids = [f"{i}:{hashlib.sha1((t + '|' + (p or '')).encode()).hexdigest()[:12]}"
           for i, (t, p, _) in enumerate(data)]
    parts = split_indices(ids, data.labels, cfg.seed, (0.0, 1.0 - cfg.certify_fraction, cfg.certify_fraction))
    search = data.subset(parts["search"], source=f"{cfg.data} [search split]")
    certify = data.subset(parts["certify"], source=f"{cfg.data} [certify split]")
    if len(search) < 50 or len(certify) < 50:
        raise EdgepruneError(f"{cfg.data}: {len(data)} examples are too few to search and certify "
                             "(need >= 100; a 1-point certified bound needs thousands)")
    info = {"source": str(cfg.data), "seed": cfg.seed, "certify_fraction": cfg.certify_fraction,
            "search": {"size": len(search)}, "certify": {"size": len(certify)}}
    return search, certify, info


def _label_names(ds) -> list[str]:
    names = ds.id2label or {}
    return [names.get(i, str(i)) for i in sorted(set(ds.labels))]


def _check_same_labels(cfg: BuildConfig, data, certify) -> None:
    """The certify file must use the classes the search data uses: a class only one of them has means two
    different tasks (or a column mix-up), and a bound certified on such a pair promises nothing."""
    a, b = set(data.labels), set(certify.labels)
    if b - a:
        raise EdgepruneError(
            f"{arg('certify_data')} {cfg.certify_data} has labels {_label_names(certify)} but {arg('data')} "
            f"{cfg.data} has {_label_names(data)}: the certify data must be labelled like the search data")
    if a - b:
        raise EdgepruneError(
            f"{arg('certify_data')} {cfg.certify_data} has no example of label(s) "
            f"{[ (data.id2label or {}).get(i, str(i)) for i in sorted(a - b)]} that {arg('data')} {cfg.data} has "
            f"({_label_names(data)}): certify on data labelled like the search data")


def _stage_task(cfg: BuildConfig, show: bool) -> _Task:
    if cfg.model is None:
        from .task.default import default_task

        task = default_task(progress=show)
        max_len = task.manifest.get("spec", {}).get("max_seq_len")
        info = {"default_task": True, "model_dir": str(task.model_dir), "splits": task.data.record(),
                "finetune_accuracy": task.accuracy, "finetune_accuracy_max_length": max_len,
                "finetune_accuracy_note": f"measured once after fine-tuning, at the fine-tuning length ({max_len} "
                                          "tokens); accuracy.baseline is the same model on the certify split at the "
                                          "profile's seq_len, so the two can differ slightly"}
        from .recovery.distill import task_distill_data

        return _Task(str(task.model_dir), task.search, task.certify, info, distill=task_distill_data(task))
    from .task.modeling import load_config

    config = load_config(cfg.model)
    label2id = dict(getattr(config, "label2id", {}) or {})
    search, certify, info = split_user_data(cfg, label2id)
    return _Task(str(cfg.model), search, certify, {"default_task": False, "model_dir": str(cfg.model), **info})


def _load(cfg: BuildConfig, model_dir: str):
    from .task.modeling import load_model

    return load_model(model_dir, allow_pickle=cfg.allow_pickle)


def _stage_lut(cfg: BuildConfig, state: _State, model, display: _Display) -> dict:
    from .latency.table import build_lut, load_lut, save_lut

    if cfg.latency_table:
        lut = load_lut(cfg.latency_table)
        source = f"latency table {cfg.latency_table}"
    else:
        from .task.modeling import clone_model

        lut = build_lut(clone_model(model), cfg.profile, ffn=cfg.structures == "heads+ffn",
                        log_fn=lambda m: display.fraction("lut", 0.5, m[:60]))
        source = "latency table measured on this host at the profile's settings"
    path = save_lut(lut, state.out / "latency_table.json")
    return {"path": str(path), "source": source, "where": lut.get("provenance", {}).get("where", "")}


def _stage_preflight(cfg: BuildConfig, state: _State, model, tokenizer, task: _Task, display: _Display) -> dict:
    """Before any search: what the certify split can certify, from the dense INT8 file's flips on the search split.

    Stops the build (exit code 2) when even an exact copy of the dense INT8 model cannot be certified; warns when
    little room is left for pruning. The dense INT8 predictions are kept for the search's INT8 allowance.
    """
    from .certify.sequence import preflight
    from .profiles import load_profile
    from .search.run import shipped_dense_predictions
    from .task.predict import torch_predictions

    prof = load_profile(cfg.profile)
    display.fraction("preflight", 0.1, "dense INT8 file on the search split")
    shipped = shipped_dense_predictions(model, tokenizer, task.search, prof, state.dir / "dense-int8-preset")
    display.fraction("preflight", 0.6, "dense FP32 model on the search split")
    base = torch_predictions(model, tokenizer, task.search, max_length=prof.seq_len)
    labels = list(task.search.labels)
    worse = sum(1 for b, q, y in zip(base, shipped, labels) if b == y and q != y)
    better = sum(1 for b, q, y in zip(base, shipped, labels) if b != y and q == y)
    n = len(labels)
    check = preflight(len(task.certify), cfg.max_drop_pts, cfg.confidence, (worse + better) / n,
                      100.0 * (worse - better) / n)
    check["search_split"] = {"n": n, "dense_int8_worse": worse, "dense_int8_better": better}
    if check["status"] == "fail":
        raise EdgepruneError("pre-flight: " + check["message"])
    return {"preflight": check, "shipped_predictions": shipped if cfg.int8_aware else None}


def _stage_search(cfg: BuildConfig, state: _State, model, tokenizer, task: _Task, lut_path: str,
                  shipped: Optional[list], display: _Display) -> dict:
    from .search.run import run_search, write_plan

    def on_progress(p) -> None:
        what = "heads" if cfg.structures == "heads" else "units"
        display.fraction("search", p.evaluations / max(p.max_evaluations, 1),
                         f"evals {p.evaluations}/{p.max_evaluations}  best: -{p.best_removed} {what} "
                         f"{p.best_latency_ms:.1f} ms")

    t0 = time.perf_counter()
    result = run_search(
        model, task.search, settings=cfg.search_settings(), profile=cfg.profile, latency_table=lut_path,
        max_drop_pts=cfg.max_drop_pts + cfg.slack_pts, confidence=cfg.confidence, tokenizer=tokenizer,
        journal=state.dir / "search.journal.jsonl", resume=True, on_progress=on_progress,
        shipped_predictions=shipped, bound_scale=len(task.certify) / len(task.search),
    )
    plan_path = write_plan(result, state.out / "plan.json")
    data = json.loads(Path(plan_path).read_text())
    data.setdefault("search", {})["pipeline_wall_s"] = round(time.perf_counter() - t0, 2)
    data["search"]["slack_pts"] = cfg.slack_pts
    data["search"]["promise_pts"] = cfg.max_drop_pts
    return {"plan_path": str(plan_path), "plan": data}


def _stage_export(cfg: BuildConfig, state: _State, model_dir: str, task: _Task, plan_json: dict,
                  display: _Display) -> dict:
    from .certify.ledger import earlier_builds, record_build, split_key
    from .certify.policy import certification_sequence
    from .output.bundle import export_bundle, sequence_lines
    from .task.default import cache_root

    model, tokenizer = _load(cfg, model_dir)
    # The order is frozen here, from the search's results alone, before the certify split is read.
    # Plans whose search estimate exceeds what recovery is expected to bring back (promise + slack) are skipped;
    # with distillation the ladder holds the plans whose search bound is within the promise (refitted), and only
    # the searched plan may lie beyond it (it alone is distilled).
    sequence = certification_sequence(plan_json, cfg.max_drop_pts + cfg.slack_pts, cfg.sequence_plans,
                                      ladder_max_pts=cfg.max_drop_pts if cfg.recovery == "distill" else None)
    names = [name for name, _, _ in sequence]
    plans = [plan for _, plan, _ in sequence]
    beyond = [pt is not None and float(pt.get("drop_bound_pts") or 0.0) > cfg.max_drop_pts for _, _, pt in sequence]
    recoverer = _recoverer(cfg, state, model, tokenizer, task, plans, beyond, display)
    steps = ["surgery", "export", "optimize", "quantize", "certify", "ort", "write"]

    def hook(step: str) -> None:
        if step in steps:
            display.fraction("export", steps.index(step) / len(steps), step)

    record_path = state.dir / "certify.sequence.json"
    recorded = json.loads(record_path.read_text()) if record_path.is_file() else None

    def on_record(record: dict) -> None:  # every test is persisted: a resumed build never looks twice
        tmp = record_path.with_name(record_path.name + ".tmp")
        tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
        tmp.replace(record_path)

    key, build_id = split_key(task.certify), str(state.out.resolve())
    earlier = earlier_builds(cache_root(), key, build_id)
    if earlier:
        display.log(f"this certify split was already used by {len(earlier)} earlier build(s); the "
                    f"{cfg.confidence:.0%} holds for one build only, or pass fresh --certify-data")
    bundle_dir = state.out / "bundle"
    result = export_bundle(
        model, plans[-1], cfg.profile, bundle_dir, certify_data=task.certify, max_drop_pts=cfg.max_drop_pts,
        confidence=cfg.confidence, frontier=plans[:-1], names=names, force=cfg.force,
        overwrite=True, hook=hook, recover=recoverer, recorded=recorded, on_record=on_record,
        tokenizer=tokenizer, model_source=model_dir,
    )
    record_build(cache_root(), key, build_id, n=len(task.certify), tests=len(result.attempts))
    for line in sequence_lines(result.attempts, result.plan_index, (result.sequence or {}).get("stop_reason")):
        display.log(line.strip() if line.startswith("  certification") else line)
    cert = result.certification.to_dict() if result.certification else None
    return {"bundle": str(result.out_dir), "plan": result.plan.to_dict(), "plan_index": result.plan_index,
            "plan_name": names[result.plan_index], "certified": result.certified, "forced": result.forced,
            "certification": cert, "attempts": result.attempts, "sequence": result.sequence,
            "order": [{"name": n, "heads_removed": p.num_removed, "ffn_blocks_removed": p.ffn_num_removed,
                       "predicted_latency_ms": (pt or {}).get("latency_ms"),
                       "search_split_drop_pts": (pt or {}).get("drop_pts"),
                       "search_split_drop_bound_pts": (pt or {}).get("drop_bound_pts"),
                       **({"distilled": True} if cfg.recovery == "distill" and b else {})}
                      for (n, _, pt), p, b in zip(sequence, plans, beyond)],
            "recovery_method": cfg.recovery,
            "earlier_builds_on_certify_split": len(earlier), "checks": result.checks,
            "recovery": result.recovery}


def _recoverer(cfg: BuildConfig, state: "_State", model, tokenizer, task: _Task, plans: list, beyond: list,
               display: "_Display"):
    """The model each pruned plan of the sequence is compiled from (edgeprune.recovery.chain), or None.
    ``beyond``: per plan, whether the search priced it beyond the promise (distillation distils those)."""
    if cfg.recovery == "none":
        return None
    from .profiles import load_profile
    from .recovery.chain import DistillSettings, Recoverer
    from .recovery.refit import unsupported_reason

    method = cfg.recovery
    why = unsupported_reason(model) if method == "refit" else None
    if why:  # e.g. ModernBERT (bias-free, pre-LayerNorm): the scale refit still applies
        display.log(f"--recovery refit is not available for this model ({why}); using --recovery scale")
        method = "scale"
    distill_data = None
    if cfg.recovery == "distill":
        distill_data = task.distill if task.distill is not None else task.search
        if cfg.distill_data:
            distill_data = _with_extra_texts(distill_data, cfg.distill_data)
        if cfg.distill_augment:
            from .recovery.augment import AugmentConfig, augmented_dataset

            distill_data = augmented_dataset(distill_data, AugmentConfig(copies=cfg.distill_augment, seed=cfg.seed),
                                             mask_token=getattr(tokenizer, "mask_token", None) or "[MASK]",
                                             exclude=task.certify.texts)
    return Recoverer(method, model, tokenizer, fit_data=task.search, distill_data=distill_data, plans=plans,
                     beyond_refit=beyond, work=state.dir, fit_examples=cfg.recovery_examples, max_length=load_profile(cfg.profile).seq_len,
                     distill=DistillSettings(epochs=cfg.distill_epochs, seed=cfg.seed,
                                             ce_weight=cfg.distill_ce_weight, int8_aware=cfg.distill_int8_aware),
                     progress=lambda msg, frac: display.fraction("export", 0.05 + 0.5 * frac, msg[:70]))


def _refuse_extra_texts_for_pairs(data, path: str) -> None:
    """Single extra texts cannot join a pair task's texts (the pairs would be dropped or misaligned silently)."""
    if getattr(data, "text_pairs", None) is not None:
        raise EdgepruneError(f"{arg('distill_data')} {path}: this task has text pairs, and extra distillation texts "
                             "are single texts; leave it out for a sentence-pair task")


def _with_extra_texts(data, path: str):
    """``data`` plus the texts of ``path`` (labelled files keep their labels for the CE term only if ``data`` is
    labelled alike; plain text files: one text per line, KL only)."""
    from .task.data import TextDataset

    _refuse_extra_texts_for_pairs(data, path)
    p = Path(path)
    if p.suffix.lower() in (".txt", ""):
        texts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        from .task.data import load_dataset

        texts = list(load_dataset(p).texts)
    if not texts:
        raise EdgepruneError(f"{arg('distill_data')} {path}: no texts")
    from .recovery.augment import UNLABELLED

    # Unlabelled texts carry no gold label: the cross-entropy term ignores UNLABELLED (-100).
    return TextDataset(list(data.texts) + texts, list(data.labels) + [UNLABELLED] * len(texts),
                       source=f"{getattr(data, 'source', 'data')} + {path}")


def _percentiles(samples: list[float]) -> dict[str, float]:
    from .latency.device_runner import percentile

    xs = sorted(samples)
    return {"p50": round(percentile(xs, 50), 4), "p90": round(percentile(xs, 90), 4),
            "p99": round(percentile(xs, 99), 4), "mean": round(statistics.fmean(xs), 4), "n": len(xs)}


#: At most this many certify-split texts (every k-th) for the real-length latency: one run per text and model, so
#: ~600 short runs (seconds for MiniLM), and 300 samples give a usable p90.
REAL_LENGTH_TEXTS = 300


def _real_lengths(cfg: BuildConfig, final: Path, int8: Path, tokenizer, texts, pairs) -> dict:
    """The final file and dense INT8 at batch 1, each text at its real tokenized length (no padding), alternated."""
    from .latency.measure import measure_real_lengths

    res = measure_real_lengths([final, int8], cfg.profile, tokenizer, texts, text_pairs=pairs,
                               max_texts=REAL_LENGTH_TEXTS)
    return {
        "final": res.latency_ms[0], "dense_int8": res.latency_ms[1],
        # median over texts of int8/final on the same text (paired in time)
        "ratio_dense_int8/final": round(res.ratio_p50_to_first[1], 4),
        "tokens": res.tokens, "at_max_length": res.at_max_length, "max_length": res.max_length, "batch": 1,
        "texts": {"source": "certify split (texts only; labels unused)", "total": res.texts_total,
                  "used": res.texts_used, "stride": res.stride},
        "threads": res.threads, "where": res.where, "measured_on": res.measured_on,
        "method": "each text tokenized alone (truncated at max_length, never padded); per text, both models run "
                  "once in a shuffled order; p50/p90/p99 over texts",
    }


def _stage_measure(cfg: BuildConfig, state: _State, model, export: dict, display: _Display, tokenizer=None,
                   certify=None) -> dict:
    """Dense FP32, dense INT8 (plain ORT dynamic quantization) and the final file, alternated in one run at the
    profile's fixed length; then dense INT8 and the final file at the certify texts' real lengths (when given)."""
    from .onnx.export import export_onnx, onnx_size_bytes
    from .latency.measure import measure_alternating, measure_memory
    from .task.modeling import clone_model

    work = state.dir / "dense"
    work.mkdir(exist_ok=True)
    fp32, int8 = work / "dense_fp32.onnx", work / "dense_int8.onnx"
    if not fp32.is_file():
        export_onnx(clone_model(model), fp32)
    display.fraction("measure", 0.15, "dense INT8")
    if not int8.is_file():
        # What a user does without edgeprune: ORT dynamic quantization of the exported graph, default settings.
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    final = Path(export["bundle"]) / "model.onnx"
    display.fraction("measure", 0.3, "alternating latency")
    # reps=1: each round runs every model once, in shuffled order -> per-inference samples for p50/p90/p99.
    alt = measure_alternating([fp32, int8, final], cfg.profile, rounds=cfg.measure_rounds, reps=1,
                              block="median")
    names = ("dense_fp32", "dense_int8", "final")
    latency = {n: _percentiles(list(r)) for n, r in zip(names, alt.rounds_ms)}
    for n, r in zip(names, alt.rounds_ms):
        latency[n]["spread_p10_p90"] = round(_percentiles(list(r))["p90"] - sorted(r)[len(r) // 10], 4)
    real = None
    if tokenizer is not None and certify is not None and len(certify):
        display.fraction("measure", 0.65, "real-length latency")
        real = _real_lengths(cfg, final, int8, tokenizer, certify.texts, certify.text_pairs)
    display.fraction("measure", 0.8, "memory")
    mem = measure_memory(final, cfg.profile, processes=3)
    return {
        "latency_ms": latency, "measured_on": alt.measured_on, "where": alt.where, "threads": alt.threads,
        "batch": alt.batch, "seq_len": alt.seq_len, "rounds": cfg.measure_rounds,
        "ratios_p50": {"dense_fp32/final": latency["dense_fp32"]["p50"] / latency["final"]["p50"],
                       "dense_int8/final": latency["dense_int8"]["p50"] / latency["final"]["p50"]},
        "files": {"dense_fp32": onnx_size_bytes(fp32), "dense_int8": onnx_size_bytes(int8),
                  "final": onnx_size_bytes(final)},
        "memory": mem.to_dict(),
        "real_lengths": real,
    }


def _assemble(cfg: BuildConfig, state: _State, model, task_info: dict) -> dict:
    from .adapters import get_adapter
    from .latency.table import load_lut, predict
    from .plan import HeadPlan

    adapter = get_adapter(model)
    layout = adapter.layout(model)
    export, meas, search = state.done["export"], state.done["measure"], state.done["search"]["plan"]
    plan = HeadPlan.from_dict(export["plan"])
    cert = export["certification"] or {}
    lut = load_lut(state.done["lut"]["path"])
    s = search.get("search", {})
    warnings = []
    if export.get("forced"):
        warnings.append("CERTIFICATION FAILED: this bundle was written with --force and breaks the accuracy bound")
    attempts, order = export.get("attempts") or [], export.get("order") or []
    seq = export.get("sequence") or {}
    if not export.get("forced") and len(order) > 1 and export.get("plan_index") != len(order) - 1:
        shipped = order[export.get("plan_index", 0)]
        what = ("the unpruned model quantized as it ships" if export.get("plan_index", 0) == 0
                else f"{shipped['name']} ({shipped['heads_removed']} heads and {shipped['ffn_blocks_removed']} FFN "
                     "blocks removed)")
        warnings.append(f"certification stopped before the searched plan ({seq.get('stop_reason', 'a test failed')}); "
                        f"shipped {what}, the most compressed plan that passed")
    if export.get("earlier_builds_on_certify_split"):
        warnings.append(f"this certify split was already used by {export['earlier_builds_on_certify_split']} earlier "
                        f"build(s); the {cfg.confidence:.0%} holds for one build only, or pass fresh --certify-data")
    pre = (state.done.get("preflight") or {}).get("preflight") or {}
    if pre.get("status") == "warn":
        warnings.append("pre-flight: " + pre["message"])
    return {
        "profile": {"name": _profile_name(cfg.profile)},
        "model": {"family": model.config.model_type, "source": task_info.get("model_dir"),
                  "name": Path(str(task_info.get("model_dir", "model"))).name,
                  "layers": layout.num_layers, "heads_per_layer": list(layout.heads_per_layer),
                  "head_size": layout.head_size, "hidden_size": layout.hidden_size},
        "heads": {"total": layout.total_heads, "removed": plan.num_removed,
                  "kept_per_layer": [list(k) for k in plan.kept], "kept_counts": list(plan.kept_counts)},
        "ffn": ({"block_size": plan.ffn_block_size, "blocks_total": sum(plan.ffn_num_blocks),
                 "blocks_removed": plan.ffn_num_removed, "kept_blocks_per_layer": [list(k) for k in plan.ffn_kept],
                 "kept_widths": list(plan.ffn_kept_widths),
                 "full_width": plan.ffn_num_blocks[0] * plan.ffn_block_size}
                if plan.has_ffn else None),
        "recovery": export.get("recovery"),
        "e2e": export.get("checks", {}).get("e2e"),  # string-in model.e2e.onnx: parity counts, or why skipped
        "accuracy": {
            "baseline": cert.get("base_accuracy"), "final": cert.get("accuracy"),
            "drop_pts": None if cert.get("drop") is None else 100 * cert["drop"],
            "drop_upper_bound_pts": None if cert.get("drop_upper_bound") is None else 100 * cert["drop_upper_bound"],
            "max_drop_pts": cfg.max_drop_pts, "confidence": cfg.confidence, "certify_examples": cert.get("n"),
            "certified": export.get("certified"), "per_look_confidence": cert.get("per_look_confidence"),
            "looks_planned": len(order) or cert.get("looks_planned"),
            "search_split_drop_upper_bound_pts": s.get("search_split_drop_bound_pts"),
            "search_int8_allowance": s.get("shipped_model_flips"),
            "note": "baseline = the unpruned FP32 PyTorch model; final = the shipped INT8 ONNX file; both on the "
                    "certify split, which the search never saw",
        },
        "latency_ms": {
            **meas["latency_ms"],
            "predicted_final": predict(lut, plan.kept_counts, **({"ffn_widths": plan.ffn_kept_widths}
                                                                  if plan.has_ffn else {})),
            "predicted_source": state.done["lut"]["source"], "measured_on": meas["measured_on"],
            "settings": {"threads": meas["threads"], "batch": meas["batch"], "seq_len": meas["seq_len"],
                         "rounds": meas["rounds"]},
            "ratios_p50": meas["ratios_p50"],
            "real_lengths": meas.get("real_lengths"),
        },
        "memory": {"dense_fp32_file_bytes": meas["files"]["dense_fp32"],
                   "dense_int8_file_bytes": meas["files"]["dense_int8"],
                   "final_file_bytes": meas["files"]["final"],
                   "final_rss_bytes": int(meas["memory"].get("peak_mib", 0) * 2**20),
                   "final_memory": meas["memory"]},
        "search": {"algorithm": cfg.algorithm, "structures": cfg.structures, "evaluations": s.get("evaluations"),
                   "wall_s": s.get("pipeline_wall_s", s.get("wall_time_s")), "nodes_expanded": s.get("nodes_expanded"),
                   "stopped_by": s.get("stopped_by"), "max_evaluations": cfg.max_evaluations,
                   "correction": cfg.correction, "max_seconds": cfg.search_seconds},
        "certification": {
            "procedure": "fixed sequence: the unpruned model quantized as it ships, then frontier plans from the "
                         "least to the most compressed, each tested at the full confidence; stop at the first "
                         "failure; ship the most compressed plan that passed",
            "order": order, "shipped": export.get("plan_name"), "shipped_index": export.get("plan_index"),
            "tests": [{"name": a.get("name"), "heads_removed": a.get("heads_removed"),
                       "ffn_blocks_removed": a.get("ffn_blocks_removed"),
                       "n_worse": (a.get("certification") or {}).get("n_worse"),
                       "n_better": (a.get("certification") or {}).get("n_better"),
                       "accuracy": (a.get("certification") or {}).get("accuracy"),
                       "drop_upper_bound_pts": 100 * (a.get("certification") or {}).get("drop_upper_bound", 0.0),
                       "passed": (a.get("certification") or {}).get("passed"), "reused": bool(a.get("reused"))}
                      for a in attempts],
            "stop_reason": seq.get("stop_reason"),
            "earlier_builds_on_certify_split": export.get("earlier_builds_on_certify_split", 0),
            "preflight": pre or None,
        },
        "data": task_info,
        "settings": cfg.to_dict(),
        "warnings": warnings,
        "versions": versions(),
    }


def _profile_name(profile: str) -> str:
    from .profiles import load_profile

    return load_profile(profile).name


def _plot(state: _State, report: dict) -> None:
    from .output.report import plot_pareto

    s = state.done["search"]["plan"].get("search", {})
    frontier = [{"latency_ms": p["latency_ms"], "drop_pts": p["drop_bound_pts"]} for p in s.get("frontier", [])]
    export = state.done["export"]
    order = export.get("order") or []
    tested = {a.get("name"): (a.get("certification") or {}).get("passed") for a in export.get("attempts") or []}
    sequence = []  # the certification sequence: each tested plan at its search-split point, pass or fail
    for o in order:
        if o["name"] in tested:
            lat = o.get("predicted_latency_ms")
            sequence.append({"latency_ms": lat if lat is not None else s.get("base_predicted_latency_ms"),
                             "drop_pts": o.get("search_split_drop_bound_pts") or 0.0, "passed": tested[o["name"]]})
    shipped = {"latency_ms": report["latency_ms"]["predicted_final"],
               "drop_pts": (order[export["plan_index"]].get("search_split_drop_bound_pts") or 0.0) if order else
               s.get("search_split_drop_bound_pts", 0.0)}
    baselines = {name: [{"latency_ms": p["latency_ms"], "drop_pts": p["drop_bound_pts"]} for p in pts]
                 for name, pts in (s.get("baselines") or {}).items()}
    plot_pareto(state.out / "pareto.png", frontier, shipped, baselines, report["accuracy"]["max_drop_pts"],
                sequence=sequence)


# ---------------------------------------------------------------------------------------------------------------------
# the job
# ---------------------------------------------------------------------------------------------------------------------
def _host_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _check_inputs(cfg: BuildConfig, prof, model, task: _Task) -> list[str]:
    """Inputs checked against each other before the output folder is claimed. Returns warnings for the report.

    Raises:
        EdgepruneError: a latency table measured for another model shape, profile, batch, sequence length or
            precision; the model's labels and the data's disagree (integer labels outside ``id2label``);
            ``--distill-data`` for a sentence-pair task.
    """
    from .adapters import get_adapter
    from .errors import MeasureError

    warnings = []
    if cfg.recovery == "distill" and cfg.distill_data:
        _refuse_extra_texts_for_pairs(task.search, cfg.distill_data)  # now, before the output folder is claimed
    cores = _host_cores()
    if prof.threads > cores:
        warnings.append(f"profile {prof.name} asks for {prof.threads} threads; this host has {cores} cores, so "
                        f"{cores} were used: latencies here are {cores}-thread latencies")
    n_model = int(getattr(model.config, "num_labels", 0) or 0)
    n_data = max(max(task.search.labels, default=0), max(task.certify.labels, default=0)) + 1
    if n_model and n_data > n_model:
        raise EdgepruneError(f"{arg('data')} {cfg.data}: label id {n_data - 1} but the model has {n_model} classes "
                             f"(ids 0..{n_model - 1}; its config's id2label)")
    if cfg.latency_table:
        from .latency.table import check_lut, load_lut

        adapter = get_adapter(model)
        layout = adapter.layout(model)
        lut = load_lut(cfg.latency_table)
        where = f"{arg('latency_table')} {cfg.latency_table}"
        try:
            check_lut(lut, layout.heads_per_layer, ffn_sizes=adapter.ffn_sizes(model))
        except MeasureError as exc:
            raise MeasureError(f"{where}: {exc} (measured for another model; measure one with `edgeprune lut "
                               f"--model {cfg.model or 'MODEL'} --profile {prof.name}`)") from None
        m = lut.get("model", {})
        if m.get("hidden_size") not in (None, layout.hidden_size):
            raise MeasureError(f"{where}: measured for hidden size {m.get('hidden_size')}, the model has "
                               f"{layout.hidden_size} (another model)")
        st = lut.get("settings", {})
        for key, want in (("profile", prof.name), ("batch", prof.batch), ("seq_len", prof.seq_len),
                          ("precision", prof.precision)):
            if key in st and st[key] != want:
                raise MeasureError(f"{where}: measured with {key} {st[key]!r}, but profile {prof.name} uses "
                                   f"{want!r}; measure it with this profile (`edgeprune lut --profile {prof.name}`)")
        asked = st.get("threads_requested", st.get("threads"))
        used = st.get("threads")
        if asked is not None and int(asked) != prof.threads and int(used or 0) != prof.threads:
            warnings.append(f"the latency table {cfg.latency_table} was measured with {used} threads; profile "
                            f"{prof.name} runs {prof.threads}")
    return warnings


def build(config: BuildConfig | None = None, *, progress: bool = True, heartbeat_s: float = 30.0,
          **kwargs) -> dict:
    """Run the whole job and return the report dict (also written to ``OUT/report.json``).

    Inputs are validated (profile, output path, data, model, latency table, and against each other) before the
    output folder is claimed; a build that fails there leaves nothing behind. The folder is locked while the build
    runs. An interrupted build (Ctrl-C, a crash, a kill) continues with ``resume=True`` and produces the same plan
    and bundle.

    Args:
        config: a :class:`BuildConfig`; or pass its fields as keyword arguments.
        progress: show the progress display (stderr).
        heartbeat_s: seconds between status lines during a stage when stderr is not a terminal.

    Raises:
        EdgepruneError: bad input; CertificationError when no plan meets the bound (nothing shipped, unless forced);
            SystemRefusedError when a write fails for lack of space or permission (partial files removed).
        BuildInterrupted: Ctrl-C (a KeyboardInterrupt whose message says how to resume).
    """
    from .profiles import load_profile
    from .output.report import write_report

    cfg = config if config is not None else BuildConfig(**kwargs)
    prof = load_profile(cfg.profile)  # fail before any work on a bad profile
    t0 = time.perf_counter()
    _check_out(cfg)  # fail before any work on an unusable or busy --out (writes nothing)
    display = _Display(progress, heartbeat_s=heartbeat_s)
    state: Optional[_State] = None
    with _quiet_libraries(), display:
        try:
            display.stage("task", 0)
            # The default task may fine-tune once (its own progress bar, in a terminal only).
            task = _stage_task(cfg, progress and display.terminal)
            model, tokenizer = _load(cfg, task.model_dir)
            warnings = _check_inputs(cfg, prof, model, task)
            for w in warnings:
                display.log(f"WARNING: {w}")
            state = _claim_out(cfg, t0)
            if state.lock.recovered:
                display.log(f"took over a stale lock of {state.out} (pid {state.lock.recovered.get('pid')} "
                            "no longer runs)")
            display.on_tick = lambda: state.tick(display.current_seconds())
            state.tick(display.current_seconds())
            if "task" not in state.done:
                state.save("task", task.info)
            display.stage("preflight", 1, reused="preflight" in state.done)
            pre = state.done.get("preflight") or state.save(
                "preflight", _stage_preflight(cfg, state, model, tokenizer, task, display))
            display.log("pre-flight: " + pre["preflight"]["message"])
            display.stage("lut", 2, reused="lut" in state.done)
            lut = state.done.get("lut") or state.save("lut", _stage_lut(cfg, state, model, display))
            display.stage("search", 3, reused="search" in state.done)
            search = state.done.get("search") or state.save(
                "search", _stage_search(cfg, state, model, tokenizer, task, lut["path"], pre["shipped_predictions"],
                                        display))
            display.stage("export", 4, reused="export" in state.done)
            export = state.done.get("export") or state.save(
                "export", _stage_export(cfg, state, task.model_dir, task, search["plan"], display))
            display.stage("measure", 5, reused="measure" in state.done)
            model, tokenizer = _load(cfg, task.model_dir)  # the search made the model's attention fusable: start clean
            if "measure" not in state.done:
                state.save("measure", _stage_measure(cfg, state, model, export, display, tokenizer, task.certify))
            display.stage("report", 6)
            report = _assemble(cfg, state, model, state.done["task"])
            _add_build_facts(report, state, prof, warnings, display.current_seconds())
            write_report(report, state.out)
            _plot(state, report)
            display.fraction("report", 1.0, "done")
            display.finish()
            state.tick(display.current_seconds())
            state.save("report", {"wall_s": report["wall_s"]})
        except KeyboardInterrupt:
            stage = display.current or "start"
            display.finish()
            kept = state is not None and bool(set(state.done) - {"task"})
            if state is not None:
                state.tick(display.current_seconds())
                _release_failed_start(state)
            how = (f"continue it with the same command plus {flag('resume')}" if kept else
                   f"nothing worth keeping was built yet: run the same command again ({flag('resume')} works too)")
            raise BuildInterrupted(f"interrupted during stage {stage}; {how}"
                                   + (f" (finished stages and the search journal are kept in {state.out})"
                                      if kept else "")) from None
        except BaseException as exc:
            stage = display.current or "start"
            if state is not None:
                with contextlib.suppress(Exception):
                    state.tick(display.current_seconds())
                    _remove_partial_files(state)
                if isinstance(exc, EdgepruneError):
                    _release_failed_start(state)
            refusal = None if isinstance(exc, EdgepruneError) else _system_refusal(exc, state, cfg)
            if refusal is not None:
                from .output.folder import system_refused

                kept = state is not None and bool(set(state.done) - {"task"})
                raise system_refused(refusal, f"stage {stage}",
                                     "partial files were removed" + (
                                         f"; the finished stages are kept: {flag('resume')} continues" if kept
                                         else "")) from exc
            raise
        finally:
            display.on_tick = None
            if state is not None:
                state.release()
    shutil.rmtree(state.dir / "dense", ignore_errors=True)  # large intermediate files; sizes are in the report
    return report


def _space_needed(cfg: BuildConfig, state: _State) -> int:
    """A rough upper estimate of the room the remaining stages need in OUT: ~4x the model's weights (FP32 and INT8
    ONNX files of the candidates, the .ort file, the dense files the measurement compares)."""
    model_dir = Path(str(state.done.get("task", {}).get("model_dir") or cfg.model or ""))
    weights = sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) if model_dir.is_dir() else 0
    return 4 * weights + 2**20


def _system_refusal(exc: BaseException, state: Optional[_State], cfg: BuildConfig):
    """The OSError behind a failure that is the system's refusal, else None. A full disk does not always surface as
    ENOSPC: libraries that write through C++ (onnx shape inference, torch's exporter) may leave a truncated file and
    fail later on reading it, so a failure with less room left than the build needs is reported as a full disk."""
    import errno

    from .output.folder import is_system_refusal

    found = is_system_refusal(exc)
    if found is not None or state is None:
        return found
    try:
        free = shutil.disk_usage(state.out).free
    except OSError:
        return None
    need = _space_needed(cfg, state)
    if free >= need:
        return None
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return OSError(errno.ENOSPC, f"No space left on device (most likely: {free / 2**20:.1f} MiB free on its file "
                                 f"system, the build needs about {need / 2**20:.0f} MiB; the library's error was "
                                 f"{type(exc).__name__}: {first})", str(state.out))


def _add_build_facts(report: dict, state: _State, prof, warnings: list[str], stages: dict[str, float]) -> None:
    """What the orchestration knows: time over every process of the build, threads asked vs used, input
    warnings."""
    timing = state.timing(stages)
    report["wall_s"] = timing["wall_s"]
    report["timing"] = timing
    if "search" in timing["stages_s"] and isinstance(report.get("search"), dict):
        report["search"]["wall_s"] = timing["stages_s"]["search"]  # every process's share, not the last one's
    settings = report.get("latency_ms", {}).get("settings")
    if isinstance(settings, dict):
        settings["threads_requested"] = prof.threads
    report.setdefault("warnings", [])
    report["warnings"] = list(warnings) + [w for w in report["warnings"] if w not in warnings]

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

import dataclasses
import json
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .config import DEFAULT_SEARCH as _S
from .config import SearchSettings
from .certify.policy import DEFAULT_SEQUENCE_PLANS
from .errors import EdgepruneError
from .versions import versions

STATE_DIR = ".edgeprune"
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
            search split). 0.5: the search accepts plans by the same bound on its own split, so a split much smaller
            than the certify split makes it timid, one much larger leaves certification no room (the pre-flight
            arithmetic of both sides is symmetric; docs/certification.md).
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
            (edgeprune.certify.policy.certification_sequence).
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
        recovery: fit the least-squares rescaling of the kept heads/neurons on the search split and fold it into
            the weights before export (edgeprune.recovery.scale); the certified file includes it. On by default: on the
            benchmark it turned two uncertifiable heads+FFN plans into certified ones (bounds 1.01 -> 0.80 and
            2.05 -> 0.85 points); one build A/B went the other way (1.43 -> 1.88), see docs/recovery.md.
        recovery_examples: search-split examples the recovery fit uses (evenly strided).
    """

    profile: str = "raspberrypi4"
    model: Optional[str] = None
    data: Optional[str] = None
    certify_data: Optional[str] = None
    certify_fraction: float = 0.5
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
    certify_plans: int = DEFAULT_SEQUENCE_PLANS
    seed: int = _S.seed
    force: bool = False
    allow_pickle: bool = False
    measure_rounds: int = 120
    int8_aware: bool = _S.int8_aware
    rescore_every: int = _S.rescore_every
    importance_examples: Optional[int] = _S.importance_examples
    structures: str = _S.structures
    ffn_block_size: Optional[int] = _S.ffn_block_size
    recovery: bool = True
    recovery_examples: int = 1024

    def __post_init__(self) -> None:
        if (self.model is None) != (self.data is None):
            raise EdgepruneError("give both --model and --data, or neither (then the embedded default task is used)")
        if self.certify_data is not None and self.data is None:
            raise EdgepruneError("--certify-data needs --data")
        if not 0.0 <= self.max_drop_pts <= 100.0:
            raise EdgepruneError(f"--max-drop is in accuracy points and must be in [0, 100], got {self.max_drop_pts}")
        if not 0.5 <= self.confidence < 1.0:
            raise EdgepruneError(f"--confidence must be in [0.5, 1), got {self.confidence}")
        if not 0.05 <= self.certify_fraction <= 0.95:
            raise EdgepruneError(f"--certify-fraction must be in [0.05, 0.95], got {self.certify_fraction}")
        if self.certify_plans < 1:
            raise EdgepruneError(f"--certify-plans must be >= 1, got {self.certify_plans}")
        self.search_settings()  # validates the search settings (one place: edgeprune.config.SearchSettings)
        if self.measure_rounds < 5:
            raise EdgepruneError("measure_rounds >= 5 is required")
        if self.resume and self.overwrite:
            raise EdgepruneError("--resume and --overwrite exclude each other")
        hub_like = self.model is not None and self.model.count("/") == 1 and not self.model.startswith((".", "/", "~"))
        if self.model is not None and not Path(self.model).expanduser().exists() and not hub_like:
            # Not a folder and not shaped like a hub id: almost certainly a typo.
            raise EdgepruneError(f"--model {self.model!r}: no such folder (a hub id looks like 'owner/name')")
        if self.latency_table is not None and not Path(self.latency_table).is_file():
            raise EdgepruneError(f"--latency-table {self.latency_table}: no such file")

    def search_settings(self) -> SearchSettings:
        """The build's search settings (``edgeprune search`` starts from the same defaults)."""
        return SearchSettings(
            algorithm=self.algorithm, structures=self.structures, ffn_block_size=self.ffn_block_size,
            max_evaluations=self.max_evaluations, max_seconds=self.search_seconds, correction=self.correction,
            int8_aware=self.int8_aware, rescore_every=self.rescore_every,
            importance_examples=self.importance_examples, seed=self.seed)

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
class _Display:
    """One progress display across the stages: overall bar with ETA + a line for the current stage."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.progress = None
        self.overall = None
        self.detail = None
        self._base = 0.0

    def __enter__(self) -> "_Display":
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            )
            self.progress.__enter__()
            self.overall = self.progress.add_task("build", total=sum(STAGE_WEIGHTS.values()), info="")
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def stage(self, name: str, index: int) -> None:
        self._base = sum(STAGE_WEIGHTS[s] for s in STAGES[:index])
        if self.progress is not None:
            self.progress.update(self.overall, completed=self._base,
                                 description=f"stage {index + 1}/{len(STAGES)}: {name}", info="")
            if not self.progress.console.is_terminal:  # logs (CI, files): one plain line per stage
                self.progress.console.print(f"[{time.strftime('%H:%M:%S')}] stage {index + 1}/{len(STAGES)}: {name}")

    def fraction(self, name: str, frac: float, info: str = "") -> None:
        """Progress inside the current stage (0..1)."""
        if self.progress is not None:
            frac = min(max(frac, 0.0), 1.0)
            self.progress.update(self.overall, completed=self._base + frac * STAGE_WEIGHTS[name], info=info)

    def log(self, message: str) -> None:
        if self.progress is not None:
            self.progress.console.log(message)
        elif self.enabled:
            print(message, flush=True)


# ---------------------------------------------------------------------------------------------------------------------
# state
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class _State:
    out: Path
    cfg: BuildConfig
    done: dict[str, dict] = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return self.out / STATE_DIR

    def load(self) -> None:
        for stage in STAGES:
            p = self.dir / f"{stage}.json"
            if p.is_file():
                self.done[stage] = json.loads(p.read_text())

    def save(self, stage: str, result: dict) -> dict:
        tmp = self.dir / f"{stage}.json.tmp"
        tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
        tmp.replace(self.dir / f"{stage}.json")  # atomic: a stage is either recorded whole or not at all
        self.done[stage] = result
        return result


def _prepare_out(cfg: BuildConfig) -> _State:
    out = Path(cfg.out)
    state = _State(out, cfg)
    marker = state.dir / "config.json"
    if out.exists() and any(out.iterdir()):
        if cfg.resume:
            if not marker.is_file():
                raise EdgepruneError(f"{out} is not an edgeprune build folder; cannot --resume there")
            old = json.loads(marker.read_text())
            if old != cfg.fingerprint():
                diff = sorted(k for k in set(old) | set(cfg.fingerprint()) if old.get(k) != cfg.fingerprint().get(k))
                raise EdgepruneError(f"{out} was built with other settings ({', '.join(diff)}); "
                                     "use the same settings to --resume, or --overwrite")
            state.load()
            return state
        if not cfg.overwrite:
            raise EdgepruneError(f"{out} exists and is not empty: pass --resume to continue it or --overwrite "
                                 "to replace it")
        if marker.is_file() or not any(p for p in out.iterdir() if p.name != STATE_DIR):
            shutil.rmtree(out)
        else:
            raise EdgepruneError(f"{out} is not an edgeprune build folder; refusing to delete it (choose --out)")
    state.dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(cfg.fingerprint(), indent=2) + "\n")
    return state


# ---------------------------------------------------------------------------------------------------------------------
# stages
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class _Task:
    model_dir: str
    search: Any
    certify: Any
    info: dict


def _split_user_data(cfg: BuildConfig, label2id: dict) -> tuple[Any, Any, dict]:
    import hashlib

    from .task.data import load_dataset
    from .task.default import split_indices

    kw = dict(text_column=cfg.text_column, text_pair_column=cfg.text_pair_column,
              label_column=cfg.label_column, label2id=label2id)
    kw = {k: v for k, v in kw.items() if v is not None}
    data = load_dataset(cfg.data, **kw)
    if cfg.certify_data:
        certify = load_dataset(cfg.certify_data, **kw)
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


def _stage_task(cfg: BuildConfig, show: bool) -> _Task:
    if cfg.model is None:
        from .task.default import default_task

        task = default_task(progress=show)
        info = {"default_task": True, "model_dir": str(task.model_dir), "splits": task.data.record(),
                "finetune_accuracy": task.accuracy}
        return _Task(str(task.model_dir), task.search, task.certify, info)
    from .task.modeling import load_config

    config = load_config(cfg.model)
    label2id = dict(getattr(config, "label2id", {}) or {})
    search, certify, info = _split_user_data(cfg, label2id)
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
        max_drop_pts=cfg.max_drop_pts, confidence=cfg.confidence, tokenizer=tokenizer,
        journal=state.dir / "search.journal.jsonl", resume=True, on_progress=on_progress,
        shipped_predictions=shipped,
    )
    plan_path = write_plan(result, state.out / "plan.json")
    data = json.loads(Path(plan_path).read_text())
    data.setdefault("search", {})["pipeline_wall_s"] = round(time.perf_counter() - t0, 2)
    return {"plan_path": str(plan_path), "plan": data}


def _stage_export(cfg: BuildConfig, state: _State, model_dir: str, task: _Task, plan_json: dict,
                  display: _Display) -> dict:
    from .certify.ledger import earlier_builds, record_build, split_key
    from .certify.policy import certification_sequence
    from .output.bundle import export_bundle, sequence_lines
    from .task.default import cache_root

    # The order is frozen here, from the search's results alone, before the certify split is read.
    sequence = certification_sequence(plan_json, cfg.max_drop_pts, cfg.certify_plans)
    names = [name for name, _, _ in sequence]
    plans = [plan for _, plan, _ in sequence]
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
        model_dir, plans[-1], cfg.profile, bundle_dir, certify_data=task.certify, max_drop_pts=cfg.max_drop_pts,
        confidence=cfg.confidence, frontier=plans[:-1], names=names, force=cfg.force,
        overwrite=True, hook=hook, recovery_data=task.search if cfg.recovery else None,
        recovery_examples=cfg.recovery_examples, recorded=recorded, on_record=on_record,
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
                       "search_split_drop_bound_pts": (pt or {}).get("drop_bound_pts")}
                      for n, p, pt in sequence],
            "earlier_builds_on_certify_split": len(earlier), "checks": result.checks,
            "recovery": result.recovery}


def _percentiles(samples: list[float]) -> dict[str, float]:
    from .latency.device_runner import percentile

    xs = sorted(samples)
    return {"p50": round(percentile(xs, 50), 4), "p90": round(percentile(xs, 90), 4),
            "p99": round(percentile(xs, 99), 4), "mean": round(statistics.fmean(xs), 4), "n": len(xs)}


def _stage_measure(cfg: BuildConfig, state: _State, model, export: dict, display: _Display) -> dict:
    """Dense FP32, dense INT8 (plain ORT dynamic quantization) and the final file, alternated in one run."""
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
def build(config: BuildConfig | None = None, *, progress: bool = True, **kwargs) -> dict:
    """Run the whole job and return the report dict (also written to ``OUT/report.json``).

    Args:
        config: a :class:`BuildConfig`; or pass its fields as keyword arguments.
        progress: show the progress display.

    Raises:
        EdgepruneError: bad input; CertificationError when no plan meets the bound (nothing shipped, unless forced).
    """
    from .profiles import load_profile
    from .output.report import write_report

    cfg = config if config is not None else BuildConfig(**kwargs)
    load_profile(cfg.profile)  # fail before any work on a bad profile
    state = _prepare_out(cfg)
    t0 = time.perf_counter()
    # The task stage may fine-tune (its own progress bar) before the build display starts.
    task = _stage_task(cfg, progress)
    if "task" not in state.done:
        state.save("task", task.info)
    model, tokenizer = _load(cfg, task.model_dir)
    with _Display(progress) as display:
        display.stage("preflight", 1)
        pre = state.done.get("preflight") or state.save(
            "preflight", _stage_preflight(cfg, state, model, tokenizer, task, display))
        display.log("pre-flight: " + pre["preflight"]["message"])
        display.stage("lut", 2)
        lut = state.done.get("lut") or state.save("lut", _stage_lut(cfg, state, model, display))
        display.stage("search", 3)
        search = state.done.get("search") or state.save(
            "search", _stage_search(cfg, state, model, tokenizer, task, lut["path"], pre["shipped_predictions"],
                                    display))
        display.stage("export", 4)
        export = state.done.get("export") or state.save(
            "export", _stage_export(cfg, state, task.model_dir, task, search["plan"], display))
        display.stage("measure", 5)
        model, _ = _load(cfg, task.model_dir)  # the search made the model's attention fusable: start clean
        if "measure" not in state.done:
            state.save("measure", _stage_measure(cfg, state, model, export, display))
        display.stage("report", 6)
        report = _assemble(cfg, state, model, state.done["task"])
        report["wall_s"] = round(time.perf_counter() - t0, 1)
        write_report(report, state.out)
        _plot(state, report)
        display.fraction("report", 1.0, "done")
    shutil.rmtree(state.dir / "dense", ignore_errors=True)  # large intermediate files; sizes are in the report
    return report

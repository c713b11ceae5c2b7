"""``edgeprune build``: the only place that chains the stages.

    task -> latency table -> search -> export (+ quantize + certify) -> measure -> report

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

from .errors import EdgepruneError
from .versions import versions

STATE_DIR = ".edgeprune"
STAGES = ("task", "lut", "search", "export", "measure", "report")
# Relative cost of the stages on the default task (used for the overall progress bar and its ETA).
STAGE_WEIGHTS = {"task": 3, "lut": 12, "search": 55, "export": 15, "measure": 12, "report": 3}
ALGORITHMS = ("astar", "greedy", "oneshot", "random")


@dataclass(frozen=True)
class BuildConfig:
    """Everything ``edgeprune build`` takes. Validated on creation; round-trips through dicts.

    Attributes:
        profile: device profile name or .toml path.
        model: model folder or hub id; None = the embedded default task (fine-tuned MiniLM).
        data: labelled dataset (CSV/TSV/JSONL, or a datasets name/folder); None = the default task's data.
        certify_data: separate held-out dataset for certification; None = split ``data``.
        search_fraction: share of ``data`` used by the search when ``certify_data`` is not given (the rest certifies).
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
        fallbacks: frontier plans certification may fall back to (Bonferroni-corrected looks).
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
            the weights before export (edgeprune.recovery); the certified file includes it. On by default: on the
            benchmark it turned two uncertifiable heads+FFN plans into certified ones (bounds 1.01 -> 0.80 and
            2.05 -> 0.85 points); one build A/B went the other way (1.43 -> 1.88), see docs/recovery.md.
        recovery_examples: search-split examples the recovery fit uses (evenly strided).
    """

    profile: str = "raspberrypi4"
    model: Optional[str] = None
    data: Optional[str] = None
    certify_data: Optional[str] = None
    search_fraction: float = 0.5
    text_column: Optional[str] = None
    text_pair_column: Optional[str] = None
    label_column: Optional[str] = None
    max_drop_pts: float = 1.0
    confidence: float = 0.95
    latency_table: Optional[str] = None
    out: str = "edgeprune-out"
    resume: bool = False
    overwrite: bool = False
    algorithm: str = "astar"
    max_evaluations: int = 80
    search_seconds: Optional[float] = 600.0
    correction: str = "none"
    fallbacks: int = 2
    seed: int = 0
    force: bool = False
    allow_pickle: bool = False
    measure_rounds: int = 120
    int8_aware: bool = True
    rescore_every: int = 4
    importance_examples: Optional[int] = 512
    structures: str = "heads+ffn"
    ffn_block_size: Optional[int] = None
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
        if not 0.05 <= self.search_fraction <= 0.95:
            raise EdgepruneError(f"search_fraction must be in [0.05, 0.95], got {self.search_fraction}")
        if self.algorithm not in ALGORITHMS:
            raise EdgepruneError(f"unknown --algorithm {self.algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
        if self.structures not in ("heads", "heads+ffn"):
            raise EdgepruneError(f"unknown --structures {self.structures!r}; choose 'heads' or 'heads+ffn'")
        if self.ffn_block_size is not None and (self.structures != "heads+ffn" or self.ffn_block_size <= 0):
            raise EdgepruneError("--ffn-block-size must be a positive number of neurons and needs "
                                 "--structures heads+ffn")
        if self.correction not in ("none", "bonferroni"):
            raise EdgepruneError(f"unknown correction {self.correction!r}; choose 'none' or 'bonferroni'")
        if self.search_seconds is not None and self.search_seconds <= 0:
            raise EdgepruneError(f"--search-seconds must be > 0, got {self.search_seconds}")
        if self.max_evaluations < 1 or self.fallbacks < 0 or self.measure_rounds < 5:
            raise EdgepruneError("max_evaluations >= 1, fallbacks >= 0 and measure_rounds >= 5 are required")
        if self.resume and self.overwrite:
            raise EdgepruneError("--resume and --overwrite exclude each other")
        hub_like = self.model is not None and self.model.count("/") == 1 and not self.model.startswith((".", "/", "~"))
        if self.model is not None and not Path(self.model).expanduser().exists() and not hub_like:
            # Not a folder and not shaped like a hub id: almost certainly a typo.
            raise EdgepruneError(f"--model {self.model!r}: no such folder (a hub id looks like 'owner/name')")
        if self.latency_table is not None and not Path(self.latency_table).is_file():
            raise EdgepruneError(f"--latency-table {self.latency_table}: no such file")

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

    from .data import load_dataset
    from .default_task import split_indices

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
    parts = split_indices(ids, data.labels, cfg.seed, (0.0, cfg.search_fraction, 1.0 - cfg.search_fraction))
    search = data.subset(parts["search"], source=f"{cfg.data} [search split]")
    certify = data.subset(parts["certify"], source=f"{cfg.data} [certify split]")
    if len(search) < 50 or len(certify) < 50:
        raise EdgepruneError(f"{cfg.data}: {len(data)} examples are too few to search and certify "
                             "(need >= 100; a 1-point certified bound needs thousands)")
    info = {"source": str(cfg.data), "seed": cfg.seed, "search_fraction": cfg.search_fraction,
            "search": {"size": len(search)}, "certify": {"size": len(certify)}}
    return search, certify, info


def _stage_task(cfg: BuildConfig, show: bool) -> _Task:
    if cfg.model is None:
        from .default_task import default_task

        task = default_task(progress=show)
        info = {"default_task": True, "model_dir": str(task.model_dir), "splits": task.data.record(),
                "finetune_accuracy": task.accuracy}
        return _Task(str(task.model_dir), task.search, task.certify, info)
    from .modeling import _load_config

    config = _load_config(cfg.model)
    label2id = dict(getattr(config, "label2id", {}) or {})
    search, certify, info = _split_user_data(cfg, label2id)
    return _Task(str(cfg.model), search, certify, {"default_task": False, "model_dir": str(cfg.model), **info})


def _load(cfg: BuildConfig, model_dir: str):
    from .modeling import load_model

    return load_model(model_dir, allow_pickle=cfg.allow_pickle)


def _stage_lut(cfg: BuildConfig, state: _State, model, display: _Display) -> dict:
    from .latency import build_lut, load_lut, save_lut

    if cfg.latency_table:
        lut = load_lut(cfg.latency_table)
        source = f"latency table {cfg.latency_table}"
    else:
        from .modeling import clone_model

        lut = build_lut(clone_model(model), cfg.profile, ffn=cfg.structures == "heads+ffn",
                        log_fn=lambda m: display.fraction("lut", 0.5, m[:60]))
        source = "latency table measured on this host at the profile's settings"
    path = save_lut(lut, state.out / "latency_table.json")
    return {"path": str(path), "source": source, "where": lut.get("provenance", {}).get("where", "")}


def _shipped_dense_predictions(cfg: BuildConfig, state: _State, model, tokenizer, task: _Task,
                               display: _Display) -> list[int]:
    """Predictions on the search split of the dense model quantized as it will ship (profile preset).

    The search bounds masked FP32 candidates; the shipped file is INT8, which changes some predictions by itself.
    The search adds these flips to every candidate's counts, so it keeps room for them (SearchConfig.offset_*).
    """
    from .adapters import get_adapter
    from .bundle import build_model_files, onnx_predictions
    from .plan import HeadPlan
    from .profiles import load_profile

    prof = load_profile(cfg.profile)
    full = HeadPlan.full(get_adapter(model).layout(model).heads_per_layer)
    display.fraction("search", 0.0, "dense INT8 predictions on the search split")
    work = state.dir / "dense-int8-preset"
    _, int8, _ = build_model_files(model, full, prof.quant, work)
    preds = onnx_predictions(int8, tokenizer, task.search, max_length=prof.seq_len)
    shutil.rmtree(work, ignore_errors=True)
    return preds


def _stage_search(cfg: BuildConfig, state: _State, model, tokenizer, task: _Task, lut_path: str,
                  display: _Display) -> dict:
    from .searching import run_search, write_plan

    shipped = _shipped_dense_predictions(cfg, state, model, tokenizer, task, display) if cfg.int8_aware else None

    def on_progress(p) -> None:
        what = "heads" if cfg.structures == "heads" else "units"
        display.fraction("search", p.evaluations / max(p.max_evaluations, 1),
                         f"evals {p.evaluations}/{p.max_evaluations}  best: -{p.best_removed} {what} "
                         f"{p.best_latency_ms:.1f} ms")

    from .bounds import corrected_confidence

    # Certification tests each of its 1 + fallbacks planned looks at the Bonferroni per-look confidence; the search
    # accepts plans by that same test, not the laxer family-wise level (which made it pick plans certification
    # then rejected: docs/search.md, "What certification can promise").
    search_confidence = corrected_confidence(cfg.confidence, 1 + cfg.fallbacks)
    t0 = time.perf_counter()
    result = run_search(
        model, task.search, profile=cfg.profile, latency_table=lut_path, max_drop_pts=cfg.max_drop_pts,
        confidence=search_confidence, algorithm=cfg.algorithm, correction=cfg.correction,
        max_evaluations=cfg.max_evaluations, max_seconds=cfg.search_seconds, seed=cfg.seed, tokenizer=tokenizer,
        journal=state.dir / "search.journal.jsonl", resume=True, on_progress=on_progress,
        shipped_predictions=shipped, rescore_every=cfg.rescore_every, importance_examples=cfg.importance_examples,
        structures=cfg.structures, ffn_block_size=cfg.ffn_block_size, credit_improvement=False,
    )
    plan_path = write_plan(result, state.out / "plan.json")
    data = json.loads(Path(plan_path).read_text())
    data.setdefault("search", {})["pipeline_wall_s"] = round(time.perf_counter() - t0, 2)
    return {"plan_path": str(plan_path), "plan": data}


def pass_probability(point: dict, max_drop_pts: float, z_search: float, n_ratio: float = 1.0) -> float:
    """Predicted chance that a frontier plan's certification passes, from its search-split numbers alone.

    The search bound is ``b = d + z * s`` (observed drop d, standard error s of the paired difference, both in
    points), so ``s = (b - d) / z``. Certification computes the same kind of bound on an independent split of
    ``n_certify = n_search / n_ratio`` examples at the same per-look level; it passes when the certify drop lands
    below ``max_drop - z * s_c``. With both drops centred on the true drop, that happens with probability
    ``Phi((max_drop - b) / (s * sqrt(1 + n_ratio)))`` (normal approximation, ``s_c = s * sqrt(n_ratio)``). Selection
    on the search split makes the real chance lower for the search's own pick; the fallbacks use this only to
    *rank* plans, not as a promise.
    """
    import math
    from statistics import NormalDist

    b, d = float(point["drop_bound_pts"]), float(point["drop_pts"])
    if b <= 0.0:
        return 1.0  # the unpruned reference: nothing to lose on the search split
    s = max((b - d) / max(z_search, 1e-9), 1e-9)
    z_gap = (max_drop_pts - b) + z_search * s * (1.0 - math.sqrt(n_ratio))
    return NormalDist().cdf(z_gap / (s * math.sqrt(1.0 + n_ratio)))


def _frontier_fallbacks(plan_json: dict, k: int, max_drop_pts: float) -> list:
    """Certification fallbacks, fixed before the certify split is seen (so Bonferroni over the looks is valid).

    The search's pick is its fastest acceptable plan, the one most exposed to the winner's curse of selecting on
    the search split: its predicted chance to certify is about one half (measured: picks at 0.09 and -0.14 points on
    the search split certified at 0.94 and 0.47). Its frontier neighbours are nearly as aggressive and fail together
    (three neighbouring plans, 17-19 heads removed, all at 1.8-2.1 pts). So the ``k - 1`` middle fallbacks are the
    fastest frontier plans whose predicted pass probability (:func:`pass_probability`) reaches targets spread
    evenly between one half and one (0.75 for the default single middle fallback), and the last fallback removes
    nothing: the dense model quantized as shipped, which certifies whenever quantization alone keeps the bound.
    """
    from statistics import NormalDist

    from .plan import HeadPlan

    if k <= 0:
        return []

    def units(p: dict) -> tuple:
        return tuple(sorted(map(tuple, p.get("removed", [])))), tuple(sorted(map(tuple, p.get("ffn_removed", []))))

    search = plan_json.get("search", {})
    level = float(search.get("bound", {}).get("per_candidate_confidence", 0.95))
    z = NormalDist().inv_cdf(min(max(level, 0.5 + 1e-9), 1 - 1e-12))
    chosen = units(plan_json)
    pts = [p for p in search.get("frontier", [])
           if p["drop_bound_pts"] <= max_drop_pts and any(units(p)) and units(p) != chosen]
    pts.sort(key=lambda p: (p["latency_ms"], p["drop_bound_pts"]))  # most aggressive first
    picks: list[dict] = []
    for j in range(1, k):  # k - 1 middle plans, then the unpruned plan
        target = 0.5 + 0.5 * j / k
        for p in pts:
            if p not in picks and pass_probability(p, max_drop_pts, z) >= target:
                picks.append(p)
                break
    ffn = plan_json.get("ffn")
    plans = []
    for p in picks:
        plan = HeadPlan.from_removed(plan_json["num_heads"], [tuple(h) for h in p["removed"]])
        if ffn is not None:  # a joint search's frontier point: keep its FFN part
            plan = plan.with_ffn_removed(ffn["block_size"], ffn["num_blocks"],
                                         [tuple(b) for b in p.get("ffn_removed", [])])
        plans.append(plan)
    if any(chosen):
        plans.append(HeadPlan.full(plan_json["num_heads"]))
    return plans


def _stage_export(cfg: BuildConfig, state: _State, model_dir: str, task: _Task, plan_json: dict,
                  display: _Display) -> dict:
    from .bundle import export_bundle
    from .plan import HeadPlan

    plan = HeadPlan.from_dict(plan_json)
    frontier = _frontier_fallbacks(plan_json, cfg.fallbacks, cfg.max_drop_pts)
    steps = ["surgery", "export", "optimize", "quantize", "certify", "ort", "write"]

    def hook(step: str) -> None:
        if step in steps:
            display.fraction("export", steps.index(step) / len(steps), step)

    bundle_dir = state.out / "bundle"
    result = export_bundle(
        model_dir, plan, cfg.profile, bundle_dir, certify_data=task.certify, max_drop_pts=cfg.max_drop_pts,
        confidence=cfg.confidence, frontier=frontier, force=cfg.force,
        overwrite=True, hook=hook, recovery_data=task.search if cfg.recovery else None,
        recovery_examples=cfg.recovery_examples,
    )
    cert = result.certification.to_dict() if result.certification else None
    return {"bundle": str(result.out_dir), "plan": result.plan.to_dict(), "plan_index": result.plan_index,
            "certified": result.certified, "forced": result.forced, "certification": cert,
            "attempts": result.attempts, "checks": result.checks,
            "recovery": result.recovery}


def _percentiles(samples: list[float]) -> dict[str, float]:
    xs = sorted(samples)

    def pct(q: float) -> float:
        if len(xs) == 1:
            return xs[0]
        pos = (len(xs) - 1) * q / 100.0
        lo = int(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    return {"p50": round(pct(50), 4), "p90": round(pct(90), 4), "p99": round(pct(99), 4),
            "mean": round(statistics.fmean(xs), 4), "n": len(xs)}


def _stage_measure(cfg: BuildConfig, state: _State, model, export: dict, display: _Display) -> dict:
    """Dense FP32, dense INT8 (plain ORT dynamic quantization) and the final file, alternated in one run."""
    from .export import export_onnx, onnx_size_bytes
    from .measure import measure_alternating, measure_memory
    from .modeling import clone_model

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
    from .latency import load_lut, predict
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
    if export.get("plan_index", 0):
        warnings.append(f"the searched plan failed certification; shipped frontier fallback #{export['plan_index']}")
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
            "looks_planned": cert.get("looks_planned"),
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
        "data": task_info,
        "settings": cfg.to_dict(),
        "warnings": warnings,
        "versions": versions(),
    }


def _profile_name(profile: str) -> str:
    from .profiles import load_profile

    return load_profile(profile).name


def _plot(state: _State, report: dict) -> None:
    from .report import plot_pareto

    s = state.done["search"]["plan"].get("search", {})
    frontier = [{"latency_ms": p["latency_ms"], "drop_pts": p["drop_bound_pts"]} for p in s.get("frontier", [])]
    chosen = {"latency_ms": s.get("predicted_latency_ms", report["latency_ms"]["predicted_final"]),
              "drop_pts": s.get("search_split_drop_bound_pts", 0.0)}
    baselines = {name: [{"latency_ms": p["latency_ms"], "drop_pts": p["drop_bound_pts"]} for p in pts]
                 for name, pts in (s.get("baselines") or {}).items()}
    plot_pareto(state.out / "pareto.png", frontier, chosen, baselines, report["accuracy"]["max_drop_pts"])


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
    from .report import write_report

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
        display.stage("lut", 1)
        lut = state.done.get("lut") or state.save("lut", _stage_lut(cfg, state, model, display))
        display.stage("search", 2)
        search = state.done.get("search") or state.save(
            "search", _stage_search(cfg, state, model, tokenizer, task, lut["path"], display))
        display.stage("export", 3)
        export = state.done.get("export") or state.save(
            "export", _stage_export(cfg, state, task.model_dir, task, search["plan"], display))
        display.stage("measure", 4)
        model, _ = _load(cfg, task.model_dir)  # the search made the model's attention fusable: start clean
        if "measure" not in state.done:
            state.save("measure", _stage_measure(cfg, state, model, export, display))
        display.stage("report", 5)
        report = _assemble(cfg, state, model, state.done["task"])
        report["wall_s"] = round(time.perf_counter() - t0, 1)
        write_report(report, state.out)
        _plot(state, report)
        display.fraction("report", 1.0, "done")
    shutil.rmtree(state.dir / "dense", ignore_errors=True)  # large intermediate files; sizes are in the report
    return report

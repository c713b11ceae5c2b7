"""The bundle's string-in model (model.e2e.onnx / .ort) on the default task: parity and what it costs (issue #19).

    nice -n 10 python -m benchmarks.e2e BUNDLE_DIR [--profile raspberrypi4] [--rounds 300]
        [--out benchmarks/results/e2e-default-task.json]

BUNDLE_DIR is a finished bundle folder (read-only: nothing is written into it; when it has no model.e2e.onnx, e.g.
it was built before issue #19, the e2e files are built into a temporary copy with edgeprune.onnx.e2e.write_e2e). The
texts are the default task's certify split (2,113 sentences, rebuilt deterministically by
edgeprune.default_task.load_default_splits), tokenised at the bundle's max_length.

Measured:
- token ids of the e2e graph vs the Python tokenizer on every certify text (must be 0 differences),
- predictions of model.e2e.onnx and model.e2e.ort vs the two-step path (Python tokenizer + model.onnx),
- latency p50/p90 at batch 1, the profile's threads (clipped to this host's cores), alternating in a shuffled order
  per round, no spin-waiting: (a) model.onnx on pre-tokenised ids, (b) Python tokenizer + model.onnx,
  (c) model.e2e.onnx on the string, (d) model.e2e.ort on the string; each round uses the next certify text,
- file sizes, and the peak RSS of a fresh process that loads each model and classifies one text.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_RSS_SCRIPT = r'''
import sys, numpy as np, onnxruntime as ort
def kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
so = ort.SessionOptions(); so.intra_op_num_threads = 1
if sys.argv[2] == "e2e":
    from onnxruntime_extensions import get_library_path
    so.register_custom_ops_library(get_library_path())
base = kib("VmRSS:")
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
if sys.argv[2] == "e2e":
    s.run(None, {"text": np.array(["a gripping, funny film"], dtype=object)})
else:
    feed = {i.name: np.array([[101, 1037, 13940, 1010, 6057, 2143, 102]], dtype=np.int64) for i in s.get_inputs()}
    if "attention_mask" in feed: feed["attention_mask"][:] = 1
    if "token_type_ids" in feed: feed["token_type_ids"][:] = 0
    s.run(None, feed)
print(kib("VmHWM:") - base)  # peak RSS after loading the library, minus RSS before the session
'''


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _rss_kib(model: Path, kind: str, processes: int = 3) -> float:
    vals = [int(subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(model), kind], capture_output=True, text=True,
                               check=True).stdout.strip()) for _ in range(processes)]
    return statistics.median(vals)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns (and writes) the JSON result."""
    import numpy as np
    import onnxruntime as ort
    from transformers import AutoTokenizer

    from edgeprune import e2e
    from edgeprune.default_task import load_default_splits
    from edgeprune.profiles import load_profile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--profile", default="raspberrypi4")
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/e2e-default-task.json"))
    args = ap.parse_args(argv)

    src = args.bundle.resolve()
    meta = json.loads((src / "edgeprune.json").read_text())
    max_length = int(meta["max_length"])
    prof = load_profile(args.profile)
    import os

    threads = max(1, min(int(prof.threads), os.cpu_count() or 1))
    texts = list(load_default_splits(progress=False).certify.texts)
    tmp = Path(tempfile.mkdtemp(prefix="edgeprune-e2e-bench-"))
    try:
        bundle = src
        tok = AutoTokenizer.from_pretrained(str(src), local_files_only=True)
        written_here = None
        if not (src / e2e.E2E_ONNX_FILE).is_file():
            bundle = tmp / "bundle"
            shutil.copytree(src, bundle)
            t0 = time.perf_counter()
            written_here = e2e.write_e2e(bundle / "model.onnx", tok, bundle, max_length=max_length, texts=texts,
                                         target_platform={"aarch64": "arm", "x86_64": "amd64"}.get(prof.arch))
            written_here["seconds"] = round(time.perf_counter() - t0, 1)
            if not written_here["written"]:
                raise SystemExit(f"e2e model not written: {written_here['skipped_reason']}")
        onnx_e2e, ort_e2e, plain = bundle / e2e.E2E_ONNX_FILE, bundle / e2e.E2E_ORT_FILE, bundle / "model.onnx"
        ids = e2e.token_id_parity(onnx_e2e, tok, texts, max_length=max_length)
        preds_onnx = e2e.prediction_parity(onnx_e2e, plain, tok, texts, max_length=max_length)
        preds_ort = e2e.prediction_parity(ort_e2e, plain, tok, texts, max_length=max_length)
        stress = e2e.token_id_parity(onnx_e2e, tok, e2e.STRESS_TEXTS, max_length=max_length,
                                     examples=len(e2e.STRESS_TEXTS))

        # latency, batch 1, alternating
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        s_plain = ort.InferenceSession(str(plain), so, providers=["CPUExecutionProvider"])
        s_e2e = e2e.e2e_session(onnx_e2e, threads=threads)
        s_ort = e2e.e2e_session(ort_e2e, threads=threads)
        names = [i.name for i in s_plain.get_inputs()]

        def ids_for(text: str) -> dict:
            enc = tok([text], truncation=True, max_length=max_length, return_tensors="np")
            out = {n: np.asarray(enc[n], dtype=np.int64) for n in names if n in enc}
            if "token_type_ids" in names and "token_type_ids" not in out:
                out["token_type_ids"] = np.zeros_like(out["input_ids"])
            return out

        pre = {i: ids_for(t) for i, t in enumerate(texts[:args.rounds])}
        runs = {
            "model.onnx (ids given)": lambda i: s_plain.run(["logits"], pre[i]),
            "tokenizer (Python) + model.onnx": lambda i: s_plain.run(["logits"], ids_for(texts[i])),
            "model.e2e.onnx (string)": lambda i: s_e2e.run(["label"], {"text": np.array([texts[i]], dtype=object)}),
            "model.e2e.ort (string)": lambda i: s_ort.run(["label"], {"text": np.array([texts[i]], dtype=object)}),
        }
        samples: dict[str, list[float]] = {k: [] for k in runs}
        rng = random.Random(0)
        for i in range(min(20, len(texts))):  # warm-up
            for f in runs.values():
                f(i)
        for r in range(min(args.rounds, len(texts))):
            order = list(runs)
            rng.shuffle(order)
            for k in order:
                t0 = time.perf_counter()
                runs[k](r)
                samples[k].append(1000 * (time.perf_counter() - t0))
        latency = {k: {"p50": round(_pct(v, 0.5), 4), "p90": round(_pct(v, 0.9), 4), "mean": round(statistics.fmean(v), 4),
                       "n": len(v)} for k, v in samples.items()}
        result = {
            "bundle": str(src),
            "e2e_built_by_this_script": written_here,
            "max_length": max_length,
            "certify_texts": len(texts),
            "ids_parity": ids,
            "prediction_parity": {"model.e2e.onnx": preds_onnx, "model.e2e.ort": preds_ort},
            "stress_ids_parity": stress,
            "latency_ms": latency,
            "latency_settings": {"profile": prof.name, "threads": threads, "batch": 1, "rounds": len(samples[
                "model.e2e.onnx (string)"]), "order": "shuffled per round, one certify text per round",
                "where": "this host (x86-64), not the device"},
            "files_bytes": {p.name: p.stat().st_size for p in (plain, bundle / "model.ort", onnx_e2e, ort_e2e)},
            "peak_rss_kib_fresh_process": {"model.onnx": _rss_kib(plain, "plain"),
                                           "model.ort": _rss_kib(bundle / "model.ort", "plain"),
                                           "model.e2e.onnx": _rss_kib(onnx_e2e, "e2e"),
                                           "model.e2e.ort": _rss_kib(ort_e2e, "e2e")},
            "versions": {"onnxruntime": ort.__version__,
                         "onnxruntime_extensions": __import__("onnxruntime_extensions").__version__},
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("ids_parity", "prediction_parity", "latency_ms", "files_bytes",
                                             "peak_rss_kib_fresh_process")}, indent=1)[:4000])
    return result


if __name__ == "__main__":
    main()

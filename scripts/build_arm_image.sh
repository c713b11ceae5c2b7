#!/usr/bin/env bash
# Build Dockerfile.arm for linux/arm64 on an x86-64 Debian host WITHOUT a Docker engine (podman + runc + qemu-user
# binfmt), then smoke-test the image with buildah. On a machine with Docker use `docker buildx build` instead
# (docs/arm.md).
#
# Usage: scripts/build_arm_image.sh [runtime|full]      (default: runtime; `full` installs torch under emulation)
# Environment: EDGEPRUNE_ARM_ROOT (sysroot from scripts/setup_arm_emu.sh, reused as the local base image),
#              IMAGE (tag, default localhost/edgeprune:arm64-<target>), CA_BUNDLE (host CA bundle handed to pip
#              inside the build, for TLS-intercepting proxies; default /etc/ssl/certs/ca-certificates.crt).
#
# Why each step (DESIGN.md section 7): no public base image can be pulled here, so the sysroot's Debian bookworm
# (Python 3.11) plus a host-installed pip is imported as the base; RUN steps execute arm64 binaries through the
# kernel's binfmt_misc + qemu-aarch64-static ("F" flag: works inside containers); ORT's cpuinfo would read the
# host's x86 /proc/cpuinfo and crash, so an ARM one is bind-mounted; `podman run` fails in this sandbox (rlimits)
# while `buildah run --runtime runc` works, so the smoke test uses buildah.
set -euo pipefail
TARGET=${1:-runtime}
HERE=$(cd "$(dirname "$0")/.." && pwd)
ROOT=${EDGEPRUNE_ARM_ROOT:-$HOME/.cache/edgeprune/arm64}
IMAGE=${IMAGE:-localhost/edgeprune:arm64-$TARGET}
CA=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
BASE_IMAGE=${BASE_IMAGE:-localhost/debian-arm64:bookworm}
WORK=$(mktemp -d /tmp/edgeprune-image.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
log() { printf '[build_arm_image] %s\n' "$*" >&2; }
export DEBIAN_FRONTEND=noninteractive

missing=()
for t in podman buildah runc; do command -v "$t" >/dev/null 2>&1 || missing+=("$t"); done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"; apt-get update -q >/dev/null; apt-get install -y -q "${missing[@]}" >/dev/null
fi
bash "$HERE/scripts/setup_arm_emu.sh" "$ROOT" >/dev/null   # qemu-user-static + the Debian arm64 sysroot

# binfmt_misc: let the kernel run arm64 ELF files through qemu (F = the interpreter is opened now, so it also works
# inside the build containers, which do not contain qemu).
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then mount binfmt_misc -t binfmt_misc /proc/sys/fs/binfmt_misc; fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  cat /usr/lib/binfmt.d/qemu-aarch64.conf >/proc/sys/fs/binfmt_misc/register
fi

if ! podman image exists "$BASE_IMAGE"; then
  log "importing the sysroot as $BASE_IMAGE"
  B="$WORK/base"; cp -a "$ROOT/rootfs" "$B"
  rm -rf "$B/opt/site" "$B/opt/.edgeprune-wheels" "$B/proc/cpuinfo" "$B/sys/devices"
  # pip is pure Python: the host pip installs it into the guest's site directory (no emulation).
  "${PYTHON:-python3}" -m pip install -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --target "$B/usr/local/lib/python3.11/dist-packages" pip
  tar -C "$B" -c . | podman import --arch arm64 - "$BASE_IMAGE" >/dev/null
fi

# An ARM /proc/cpuinfo for the build and run containers (same content as the sysroot's shadow).
for i in $(seq 0 $(($(nproc) - 1))); do
  printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n' "$i"
done >"$WORK/cpuinfo"
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$WORK/pip.conf"
mounts=(-v "$WORK/cpuinfo:/proc/cpuinfo:ro")
[ -f "$CA" ] && mounts+=(-v "$CA:/etc/ssl/certs/ca-certificates.crt:ro" -v "$WORK/pip.conf:/etc/pip.conf:ro")

log "building $IMAGE (target $TARGET)"
start=$(date +%s)
podman build --runtime runc --platform linux/arm64 --network host "${mounts[@]}" \
  --build-arg BASE="$BASE_IMAGE" --target "$TARGET" -f "$HERE/Dockerfile.arm" -t "$IMAGE" "$HERE"
log "built $IMAGE in $(($(date +%s) - start)) s"

ctr=$(buildah from "$IMAGE")
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
smoke='import platform, onnxruntime; print(platform.machine(), "onnxruntime", onnxruntime.__version__)'
[ "$TARGET" = full ] && smoke="$smoke; import torch, edgeprune; print('torch', torch.__version__, 'edgeprune', edgeprune.__version__)"
buildah run --runtime runc --env QEMU_CPU=cortex-a72 "${mounts[0]}" "${mounts[1]}" "$ctr" -- python3 -c "$smoke"

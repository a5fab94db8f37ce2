#!/usr/bin/env bash
# Prepare a Jetson running JetPack 6 (L4T R36) for `edgetl deploy`.
#
#   sudo ./jetson-setup.sh                 TensorRT (Python API + trtexec), numpy, OpenSSH server
#   sudo ./jetson-setup.sh --onnxruntime   also onnxruntime (for `edgetl deploy --backend onnxruntime`)
#   sudo ./jetson-setup.sh --max-perf      also pin the highest power mode and clocks (steady benchmarks)
#
# What the device side needs is small: python3, numpy, and TensorRT's Python API or trtexec from JetPack.
# edgetl itself is NOT needed on the device: `edgetl deploy` sends its own entry point (edgetl_device.py,
# with edgetl's stdlib + numpy part, portable/) with every bundle. Run this once per device; it is safe to run again.
set -euo pipefail

ONNXRUNTIME=0
MAX_PERF=0
for arg in "$@"; do
  case "$arg" in
    --onnxruntime) ONNXRUNTIME=1 ;;
    --max-perf) MAX_PERF=1 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown option: $arg (see --help)" >&2; exit 2 ;;
  esac
done

if [[ $EUID -ne 0 ]]; then
  echo "run as root: sudo $0 $*" >&2
  exit 1
fi
if [[ ! -f /etc/nv_tegra_release ]]; then
  echo "this is not a Jetson (no /etc/nv_tegra_release); on x86 use deploy/Dockerfile instead" >&2
  exit 1
fi
release=$(head -n1 /etc/nv_tegra_release)
echo "L4T: $release"
if ! grep -q "R36" /etc/nv_tegra_release; then
  echo "warning: this script targets JetPack 6 (L4T R36); package names may differ on this release" >&2
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
# TensorRT from JetPack's apt repository: the Python API (python3-libnvinfer) and trtexec (libnvinfer-bin,
# installed to /usr/src/tensorrt/bin/trtexec). `nvidia-jetpack` pulls in all of JetPack instead.
apt-get install -y --no-install-recommends \
  python3 python3-pip python3-numpy \
  tensorrt python3-libnvinfer libnvinfer-bin \
  openssh-server rsync
systemctl enable --now ssh || true

if [[ $ONNXRUNTIME -eq 1 ]]; then
  # PyPI has CPU-only aarch64 wheels. For the CUDA build, point ORT_INDEX at a Jetson wheel index that
  # matches this JetPack (e.g. the Jetson AI Lab index for jp6/cu126) before running this script.
  if [[ -n "${ORT_INDEX:-}" ]]; then
    python3 -m pip install --extra-index-url "$ORT_INDEX" onnxruntime-gpu
  else
    python3 -m pip install onnxruntime
  fi
fi

if [[ $MAX_PERF -eq 1 ]]; then
  # Mode 0 is the highest power mode (MAXN) on Orin modules; jetson_clocks pins clocks at their maximum
  # until the next reboot, which makes latency measurements repeatable.
  nvpmodel -m 0 || echo "warning: nvpmodel -m 0 failed" >&2
  jetson_clocks || echo "warning: jetson_clocks failed" >&2
fi

echo
echo "check:"
python3 -c "import numpy; print('numpy', numpy.__version__)"
python3 -c "import tensorrt; print('tensorrt', tensorrt.__version__)" || echo "tensorrt Python API: missing"
if command -v trtexec >/dev/null || [[ -x /usr/src/tensorrt/bin/trtexec ]]; then
  echo "trtexec: $(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)"
else
  echo "trtexec: missing"
fi
nvpmodel -q 2>/dev/null | head -n1 || true
echo
echo "from your workstation: edgetl deploy RUN --host $(logname 2>/dev/null || echo user)@$(hostname) --bench"

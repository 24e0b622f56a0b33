#!/usr/bin/env bash
# The device check, one call (see README "GPU nodes"): from the repository root on the GPU machine,
# with the bundle parts (npm run pack:gpu-check) already carried into .cache/gpu-bundle.
# Unpacks them, puts CUDA 13 / cuDNN 9 on the library path, runs check.mjs; $OUT/summary.json.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu-check-out}
mkdir -p "$OUT"
B=.cache/gpu-bundle
t0=$(date +%s)
if [ ! -x .cache/gpu-node/bin/node ]; then
  (cd "$B" && sha256sum -c --quiet SHA256SUMS) || { echo "bundle parts missing or corrupt" >&2; exit 3; }
  if command -v xz >/dev/null; then cat "$B"/part-* | xz -dc | tar -x
  else cat "$B"/part-* | python3 -c 'import lzma,sys,tarfile; tarfile.open(fileobj=lzma.open(sys.stdin.buffer), mode="r|").extractall(".")'; fi
fi
echo "unpacked in $(( $(date +%s) - t0 )) s"
export PATH="$PWD/.cache/gpu-node/bin:$PATH"
# CUDA libraries the provider needs (ldd: libcublasLt/libcublas .13, libcudart .13, libcurand .10;
# cuDNN 9 is opened at run time): the toolkit's folders and the Python wheels' (nvidia-*-cu13).
LIBS=$(find /usr/local/cuda*/lib64 /usr/local/cuda*/targets/x86_64-linux/lib /opt/torch/.venv/lib/python3*/site-packages/nvidia /usr/lib/x86_64-linux-gnu -maxdepth 4 \
  \( -name 'libcublasLt.so.13*' -o -name 'libcublas.so.13*' -o -name 'libcudart.so.13*' -o -name 'libcurand.so.10*' -o -name 'libcudnn.so.9*' \) 2>/dev/null | xargs -r -n1 dirname | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH="${LIBS}${LD_LIBRARY_PATH:-}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/nvidia-smi.csv"
node --version
set -o pipefail
timeout "${CHECK_TIMEOUT_S:-520}" node deploy/gpu-check/check.mjs --out "$OUT" 2>&1 | tee "$OUT/log.txt"

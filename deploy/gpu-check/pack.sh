#!/usr/bin/env bash
# npm run pack:gpu-check — the bundle a GPU machine without Node.js or network needs to run
# deploy/gpu-check/run.sh, split for device calls of at most 64 MiB each (the working tree
# travels too: parts are PART_MIB, default 56 MiB):
#   .cache/gpu-node/bin/node     this machine's Node binary (x86-64 Linux)
#   node_modules/...             the production dependencies (npm ls --omit=dev), onnxruntime-node's
#                                binaries for linux/x64 only
#   .cache/ort-cuda/...          the GPU pair from npm run setup:cuda (checked, with its manifest)
# One tar stream, xz-compressed, cut into .cache/gpu-bundle/part-aa, part-ab, ... plus SHA256SUMS.
# On the device: cat part-* | xz -dc | tar -x, from the repository root (run.sh does it).
# XZ_LEVEL (default 6): xz -6 took over 20 min on 2 shared cores here; the CUDA provider (fatbins)
# barely compresses, so XZ_LEVEL=1 costs few MiB and a fraction of the time.
set -euo pipefail
cd "$(dirname "$0")/../.."
PART_MIB=${PART_MIB:-56}
OUT=.cache/gpu-bundle
STAGE=.cache/gpu-node
rm -rf "$OUT" "$STAGE"
mkdir -p "$OUT" "$STAGE/bin"
[ -f .cache/ort-cuda/ort-cuda.json ] || node scripts/cuda/setup.mjs
node scripts/cuda/setup.mjs --check >/dev/null
cp "$(command -v node)" "$STAGE/bin/node"
# Production packages, outermost only (tar recurses; a nested one listed again would be stored twice).
npm ls --omit=dev --all --parseable 2>/dev/null | tail -n +2 | sed "s#^$PWD/##" |
  awk '{keep=1; for (i = 0; i < n; i++) if (index($0, k[i] "/") == 1) { keep = 0; break } if (keep) { k[n++] = $0; print } }' >"$OUT/files"
echo "$STAGE" >>"$OUT/files"
echo .cache/ort-cuda/node_modules >>"$OUT/files"
echo .cache/ort-cuda/ort-cuda.json >>"$OUT/files"
start=$(date +%s)
tar -c --files-from="$OUT/files" \
  --exclude='node_modules/onnxruntime-node/bin/napi-v6/win32' --exclude='node_modules/onnxruntime-node/bin/napi-v6/darwin' \
  --exclude='node_modules/onnxruntime-node/bin/napi-v6/linux/arm64' --exclude='*.map' --exclude='*.md' |
  xz -T2 "-${XZ_LEVEL:-6}" | split -b "${PART_MIB}M" - "$OUT/part-"
(cd "$OUT" && sha256sum part-* >SHA256SUMS)
echo "gpu-check bundle: $(ls "$OUT"/part-* | wc -l) parts in $OUT ($(du -cb "$OUT"/part-* | tail -1 | cut -f1) bytes), $(( $(date +%s) - start )) s"
ls -l "$OUT"

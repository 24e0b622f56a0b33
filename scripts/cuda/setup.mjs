#!/usr/bin/env node
/**
 * npm run setup:cuda [-- --dir DIR] [--offline]
 *
 * Installs the GPU ONNX Runtime pair for `--device cuda` into DIR (default <repo>/.cache/ort-cuda),
 * from the npm registry alone (or npm's cache with --offline), beside the CPU install (`npm ci`,
 * untouched):
 *   DIR/node_modules/onnxruntime-node     onnxruntime-node 1.29.0 (linux/x64 binding + libonnxruntime.so.1)
 *   DIR/node_modules/onnxruntime-common   its JS dependency
 *   .../bin/napi-v6/linux/x64/libonnxruntime_providers_{cuda,shared}.so
 *       from com.github.asus4.onnxruntime.linux-x64-gpu 0.4.9: ORT 1.29.0's CUDA provider, built for
 *       CUDA 13 and cuDNN 9. ORT loads providers from the folder of libonnxruntime.so, so they go there.
 *   DIR/ort-cuda.json                     the manifest services/model/src/runtime/onnx.ts checks
 *
 * Checks: each tarball's sha512 against the pin below; both package.json versions; the ORT
 * version string inside libonnxruntime.so.1 and inside the CUDA provider (both must be 1.29.0:
 * the provider bridge between libonnxruntime and a provider of another version is not stable).
 * onnxruntime-node's own install script is never run (it downloads the provider from NuGet).
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ORT_VERSION = '1.29.0'; // must equal CUDA_ORT_VERSION in services/model/src/runtime/onnx.ts
const PINS = [
  { key: 'node', name: 'onnxruntime-node', version: ORT_VERSION, integrity: 'sha512-WjiVVB72riILz8HbYvxvmjKyE/WmkYoSfKY++axo5jAR609HQg8MwiG/HhShpTcJfmmAdzxxmB+MMST3A+SiPA==' },
  { key: 'common', name: 'onnxruntime-common', version: ORT_VERSION, integrity: 'sha512-/F63/e2VJoaVXGGNu6S5QH7jivBThGO95OzAVXXQ8hTta/b1QxI8udHa6cI3+3mAb5WWIIaMMwfZw01oivjJ1g==' },
  { key: 'cuda', name: 'com.github.asus4.onnxruntime.linux-x64-gpu', version: '0.4.9', integrity: 'sha512-FopIhNE/Ng+v2X65wVc9clPCBCvhvA53Hxo2U0Kf5fGdVsC7iCA+mZ0KLWggcQAj7TIZ6pNidR4AC10g74Xo6w==' },
];
const PROVIDER_FILES = ['libonnxruntime_providers_cuda.so', 'libonnxruntime_providers_shared.so'];

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const args = process.argv.slice(2);
const dirArg = args.indexOf('--dir');
const DIR = path.resolve(dirArg >= 0 ? args[dirArg + 1] : path.join(REPO, '.cache/ort-cuda'));
const OFFLINE = args.includes('--offline');
const CHECK_ONLY = args.includes('--check');

const fail = (msg) => {
  process.stderr.write(`setup:cuda: ${msg}\n`);
  process.exit(1);
};
const say = (msg) => process.stdout.write(`setup:cuda: ${msg}\n`);

/** True when `file` holds `s` as a whole NUL-terminated C string (how ORT embeds its version). */
function hasCString(file, s) {
  return fs.readFileSync(file).includes(Buffer.from(`\0${s}\0`, 'latin1'));
}

const pkgDir = path.join(DIR, 'node_modules/onnxruntime-node');
const binDir = path.join(pkgDir, 'bin/napi-v6/linux/x64');

function install() {
  if (process.platform !== 'linux' || process.arch !== 'x64') fail(`the CUDA provider package is for linux/x64, this is ${process.platform}/${process.arch}`);
  const tarballs = path.join(DIR, 'tarballs');
  fs.mkdirSync(tarballs, { recursive: true });
  const tgz = {};
  for (const p of PINS) {
    const file = path.join(tarballs, `${p.name}-${p.version}.tgz`);
    if (!fs.existsSync(file)) {
      say(`fetching ${p.name}@${p.version}${OFFLINE ? ' (offline: from npm cache)' : ''}`);
      execFileSync('npm', ['pack', `${p.name}@${p.version}`, '--pack-destination', tarballs, '--silent', ...(OFFLINE ? ['--offline'] : [])], { stdio: ['ignore', 'ignore', 'inherit'] });
    }
    const got = `sha512-${createHash('sha512').update(fs.readFileSync(file)).digest('base64')}`;
    if (got !== p.integrity) fail(`${file}: integrity ${got} is not the pinned ${p.integrity}`);
    tgz[p.key] = file;
  }
  fs.rmSync(path.join(DIR, 'node_modules'), { recursive: true, force: true });
  fs.rmSync(path.join(DIR, 'ort-cuda.json'), { force: true });
  const commonDir = path.join(DIR, 'node_modules/onnxruntime-common');
  for (const d of [pkgDir, commonDir]) fs.mkdirSync(d, { recursive: true });
  execFileSync('tar', ['-xzf', tgz.common, '-C', commonDir, '--strip-components=1']);
  // Only linux/x64 of onnxruntime-node's binaries: the others are 70 MB this machine never loads.
  execFileSync('tar', ['-xzf', tgz.node, '-C', pkgDir, '--strip-components=1', '--wildcards', '--exclude=package/bin/napi-v6/win32/*', '--exclude=package/bin/napi-v6/darwin/*', '--exclude=package/bin/napi-v6/linux/arm64/*']);
  execFileSync('tar', ['-xzf', tgz.cuda, '-C', binDir, '--strip-components=4', ...PROVIDER_FILES.map((f) => `package/Plugins/Linux/x64/${f}`)]);
  fs.rmSync(tarballs, { recursive: true, force: true }); // npm's cache keeps them for --offline
}

function check() {
  for (const [dir, name] of [[pkgDir, 'onnxruntime-node'], [path.join(DIR, 'node_modules/onnxruntime-common'), 'onnxruntime-common']]) {
    const v = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')).version;
    if (v !== ORT_VERSION) fail(`${name} in ${dir} is ${v}, need ${ORT_VERSION}`);
  }
  const files = ['onnxruntime_binding.node', 'libonnxruntime.so.1', ...PROVIDER_FILES];
  for (const f of files) if (!fs.existsSync(path.join(binDir, f))) fail(`${path.join(binDir, f)} is missing`);
  for (const f of ['libonnxruntime.so.1', 'libonnxruntime_providers_cuda.so']) {
    if (!hasCString(path.join(binDir, f), ORT_VERSION)) fail(`${f} does not carry ONNX Runtime version ${ORT_VERSION}: the binding and the CUDA provider must be the same ORT version`);
  }
  const manifest = {
    ortVersion: ORT_VERSION,
    packages: Object.fromEntries(PINS.map((p) => [p.name, p.version])),
    cuda: 'CUDA 13.x, cuDNN 9 (libcudart.so.13, libcublas.so.13, libcublasLt.so.13, libcurand.so.10, libcudnn.so.9 on the library path)',
    files: Object.fromEntries(files.map((f) => [f, { bytes: fs.statSync(path.join(binDir, f)).size }])),
  };
  fs.writeFileSync(path.join(DIR, 'ort-cuda.json'), `${JSON.stringify(manifest, null, 2)}\n`);
  say(`ok: onnxruntime-node ${ORT_VERSION} + CUDA provider ${ORT_VERSION} in ${DIR} (use: --device cuda)`);
}

if (!CHECK_ONLY) install();
check();

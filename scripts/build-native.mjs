// Builds services/model/native/ort_env.c into .cache/native/ort_env.node (npm install runs this as
// postinstall; `npm run build:native` runs it again). The addon gives ONNX Runtime one thread pool
// per process (services/model/src/runtime/onnx.ts). It needs a C compiler and Node's headers; where
// either is missing it says so and exits 0: sessions then keep a pool each, as before.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const src = path.join(root, 'services/model/native/ort_env.c');
const out = path.join(root, '.cache/native/ort_env.node');

function skip(why) {
  console.log(`moeserve: the ort_env addon is not built (${why}); ONNX Runtime sessions will keep a thread pool each (slower decode)`);
  process.exit(0);
}

if (process.platform !== 'linux') skip(`${process.platform}: only Linux is supported`);
const headers = [path.resolve(path.dirname(process.execPath), '../include/node'), '/usr/include/node', '/usr/local/include/node'].find((d) => fs.existsSync(path.join(d, 'node_api.h')));
if (!headers) skip("Node's headers (node_api.h) were not found beside the node binary nor in /usr/include/node");
const cc = process.env.CC || 'cc';
if (fs.existsSync(out) && fs.statSync(out).mtimeMs >= fs.statSync(src).mtimeMs) process.exit(0);
fs.mkdirSync(path.dirname(out), { recursive: true });
try {
  execFileSync(cc, ['-O2', '-Wall', '-Wextra', '-Werror', '-shared', '-fPIC', `-I${headers}`, src, '-o', `${out}.tmp`, '-ldl'], { stdio: ['ignore', 'inherit', 'inherit'] });
} catch (err) {
  skip(`${cc} failed: ${err.message.split('\n')[0]}`);
}
fs.renameSync(`${out}.tmp`, out);
console.log(`moeserve: built ${path.relative(root, out)}`);

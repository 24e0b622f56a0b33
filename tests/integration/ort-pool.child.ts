/**
 * Child of ort-pool.test.ts (a process of its own: ONNX Runtime's environment is per process).
 * Makes 12 sessions with 3 intra-op threads and one with 2, runs each on a random MatMul, and
 * prints JSON: the process's thread counts before and after, the runtime's log lines and the
 * largest error against a float64 oracle.
 */
import fs from 'node:fs';
import { GraphBuilder } from '../../services/model/src/onnx/graph.js';
import { DT } from '../../services/model/src/onnx/proto.js';
import { DEFAULT_RUNTIME, f32, OrtSession, type RuntimeOptions } from '../../services/model/src/runtime/onnx.js';

const threads = () => fs.readdirSync('/proc/self/task').length;
const logs: string[] = [];
const M = 3;
const K = 64;
const N = 48;
let seed = 11;
const rand = (n: number) => Float32Array.from({ length: n }, () => ((seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32 - 0.5));

let maxErr = 0;
async function session(i: number, runtime: RuntimeOptions): Promise<void> {
  const w = rand(K * N);
  const g = new GraphBuilder(`pool_${i}`);
  g.output(g.matmul(g.input('x', DT.FLOAT, ['M', K]), g.initializer('w', DT.FLOAT, [K, N], w)), 'y');
  const s = await OrtSession.create(`pool_${i}`, g.toModel(), runtime);
  const x = rand(M * K);
  const y = s.run({ x: f32(x, [M, K]) }, ['y']).y!.data;
  for (let m = 0; m < M; m++) for (let n = 0; n < N; n++) {
    let acc = 0;
    for (let k = 0; k < K; k++) acc += x[m * K + k]! * w[k * N + n]!;
    maxErr = Math.max(maxErr, Math.abs(acc - y[m * N + n]!));
  }
}

const runtime: RuntimeOptions = { ...DEFAULT_RUNTIME, intraOpThreads: 3, log: (msg) => logs.push(msg) };
const before = threads();
await session(0, runtime);
const afterFirst = threads();
for (let i = 1; i < 12; i++) await session(i, runtime);
const afterTwelve = threads();
await session(12, { ...runtime, intraOpThreads: 2 });
const afterOther = threads();
process.stdout.write(JSON.stringify({ before, afterFirst, afterTwelve, afterOther, logs, maxErr }));
process.exit(0);

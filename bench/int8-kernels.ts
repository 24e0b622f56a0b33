/**
 * bench:int8-kernels — which ONNX Runtime kernel int8 weights should run on, measured side by
 * side in one run: what `--quantization int8` builds (com.microsoft MatMulNBits, 8 bits, blocks of
 * 32, accuracy_level 4), the same with blocks of 128, com.microsoft DynamicQuantizeMatMul (int8
 * weights per output channel, activations quantized to uint8 per tensor, MLAS's u8s8 GEMM), the
 * same GEMM with activations quantized per row in the graph (QuantizeLinear per axis, then
 * com.microsoft MatMulIntegerToFloat: W8A8 with per-token scales, as vLLM's int8 W8A8), once with
 * 8-bit weights and once with 7-bit ones, and the fp32 Gemm they replace.
 *
 * Why 7 bits: MLAS's u8s8 kernel on AVX2 without VNNI multiplies with VPMADDUBSW, which adds two
 * u8·s8 products into a saturating int16. Rows quantized around zero point 128 reach 255, so two
 * 8-bit weights above ~64 of the same sign can saturate; weights within ±63 never do
 * (255·63·2 = 32,130 < 32,767). The error table shows what saturation costs.
 *
 * Shapes: one expert of mixtral-perf (gate_up [4096, 1024], down [1024, 2048]); eight copies of
 * each, run one after another, so the weights (50-200 MB) come from memory as in decode, not
 * from the cache. Per call: the median over rounds; the ratio is to fp32 measured in the same run.
 * Error: relative RMS of each form's output against a float64 product of the fp32 weights, on
 * rows drawn N(0, 1), and again with one row of the batch scaled ×30 (an outlier token: a
 * per-tensor activation scale then quantizes the other rows coarsely).
 *
 * Usage: npm run bench:int8-kernels [-- --m 1,4,16] [--threads N] [--rounds R]
 */
import { GraphBuilder } from '../services/model/src/onnx/graph.js';
import { DT } from '../services/model/src/onnx/proto.js';
import { matMulNBits8, projection } from '../services/model/src/graphs/linear.js';
import { fillNormal, tensorRng } from '../services/model/src/checkpoint/random.js';
import { quantizeInt8 } from '../services/model/src/quant/int8.js';
import { DEFAULT_RUNTIME, f32, OrtSession } from '../services/model/src/runtime/onnx.js';
import { median, table } from './lib/perf-models.js';

const args = process.argv.slice(2);
const flag = (name: string): string | undefined => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const MS = (flag('--m') ?? '1,4,16').split(',').map(Number);
const THREADS = Number(flag('--threads') ?? DEFAULT_RUNTIME.intraOpThreads);
const ROUNDS = Number(flag('--rounds') ?? 15);
const COPIES = 8;
const SHAPES: readonly [number, number][] = [
  [4096, 1024],
  [1024, 2048],
];

type Form = 'fp32' | 'nbits32' | 'nbits128' | 'dqmm' | 'tok8' | 'tok7';
const FORMS: readonly Form[] = ['fp32', 'nbits32', 'nbits128', 'dqmm', 'tok8', 'tok7'];
const LABEL: Record<Form, string> = {
  fp32: 'fp32 Gemm',
  nbits32: 'MatMulNBits b32 (int8)',
  nbits128: 'MatMulNBits b128',
  dqmm: 'DynamicQuantizeMatMul',
  tok8: 'per-token u8s8, 8-bit W',
  tok7: 'per-token u8s8, 7-bit W',
};

/** W float32 [N, K] -> int8 [K, N] symmetric per output channel within ±qmax, and the channel scales. */
function perChannel(w: Float32Array, N: number, K: number, qmax: number): { b: Int8Array; scales: Float32Array } {
  const b = new Int8Array(K * N);
  const scales = new Float32Array(N);
  for (let n = 0; n < N; n++) {
    let amax = 0;
    for (let k = 0; k < K; k++) amax = Math.max(amax, Math.abs(w[n * K + k]!));
    const s = amax > 0 ? Math.fround(amax / qmax) : 1;
    scales[n] = s;
    for (let k = 0; k < K; k++) b[k * N + n] = Math.round(w[n * K + k]! / s);
  }
  return { b, scales };
}

/**
 * x [M, K] -> per-row uint8 around zero point 128 (scale = row max |x| / 127) -> u8s8 GEMM against
 * per-channel int8 weights -> × row scale.
 */
function perToken(g: GraphBuilder, x: string, name: string, b: Int8Array, scales: Float32Array, N: number, K: number): string {
  const amax = g.node('ReduceMax', [g.op('Abs', [x])], { axes: [1], keepdims: 1 })[0]!; // [M, 1]
  const rowScale = g.op('Max', [g.scale(amax, 1 / 127), g.initializer(`${name}.tiny`, DT.FLOAT, [], new Float32Array([1e-30]))]);
  const flat = g.reshape(rowScale, [-1]); // [M]
  const zp = g.op('Expand', [g.initializer(`${name}.zp128`, DT.UINT8, [1], new Uint8Array([128])), g.shape(flat)]);
  const xq = g.node('QuantizeLinear', [x, flat, zp], { axis: 0 })[0]!;
  const y = g.node(
    'MatMulIntegerToFloat',
    [xq, g.initializer(`${name}.b`, DT.INT8, [K, N], b), g.initializer(`${name}.one`, DT.FLOAT, [], new Float32Array([1])), g.initializer(`${name}.s`, DT.FLOAT, [N], scales), g.initializer(`${name}.azp`, DT.UINT8, [], new Uint8Array([128]))],
    {},
    1,
    'com.microsoft',
  )[0]!;
  return g.mul(y, rowScale);
}

function gaussian(n: number, seed: number, sd: number): Float32Array {
  const out = new Float32Array(n);
  fillNormal(out, tensorRng(seed, 'bench:int8-kernels'), 0, sd);
  return out;
}

/** y = x · W^T in the given form; W float32 [N, K] (HF layout). */
function linear(g: GraphBuilder, x: string, form: Form, w: Float32Array, N: number, K: number, name: string): string {
  if (form === 'fp32') return projection(g, x, name, w, N, K, { quantization: 'none' });
  if (form === 'nbits32') return projection(g, x, name, w, N, K, { quantization: 'int8' });
  // The same kernel with a coarser block (bench only: moeserve builds blocks of 32).
  if (form === 'nbits128') return matMulNBits8(g, x, name, quantizeInt8(w, N, K, 128));
  if (form === 'tok8' || form === 'tok7') {
    const q = perChannel(w, N, K, form === 'tok8' ? 127 : 63);
    return perToken(g, x, name, q.b, q.scales, N, K);
  }
  // int8 weights [K, N], symmetric per output channel; activations uint8 per tensor (in the kernel)
  const { b, scales } = perChannel(w, N, K, 127);
  return g.node('DynamicQuantizeMatMul', [x, g.initializer(`${name}.b`, DT.INT8, [K, N], b), g.initializer(`${name}.s`, DT.FLOAT, [N], scales)], {}, 1, 'com.microsoft')[0]!;
}

/** One session per shape: COPIES independent weights applied to the same input, outputs summed. */
async function build(form: Form, weights: Float32Array[][]): Promise<OrtSession[]> {
  const out: OrtSession[] = [];
  for (let s = 0; s < SHAPES.length; s++) {
    const [N, K] = SHAPES[s]!;
    const g = new GraphBuilder(`k${s}`);
    const x = g.input('x', DT.FLOAT, ['M', K]);
    const ys = weights[s]!.map((w, c) => linear(g, x, form, w, N, K, `w${c}`));
    g.output(ys.reduce((a, b) => g.add(a, b)), 'y');
    out.push(await OrtSession.create(`int8-kernels-${form}-${s}`, g.toModel(), { ...DEFAULT_RUNTIME, intraOpThreads: THREADS }));
  }
  return out;
}

/** Relative RMS error of one copy's output against float64 x · W^T. */
async function error(form: Form, w: Float32Array, N: number, K: number, x: Float32Array, M: number): Promise<number> {
  const g = new GraphBuilder('err');
  g.output(linear(g, g.input('x', DT.FLOAT, ['M', K]), form, w, N, K, 'w'), 'y');
  const s = await OrtSession.create('int8-kernels-err', g.toModel(), { ...DEFAULT_RUNTIME, intraOpThreads: THREADS });
  const y = s.run({ x: f32(x, [M, K]) }, ['y']).y!.data;
  await s.release();
  let num = 0;
  let den = 0;
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let acc = 0;
      for (let k = 0; k < K; k++) acc += x[m * K + k]! * w[n * K + k]!;
      num += (y[m * N + n]! - acc) ** 2;
      den += acc * acc;
    }
  }
  return Math.sqrt(num / den);
}

const weights = SHAPES.map(([N, K], s) => Array.from({ length: COPIES }, (_, c) => gaussian(N * K, 1000 * s + c + 1, 0.02)));
const f32Bytes = COPIES * SHAPES.reduce((a, [N, K]) => a + N * K * 4, 0);
console.log(`## int8 kernels: ${COPIES} × (gate_up [4096, 1024] + down [1024, 2048]) of mixtral-perf, ${(f32Bytes / 2 ** 20).toFixed(0)} MiB fp32, ${THREADS} threads, median of ${ROUNDS} rounds`);

const sessions = new Map<Form, OrtSession[]>();
for (const form of FORMS) sessions.set(form, await build(form, weights));
const rows: string[][] = [];
for (const M of MS) {
  const feeds = SHAPES.map(([, K], s) => ({ x: f32(gaussian(M * K, 7 + s, 1), [M, K]) }));
  const times = new Map<Form, number[]>(FORMS.map((f) => [f, []]));
  for (let r = 0; r < ROUNDS + 2; r++) {
    // Forms interleave within a round, so drift on a shared machine hits them alike.
    for (const form of FORMS) {
      const t0 = performance.now();
      sessions.get(form)!.forEach((s, i) => s.run(feeds[i]!, ['y']));
      if (r >= 2) times.get(form)!.push(performance.now() - t0);
    }
  }
  const base = median(times.get('fp32')!);
  for (const form of FORMS) {
    const ms = median(times.get(form)!);
    const us = (ms * 1000) / (COPIES * SHAPES.length);
    rows.push([String(M), LABEL[form], us.toFixed(0), (base / ms).toFixed(2), ((f32Bytes / ms) * 1e-6).toFixed(1)]);
  }
}
console.log(table([['M (rows)', 'kernel', 'µs per call', 'speed vs fp32', 'fp32-equivalent GB/s'], ...rows]));

const [N, K] = SHAPES[1]!;
const M = 16;
const plain = gaussian(M * K, 11, 1);
const outlier = plain.slice();
for (let k = 0; k < K; k++) outlier[k] = outlier[k]! * 30;
// An outlier feature: channel 0 ×30 in every row (trained LLMs carry a few such channels).
const channel = plain.slice();
for (let m = 0; m < M; m++) channel[m * K] = channel[m * K]! * 30;
// Saturation bait: rows of |x| near their max, so u8 values sit near 0 or 255 (not a real model's rows).
const flat = gaussian(M * K, 13, 1).map((v) => Math.sign(v) * (0.9 + 0.1 * Math.abs(v) / 4));
const errRows: string[][] = [];
for (const form of FORMS) {
  const w = weights[1]![0]!;
  errRows.push([LABEL[form], ...(await Promise.all([plain, outlier, channel, flat].map(async (x) => (await error(form, w, N, K, x, M)).toExponential(2))))]);
}
console.log(`\nrelative RMS error vs float64, down [${N}, ${K}], ${M} rows:`);
console.log(table([['kernel', 'rows N(0,1)', 'one row ×30', 'one channel ×30', 'rows near ±max'], ...errRows]));
for (const list of sessions.values()) for (const s of list) await s.release();
process.exit(0);

/**
 * bench:quant — the drift of int8 weights (--quantization int8) against fp32, measured on the
 * golden fixtures and on both perf checkpoints. For each model and prompt:
 * - greedy agreement: the fp32 and int8 engines each generate 64 greedy tokens; the share of
 *   positions before their first difference (1.00 = identical), and where they first differ;
 * - top-1 agreement per position: both models teacher-forced on prompt + the fp32 continuation
 *   (full recomputation, logits at every position); the share of positions with the same argmax;
 * - max and mean |Δlogit| over those positions; for scale, the largest |logit| and the median gap
 *   between the fp32 top-1 and top-2 logits (random-weight checkpoints have nearly flat logits,
 *   so their argmax flips at drifts far below a trained model's margins).
 * Also the load time and the weight bytes of each format (what decode reads).
 *
 * Usage: npm run bench:quant [-- mixtral-perf dsv2-perf mixtral-tiny ...] [--tokens N]
 */
import path from 'node:path';
import { loadModel, type LoadedModel } from '../services/gateway/src/engine/load.js';
import { generateCached } from '../services/gateway/src/engine/generate.js';
import { DEFAULT_SAMPLING } from '../services/gateway/src/sampling/params.js';
import type { Quantization } from '../services/model/src/graphs/linear.js';
import { DEFAULT_RUNTIME } from '../services/model/src/runtime/onnx.js';
import { ensurePerfModel, table } from './lib/perf-models.js';

const args = process.argv.slice(2);
const tokArg = args.indexOf('--tokens');
const TOKENS = tokArg >= 0 ? Number(args[tokArg + 1]) : 64;
const names = args.filter((a, i) => !a.startsWith('--') && args[i - 1] !== '--tokens');
const FIXTURES = ['mixtral-tiny', 'qwen2-moe-tiny', 'deepseek-v2-tiny'];
const MODELS = names.length ? names : [...FIXTURES, 'mixtral-perf', 'dsv2-perf'];
const GREEDY = { ...DEFAULT_SAMPLING, temperature: 0 };

function dirOf(name: string): string {
  return FIXTURES.includes(name) ? path.join('tests/fixtures/golden', name) : ensurePerfModel(name);
}

let rng = 4242;
function randomIds(n: number, vocab: number): number[] {
  return Array.from({ length: n }, () => {
    rng = (rng * 1103515245 + 12345) >>> 0;
    return 3 + (rng % (vocab - 3));
  });
}

/** Logits float32 [T, V] at every position of `ids`, by full recomputation (no cache). */
async function allLogits(m: LoadedModel, ids: number[]): Promise<Float32Array> {
  const r = await m.runner.forward([{ tokens: ids, pastLen: 0, kvSeqId: -1, logits: 'all' }], null, m.experts);
  return r.logits.slice();
}

function argmax(x: Float32Array, off: number, n: number): number {
  let best = 0;
  for (let i = 1; i < n; i++) if (x[off + i]! > x[off + best]!) best = i;
  return best;
}

async function load(dir: string, quantization: Quantization): Promise<{ m: LoadedModel; s: number }> {
  const t0 = performance.now();
  const m = await loadModel(dir, { runtime: { ...DEFAULT_RUNTIME, quantization }, mlaImpl: 'auto', maxModelLen: 1024 });
  return { m, s: (performance.now() - t0) / 1000 };
}

const rows: (string | number)[][] = [['model', 'prompts', 'greedy agreement', 'first diff (min)', 'top-1 agreement', 'max |Δlogit|', 'mean |Δlogit|', 'fp32 top-1 margin (median)', 'max |logit|', 'load s fp32 / int8']];
for (const name of MODELS) {
  const dir = dirOf(name);
  const fp = await load(dir, 'none');
  const q8 = await load(dir, 'int8');
  const V = fp.m.cfg.vocabSize;
  const prompts = [randomIds(8, V), randomIds(32, V), randomIds(64, V)];
  const p = { maxTokens: TOKENS, sampling: GREEDY, stopTokenIds: [] };
  const a = await generateCached(fp.m.engine, prompts, p);
  const b = await generateCached(q8.m.engine, prompts, p);
  let agree = 0;
  let firstDiff = Infinity;
  let top1 = 0;
  let positions = 0;
  let maxDelta = 0;
  let sumDelta = 0;
  let nDelta = 0;
  let maxAbs = 0;
  const margins: number[] = [];
  for (let i = 0; i < prompts.length; i++) {
    const ga = a[i]!.greedy_ids;
    const gb = b[i]!.greedy_ids;
    let k = 0;
    while (k < ga.length && ga[k] === gb[k]) k++;
    agree += k / ga.length;
    if (k < ga.length) firstDiff = Math.min(firstDiff, k);
    const seq = [...prompts[i]!, ...ga];
    const la = await allLogits(fp.m, seq);
    const lb = await allLogits(q8.m, seq);
    for (let t = 0; t < seq.length; t++) {
      const best = argmax(la, t * V, V);
      if (best === argmax(lb, t * V, V)) top1++;
      positions++;
      let second = -Infinity;
      for (let v = 0; v < V; v++) if (v !== best && la[t * V + v]! > second) second = la[t * V + v]!;
      margins.push(la[t * V + best]! - second);
    }
    for (let j = 0; j < la.length; j++) {
      const d = Math.abs(la[j]! - lb[j]!);
      maxDelta = Math.max(maxDelta, d);
      sumDelta += d;
      nDelta++;
      maxAbs = Math.max(maxAbs, Math.abs(la[j]!));
    }
  }
  margins.sort((x, y) => x - y);
  rows.push([name, prompts.length, agree / prompts.length, firstDiff === Infinity ? `none in ${TOKENS}` : firstDiff, top1 / positions, maxDelta, sumDelta / nDelta, margins[margins.length >> 1]!, maxAbs, `${fp.s.toFixed(1)} / ${q8.s.toFixed(1)}`]);
  process.stderr.write(`${name} done\n`);
  fp.m.checkpoint.close();
  q8.m.checkpoint.close();
}
process.stdout.write(`int8 (weight-only, blocks of 32, int8 compute) vs fp32, ${TOKENS} greedy tokens after 8/32/64-token random prompts:\n${table(rows)}\n`);
process.exit(0);

/**
 * Rotary position embeddings: the cos/sin table (computed in TypeScript, in float32 as
 * transformers computes it) and the graph fragment that rotates q or k.
 *
 * Letters: N rows (tokens), h heads, R rotary dims (cfg.rope.dim), F = R/2 frequencies.
 */
import type { RopeConfig } from '../config.js';
import type { GraphBuilder } from '../onnx/graph.js';

const f = Math.fround;

/** inv_freq [F] as transformers computes it for default / linear / yarn RoPE. */
export function inverseFrequencies(rope: RopeConfig): Float32Array {
  const F = rope.dim / 2;
  const inv = new Float32Array(F);
  // pos_freqs = base ** (arange(0, dim, 2).float() / dim), evaluated in float32
  const posFreq = (i: number) => f(Math.pow(rope.theta, f(f(2 * i) / rope.dim)));
  if (rope.type === 'default' || rope.type === 'linear') {
    const div = rope.type === 'linear' ? rope.factor : 1;
    for (let i = 0; i < F; i++) inv[i] = f(f(1 / posFreq(i)) / div);
    return inv;
  }
  // yarn (transformers _compute_yarn_parameters)
  const dim = rope.dim;
  const base = rope.theta;
  const corrDim = (rot: number) => (dim * Math.log(rope.originalMaxPositionEmbeddings / (rot * 2 * Math.PI))) / (2 * Math.log(base));
  let low = corrDim(rope.betaFast);
  let high = corrDim(rope.betaSlow);
  if (rope.truncate) {
    low = Math.floor(low);
    high = Math.ceil(high);
  }
  low = Math.max(low, 0);
  high = Math.min(high, dim - 1);
  if (low === high) high += 0.001;
  for (let i = 0; i < F; i++) {
    const pf = posFreq(i);
    const extrap = f(1 / pf);
    const interp = f(1 / f(rope.factor * pf));
    const ramp = f(Math.min(Math.max((i - low) / (high - low), 0), 1));
    const extrapFactor = f(1 - ramp);
    inv[i] = f(f(interp * f(1 - extrapFactor)) + f(extrap * extrapFactor));
  }
  return inv;
}

/**
 * Precomputed cos/sin rows for positions [0, maxPositions): cos/sin: Float32Array [maxPositions, F],
 * row-major, already multiplied by rope.attentionScaling (yarn's mscale ratio).
 */
export class RopeTable {
  readonly cos: Float32Array;
  readonly sin: Float32Array;
  readonly freqs: number;
  constructor(
    rope: RopeConfig,
    readonly maxPositions: number,
  ) {
    const inv = inverseFrequencies(rope);
    const F = (this.freqs = inv.length);
    this.cos = new Float32Array(maxPositions * F);
    this.sin = new Float32Array(maxPositions * F);
    const s = rope.attentionScaling;
    for (let p = 0; p < maxPositions; p++) {
      for (let i = 0; i < F; i++) {
        const angle = f(p * inv[i]!);
        this.cos[p * F + i] = f(f(Math.cos(angle)) * s);
        this.sin[p * F + i] = f(f(Math.sin(angle)) * s);
      }
    }
  }

  /** Copies the rows of `position` into row `row` of cos/sin buffers [*, F]. */
  fill(position: number, outCos: Float32Array, outSin: Float32Array, row: number): void {
    const F = this.freqs;
    outCos.set(this.cos.subarray(position * F, position * F + F), row * F);
    outSin.set(this.sin.subarray(position * F, position * F + F), row * F);
  }
}

/**
 * Rotates the first R dims of x [N, h, Dx] (Dx >= R; the rest passes through).
 * cos/sin: [N, F] graph values.
 * interleaved: pairs (2i, 2i+1) rotate by frequency i (DeepSeek, complex multiplication);
 * else pairs (i, i+F) (rotate_half, Llama/Mixtral/Qwen).
 */
export function applyRope(g: GraphBuilder, x: string, cos: string, sin: string, R: number, Dx: number, interleaved: boolean): string {
  const F = R / 2;
  const rot = R === Dx ? x : g.slice(x, 2, 0, R);
  let out: string;
  if (interleaved) {
    const c = g.unsqueeze(cos, [1, 3]); // [N, 1, F, 1]
    const s = g.unsqueeze(sin, [1, 3]);
    const pairs = g.reshape(rot, [0, 0, F, 2]); // [N, h, F, 2]
    const xe = g.slice(pairs, 3, 0, 1);
    const xo = g.slice(pairs, 3, 1, 2);
    const oe = g.sub(g.mul(xe, c), g.mul(xo, s));
    const oo = g.add(g.mul(xe, s), g.mul(xo, c));
    out = g.reshape(g.concat([oe, oo], 3), [0, 0, R]);
  } else {
    const c = g.unsqueeze(cos, [1]); // [N, 1, F]
    const s = g.unsqueeze(sin, [1]);
    const x1 = g.slice(rot, 2, 0, F);
    const x2 = g.slice(rot, 2, F, R);
    const o1 = g.sub(g.mul(x1, c), g.mul(x2, s));
    const o2 = g.add(g.mul(x2, c), g.mul(x1, s));
    out = g.concat([o1, o2], 2);
  }
  return R === Dx ? out : g.concat([out, g.slice(x, 2, R, Dx)], 2);
}

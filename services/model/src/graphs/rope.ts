/**
 * Rotary position embeddings: the cos/sin table (computed in TypeScript, in float32 as
 * transformers computes it) and the graph fragment that rotates q or k.
 *
 * Letters: N rows (tokens), h heads, R rotary dims (cfg.rope.dim), F = R/2 frequencies.
 */
import type { RopeConfig } from '../config.js';
import type { GraphBuilder } from '../onnx/graph.js';
import { DT } from '../onnx/proto.js';

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
 * Precomputed cos/sin rows for positions [0, maxPositions), already multiplied by
 * rope.attentionScaling (yarn's mscale ratio), laid out at the full rotary width R so the graph
 * multiplies without gathering: cos/sin Float32Array [maxPositions, R], row-major, frequency i at
 * dims (i, i+F) for rotate_half and (2i, 2i+1) for interleaved pairs (see applyRope).
 */
export class RopeTable {
  readonly cos: Float32Array;
  readonly sin: Float32Array;
  /** R: values per row of cos and sin. */
  readonly width: number;
  constructor(
    rope: RopeConfig,
    readonly maxPositions: number,
  ) {
    const inv = inverseFrequencies(rope);
    const F = inv.length;
    const R = (this.width = 2 * F);
    this.cos = new Float32Array(maxPositions * R);
    this.sin = new Float32Array(maxPositions * R);
    const s = rope.attentionScaling;
    for (let p = 0; p < maxPositions; p++) {
      for (let i = 0; i < F; i++) {
        const angle = f(p * inv[i]!);
        const c = f(f(Math.cos(angle)) * s);
        const si = f(f(Math.sin(angle)) * s);
        const [a, b] = rope.interleaved ? [2 * i, 2 * i + 1] : [i, i + F];
        this.cos[p * R + a] = c;
        this.cos[p * R + b] = c;
        this.sin[p * R + a] = si;
        this.sin[p * R + b] = si;
      }
    }
  }

  /** Copies the rows of `position` into row `row` of cos/sin buffers [*, R]. */
  fill(position: number, outCos: Float32Array, outSin: Float32Array, row: number): void {
    const R = this.width;
    outCos.set(this.cos.subarray(position * R, position * R + R), row * R);
    outSin.set(this.sin.subarray(position * R, position * R + R), row * R);
  }
}

/**
 * The signed permutation Q [R, R] with (x·Q) = the partner of each rotary dim, negated for the
 * first of each pair: rotate_half (x·Q)[i] = −x[i+F], (x·Q)[i+F] = x[i]; interleaved
 * (x·Q)[2i] = −x[2i+1], (x·Q)[2i+1] = x[2i].
 */
function partnerMatrix(R: number, interleaved: boolean): Float32Array {
  const F = R / 2;
  const q = new Float32Array(R * R);
  for (let i = 0; i < F; i++) {
    const [a, b] = interleaved ? [2 * i, 2 * i + 1] : [i, i + F];
    q[b * R + a] = -1; // (x·Q)[a] = −x[b]
    q[a * R + b] = 1; // (x·Q)[b] = x[a]
  }
  return q;
}

/**
 * Rotates the first R dims of x [N, h, Dx] (Dx >= R; the rest passes through), with cos/sin
 * graph values [N, 1, R] (broadcast over the heads) laid out as RopeTable lays them out:
 *   out = x · cos + (x·Q) · sin
 * which is, pair by pair, exactly transformers' arithmetic (x1·c − x2·s, x2·c + x1·s): the
 * matmul by a signed permutation sums one product and zeros, so nothing rounds differently. Four
 * nodes for any number of heads, instead of a dozen slices, products and concats per call.
 * interleaved: pairs (2i, 2i+1) (DeepSeek, complex multiplication); else pairs (i, i+F)
 * (rotate_half: Llama/Mixtral/Qwen).
 */
export function applyRope(g: GraphBuilder, x: string, cos: string, sin: string, R: number, Dx: number, interleaved: boolean): string {
  const rot = R === Dx ? x : g.slice(x, 2, 0, R);
  const q = g.initializer(`rope_partner_${R}_${interleaved ? 'i' : 'h'}`, DT.FLOAT, [R, R], partnerMatrix(R, interleaved));
  const out = g.add(g.mul(rot, cos), g.mul(g.matmul(rot, q), sin));
  return R === Dx ? out : g.concat([out, g.slice(x, 2, R, Dx)], 2);
}

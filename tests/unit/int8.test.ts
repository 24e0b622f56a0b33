import { describe, expect, it } from 'vitest';
import { projection } from '../../services/model/src/graphs/linear.js';
import { GraphBuilder } from '../../services/model/src/onnx/graph.js';
import { DT } from '../../services/model/src/onnx/proto.js';
import { dequantizeInt8, quantizeInt8 } from '../../services/model/src/quant/int8.js';
import { f32, OrtSession } from '../../services/model/src/runtime/onnx.js';

function seeded(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 2 ** 32 - 0.5) * 0.2;
  }
  return out;
}

/** y [M, N] = x [M, K] · w^T [K, N] in float64, the oracle. */
function matmulT(x: Float32Array, w: Float32Array, M: number, N: number, K: number): Float64Array {
  const y = new Float64Array(M * N);
  for (let m = 0; m < M; m++) for (let n = 0; n < N; n++) {
    let acc = 0;
    for (let k = 0; k < K; k++) acc += x[m * K + k]! * w[n * K + k]!;
    y[m * N + n] = acc;
  }
  return y;
}

describe('int8 weights (MatMulNBits layout)', () => {
  it('quantizes per block of 32 with max |error| of half a step, padding K to whole blocks', () => {
    const N = 5;
    const K = 70; // 3 blocks, the last one partial
    const w = seeded(N * K, 7);
    w[3] = 0.5; // one large value sets its block's scale
    const q = quantizeInt8(w, N, K);
    expect(q.kBlocks).toBe(3);
    expect(q.q.length).toBe(N * 3 * 32);
    expect(q.scales[0]).toBeCloseTo(0.5 / 127, 8);
    const back = dequantizeInt8(q);
    for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) {
      const scale = q.scales[n * 3 + Math.floor(k / 32)]!;
      expect(Math.abs(back[n * K + k]! - w[n * K + k]!)).toBeLessThanOrEqual(scale / 2 + 1e-9);
    }
    expect(q.q[(0 * 3 + 2) * 32 + 10]).toBe(128); // padding (k = 74 >= K) is zero
  });

  it('an all-zero block gets scale 1 and zero codes', () => {
    const q = quantizeInt8(new Float32Array(64), 1, 64);
    expect(Array.from(q.scales)).toEqual([1, 1]);
    expect(q.q.every((v) => v === 128)).toBe(true);
  });

  it('ONNX Runtime computes x · dequant(W)^T within int8 activation rounding', async () => {
    const M = 3;
    const N = 48;
    const K = 96;
    const w = seeded(N * K, 11);
    const x = seeded(M * K, 12);
    const g = new GraphBuilder('q8');
    g.output(projection(g, g.input('x', DT.FLOAT, ['M', K]), 'w', w, N, K, { quantization: 'int8' }), 'y');
    const s = await OrtSession.create('q8', g.toModel());
    const y = (await s.run({ x: f32(x, [M, K]) }, ['y'])).y!.data;
    const ref = matmulT(x, dequantizeInt8(quantizeInt8(w, N, K)), M, N, K);
    const exact = matmulT(x, w, M, N, K);
    let maxRef = 0;
    let maxExact = 0;
    let scale = 0;
    for (let i = 0; i < M * N; i++) {
      maxRef = Math.max(maxRef, Math.abs(y[i]! - ref[i]!));
      maxExact = Math.max(maxExact, Math.abs(y[i]! - exact[i]!));
      scale = Math.max(scale, Math.abs(exact[i]!));
    }
    // accuracy_level 4 also quantizes the activations to int8 per block: relative error ~1e-2.
    expect(maxRef / scale).toBeLessThan(0.015);
    expect(maxExact / scale).toBeLessThan(0.015);
    expect(maxRef).toBeGreaterThan(0); // it did run the int8 kernel, not fp32
    await s.release();
  });
});

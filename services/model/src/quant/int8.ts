/**
 * Weight-only int8 quantization of Hugging Face Linear weights, in the layout of ONNX Runtime's
 * com.microsoft MatMulNBits (bits = 8): per block of `block` consecutive input features of each
 * output row, one float scale; values stored as uint8 with the implicit zero point 128.
 *
 *   w      float32 [N, K]             row-major (HF Linear: out_features × in_features)
 *   q      uint8   [N, kBlocks, block] q = clamp(round(w / scale), -127, 127) + 128; K padded with 0
 *   scales float32 [N, kBlocks]       scale = max|w| over the block / 127 (1 where the block is all 0)
 *
 * Symmetric, as llama.cpp's q8_0 (blocks of 32, one scale each), so the drift of the two is of
 * one kind. Quantized once at load from the checkpoint's weights; nothing is stored quantized.
 *
 * Letters: N output features, K input features, B block size.
 */

export interface Int8Blocks {
  readonly q: Uint8Array;
  readonly scales: Float32Array;
  readonly N: number;
  readonly K: number;
  readonly block: number;
  readonly kBlocks: number;
}

/** MatMulNBits' block size for moeserve's int8 weights (llama.cpp q8_0 uses 32 too). */
export const INT8_BLOCK = 32;

export function quantizeInt8(w: Float32Array, N: number, K: number, block = INT8_BLOCK): Int8Blocks {
  if (w.length !== N * K) throw new Error(`quantizeInt8: ${w.length} values for [${N}, ${K}]`);
  const kBlocks = Math.ceil(K / block);
  const q = new Uint8Array(N * kBlocks * block).fill(128);
  const scales = new Float32Array(N * kBlocks);
  for (let n = 0; n < N; n++) {
    const rowIn = n * K;
    for (let b = 0; b < kBlocks; b++) {
      const k0 = b * block;
      const k1 = Math.min(K, k0 + block);
      let amax = 0;
      for (let k = k0; k < k1; k++) {
        const a = Math.abs(w[rowIn + k]!);
        if (a > amax) amax = a;
      }
      // Math.fround: the scale the kernel multiplies by is the float32 one stored here.
      const scale = amax > 0 ? Math.fround(amax / 127) : 1;
      scales[n * kBlocks + b] = scale;
      const inv = 1 / scale;
      const out = (n * kBlocks + b) * block;
      for (let k = k0; k < k1; k++) {
        let v = Math.round(w[rowIn + k]! * inv);
        if (v > 127) v = 127;
        else if (v < -127) v = -127;
        q[out + (k - k0)] = v + 128;
      }
    }
  }
  return { q, scales, N, K, block, kBlocks };
}

/** The float32 weight [N, K] the kernel computes with (the oracle for tests and drift). */
export function dequantizeInt8(b: Int8Blocks): Float32Array {
  const { N, K, block, kBlocks } = b;
  const w = new Float32Array(N * K);
  for (let n = 0; n < N; n++) {
    for (let k = 0; k < K; k++) {
      const blk = (k / block) | 0;
      w[n * K + k] = (b.q[(n * kBlocks + blk) * block + (k - blk * block)]! - 128) * b.scales[n * kBlocks + blk]!;
    }
  }
  return w;
}

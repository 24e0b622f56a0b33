/**
 * Linear projections of Hugging Face weights inside unit graphs, in the weight format chosen at
 * load: fp32 (the default, exact to the reference), weight-only int8 (CPU) or fp16 (CUDA).
 *
 *   x float32 [M, K] -> y float32 [M, N],  y = x · W^T (+ b),  W the HF Linear weight [N, K]
 *
 * fp32: Gemm(transB = 1) on W as stored (nothing transposed at load).
 * int8: com.microsoft MatMulNBits, bits 8, blocks of 32 along K, accuracy_level 4 (int8 compute
 * on the activations too). Measured here on a [16384, 1024] weight with 2 threads: 0.24 ms at
 * M = 1 (fp32 Gemm: 1.1 ms); accuracy_level 0 (fp32 compute) took 230 ms, so it is never used.
 */
import { type GraphBuilder } from '../onnx/graph.js';
import { DT } from '../onnx/proto.js';
import { quantizeInt8, type Int8Blocks } from '../quant/int8.js';
import { f32ToF16 } from '../../../common/src/half.js';

/** Weight format of the linear projections. @defaultValue 'none' (fp32, as in the checkpoint) */
export type Quantization = 'none' | 'int8' | 'fp16';
export const QUANTIZATIONS: readonly Quantization[] = Object.freeze(['none', 'int8', 'fp16']);

/** How unit graphs are built. */
export interface GraphOptions {
  /** @defaultValue 'none' */
  readonly quantization: Quantization;
}

export const DEFAULT_GRAPH_OPTIONS: GraphOptions = Object.freeze({ quantization: 'none' });

/** y = x · W^T (+ bias): W float32 [N, K] row-major, named `name` in the graph. */
export function projection(g: GraphBuilder, x: string, name: string, w: Float32Array, N: number, K: number, opts: GraphOptions, bias?: string): string {
  if (opts.quantization === 'none') return g.linear(x, g.initializer(name, DT.FLOAT, [N, K], w), bias);
  if (opts.quantization === 'fp16') {
    // x16: [M, K] fp16, W16: [N, K] fp16 (HF layout, nothing transposed), y: [M, N] fp32
    const x16 = g.node('Cast', [x], { to: DT.FLOAT16 })[0]!;
    const y16 = g.linear(x16, g.initializer(`${name}.f16`, DT.FLOAT16, [N, K], f32ToF16(w)));
    const y = g.node('Cast', [y16], { to: DT.FLOAT })[0]!;
    return bias ? g.add(y, bias) : y;
  }
  const y = matMulNBits8(g, x, name, quantizeInt8(w, N, K));
  return bias ? g.add(y, bias) : y;
}

/** x [M, K] -> x · W^T [M, N] for int8 blocks of W (quant/int8.ts) as MatMulNBits, int8 compute. */
export function matMulNBits8(g: GraphBuilder, x: string, name: string, q: Int8Blocks): string {
  return g.node(
    'MatMulNBits',
    [x, g.initializer(`${name}.q8`, DT.UINT8, [q.N, q.kBlocks, q.block], q.q), g.initializer(`${name}.q8_scales`, DT.FLOAT, [q.N * q.kBlocks], q.scales)],
    { K: q.K, N: q.N, bits: 8, block_size: q.block, accuracy_level: 4 },
    1,
    'com.microsoft',
  )[0]!;
}

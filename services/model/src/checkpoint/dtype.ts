/**
 * Safetensors element types, and the reader's conversions to float32.
 *
 * Owns: the dtype names and sizes of the safetensors format, and F16 / BF16 / F64 -> F32 at load
 * (ONNX Runtime's CPU provider has no bf16 MatMul, so weights become float32). The half-precision
 * bit conversions themselves live in services/common/src/half.ts, shared with the wire codec
 * (proto/codec.ts), which must not depend on the checkpoint reader.
 *
 * Every conversion works on typed-array views of little-endian bytes. Safetensors data is
 * little-endian and typed arrays use the host's byte order, so these views are only correct on a
 * little-endian host; `assertLittleEndianHost()` checks that once (x86-64 and arm64 Linux/macOS
 * are all little-endian).
 *
 * These loops run over gigabytes of weights: no allocation, no function call and no DataView per
 * element; the F16 decode is one table lookup per element.
 */
import { endianness } from 'node:os';
import { ServerError } from '../../../common/src/errors.js';
import { f16ToF32Table } from '../../../common/src/half.js';

export const SAFETENSORS_DTYPES = ['F64', 'F32', 'F16', 'BF16', 'I64', 'I32', 'I16', 'I8', 'U8', 'BOOL', 'F8_E4M3', 'F8_E5M2'] as const;
export type SafetensorsDtype = (typeof SAFETENSORS_DTYPES)[number];

/** Bytes per element of each dtype. */
export const DTYPE_BYTES: Readonly<Record<SafetensorsDtype, number>> = Object.freeze({
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
});

/** The dtypes `Checkpoint.readF32` converts; the others are read with `readRaw`. */
export const FLOAT_DTYPES: readonly SafetensorsDtype[] = Object.freeze(['F64', 'F32', 'F16', 'BF16'] as SafetensorsDtype[]);

export function isSafetensorsDtype(s: unknown): s is SafetensorsDtype {
  return typeof s === 'string' && (SAFETENSORS_DTYPES as readonly string[]).includes(s);
}

/** Throws unless the host is little-endian (every typed-array view here assumes it). */
export function assertLittleEndianHost(): void {
  if (endianness() !== 'LE') {
    throw new ServerError('internal', 'moeserve reads safetensors (little-endian) through typed arrays and needs a little-endian host');
  }
}

// ---------------------------------------------------------------- decode (-> f32)

/** f64 -> f32 (round to nearest, as Math.fround). src: Float64Array [n]; dst: Float32Array [n]. */
export function f64ToF32(src: Float64Array, dst: Float32Array): void {
  const n = src.length;
  for (let i = 0; i < n; i++) dst[i] = src[i]!;
}

/**
 * Converts a 2-byte float tensor to f32 inside one buffer, without a second allocation.
 * buf: Float32Array [n] whose upper half (bytes 2n..4n) holds the n source halves.
 * Going forward is safe: step i writes u16 slots 2i and 2i+1 and reads slot n+i, and every
 * slot still to be read (n+j, j > i) lies above 2i+1 while i < n.
 */
export function decodeHalvesInPlace(buf: Float32Array, dtype: 'F16' | 'BF16'): void {
  const n = buf.length;
  const u16 = new Uint16Array(buf.buffer, buf.byteOffset, 2 * n); // [2n] halves; the source is [n .. 2n)
  const u32 = new Uint32Array(buf.buffer, buf.byteOffset, n); // [n] f32 bits
  if (dtype === 'BF16') {
    for (let i = 0; i < n; i++) u32[i] = u16[n + i]! << 16;
  } else {
    const table = f16ToF32Table();
    for (let i = 0; i < n; i++) u32[i] = table[u16[n + i]!]!;
  }
}

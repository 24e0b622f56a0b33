/**
 * Half-precision floats (IEEE f16 and bfloat16) <-> float32, over typed-array views of
 * little-endian bytes: the one implementation, shared by the checkpoint reader and writer
 * (services/model/src/checkpoint/) and the wire codec (proto/codec.ts). Round to nearest even;
 * NaN stays NaN, ±inf and subnormals exact.
 *
 * These loops run over gigabytes of weights and every step's activations: no allocation, no
 * function call and no DataView per element; the f16 decode is one table lookup per element.
 */

/**
 * bf16 -> f32: the bf16 bits are the upper 16 bits of the f32 (exact, NaN payloads kept).
 * src: Uint16Array [n] of bf16 bits; dst: Uint32Array [n] of f32 bits (a view on the Float32Array).
 * dst may alias src's bytes when dst starts at or before src (see `decodeInPlace`).
 */
export function bf16BitsToF32Bits(src: Uint16Array, dst: Uint32Array): void {
  const n = src.length;
  for (let i = 0; i < n; i++) dst[i] = src[i]! << 16;
}

let f16Table: Uint32Array | null = null;

/** f16 bits -> f32 bits for all 65536 halves, built once (256 KiB): decode is one lookup. */
export function f16ToF32Table(): Uint32Array {
  if (f16Table) return f16Table;
  const t = new Uint32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = (h & 0x8000) << 16;
    const exp = (h >>> 10) & 0x1f;
    let mant = h & 0x3ff;
    let bits: number;
    if (exp === 0) {
      if (mant === 0) bits = sign; // ±0
      else {
        // subnormal: value = mant · 2^-24; normalise into an f32 normal (always representable)
        let e = -14;
        while ((mant & 0x400) === 0) {
          mant <<= 1;
          e--;
        }
        bits = sign | ((e + 127) << 23) | ((mant & 0x3ff) << 13);
      }
    } else if (exp === 0x1f) {
      bits = sign | 0x7f800000 | (mant << 13); // inf, or NaN with its payload
    } else {
      bits = sign | ((exp - 15 + 127) << 23) | (mant << 13);
    }
    t[h] = bits >>> 0;
  }
  f16Table = t;
  return t;
}

/** f16 -> f32, exact (subnormals, ±inf and NaN included). src: Uint16Array [n]; dst: Uint32Array [n] of f32 bits. */
export function f16BitsToF32Bits(src: Uint16Array, dst: Uint32Array): void {
  const table = f16ToF32Table();
  const n = src.length;
  for (let i = 0; i < n; i++) dst[i] = table[src[i]!]!;
}

/** f32 bits -> bf16 bits, round to nearest even; NaN stays NaN (quiet, sign kept). */
export function f32BitsToBf16Bits(bits: number): number {
  bits >>>= 0;
  // NaN: the rounding add below would turn a NaN with only low payload bits into inf
  if ((bits & 0x7fffffff) > 0x7f800000) return ((bits >>> 16) | 0x40) & 0xffff;
  // Adding 0x7fff plus the lowest kept bit rounds ties to even; a carry out of the mantissa
  // correctly bumps the exponent (the largest finite values round to ±inf, as torch does).
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}

/** f32 bits -> f16 bits, round to nearest even, with f16 subnormals, overflow to ±inf, NaN kept quiet. */
export function f32BitsToF16Bits(bits: number): number {
  bits >>>= 0;
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  let mant = bits & 0x7fffff;
  if (exp === 0xff) return mant === 0 ? sign | 0x7c00 : sign | 0x7e00 | (mant >>> 13);
  const e = exp - 127 + 15; // rebiased exponent
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    // f16 subnormal (or zero): value = m · 2^-24 with m = M >> (14 - e), M the 24-bit significand.
    if (e < -10) return sign; // below 2^-25: rounds to ±0
    mant |= 0x800000;
    const shift = 14 - e; // 14..24
    const kept = mant >>> shift;
    const rest = mant & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    // a carry into bit 10 yields the smallest normal, which is the right answer
    return sign | (rest > half || (rest === half && (kept & 1) === 1) ? kept + 1 : kept);
  }
  const kept = (e << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  // a carry out of the mantissa bumps the exponent, up to 0x7c00 (inf) for values ≥ 65520
  return sign | (rest > 0x1000 || (rest === 0x1000 && (kept & 1) === 1) ? kept + 1 : kept);
}

/** f32 -> bf16 over arrays. src: Float32Array [n]; dst: Uint16Array [n] (allocated when absent). */
export function f32ToBf16(src: Float32Array, dst: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const n = src.length;
  for (let i = 0; i < n; i++) dst[i] = f32BitsToBf16Bits(bits[i]!); // small enough for V8 to inline
  return dst;
}

/** f32 -> f16 over arrays. src: Float32Array [n]; dst: Uint16Array [n] (allocated when absent). */
export function f32ToF16(src: Float32Array, dst: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const n = src.length;
  for (let i = 0; i < n; i++) dst[i] = f32BitsToF16Bits(bits[i]!);
  return dst;
}

/** bf16 -> f32 over arrays (convenience for tests and small tensors). */
export function bf16ToF32(src: Uint16Array, dst: Float32Array = new Float32Array(src.length)): Float32Array {
  bf16BitsToF32Bits(src, new Uint32Array(dst.buffer, dst.byteOffset, dst.length));
  return dst;
}

/** f16 -> f32 over arrays (convenience for tests and small tensors). */
export function f16ToF32(src: Uint16Array, dst: Float32Array = new Float32Array(src.length)): Float32Array {
  f16BitsToF32Bits(src, new Uint32Array(dst.buffer, dst.byteOffset, dst.length));
  return dst;
}

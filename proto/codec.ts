/**
 * Activation bytes on the wire: float32 rows <-> little-endian bytes of a wire dtype.
 *
 * f32 is the default and is bit-exact (the gateway's distributed output equals the in-process
 * one); f16 and bf16 halve the bytes and change numerics (round to nearest even), so equality
 * tests use f32. The conversions are services/common/src/half.ts (shared with the checkpoint reader).
 *
 * Hot path: a `RowCodec` owns grow-only scratch and returns views into it (or into the caller's
 * memory when no conversion or realignment is needed), so encoding and decoding allocate nothing
 * per call once warm. A view is valid until the next call on the same codec.
 */
import { ServerError } from '../services/common/src/errors.js';
import { bf16BitsToF32Bits, f16BitsToF32Bits, f32ToBf16, f32ToF16 } from '../services/common/src/half.js';

/** The proto's Dtype enum values. */
export const WIRE_DTYPE = Object.freeze({ f32: 0, f16: 1, bf16: 2 } as const);
export type WireDtype = keyof typeof WIRE_DTYPE;

/** Bytes per element, indexed by WIRE_DTYPE value. */
export const DTYPE_BYTES: readonly number[] = Object.freeze([4, 2, 2]);

const NAMES: readonly WireDtype[] = ['f32', 'f16', 'bf16'];

export function dtypeName(dtype: number): WireDtype {
  const n = NAMES[dtype];
  if (n === undefined) throw new ServerError('bad_message', `unknown activation dtype ${dtype} (expected 0 f32, 1 f16, 2 bf16)`);
  return n;
}

export function parseWireDtype(s: string): number {
  if (s === 'f32' || s === 'f16' || s === 'bf16') return WIRE_DTYPE[s];
  throw new ServerError('invalid_request', `wire dtype must be f32, f16 or bf16, got "${s}"`);
}

/** Grow-only scratch: encode and decode reuse their buffers across calls (avoid GC per layer). */
export class RowCodec {
  private half = new Uint16Array(0);
  private f32 = new Float32Array(0);
  private bytes = new Uint8Array(0);

  /**
   * src float32 [count] -> bytes of `dtype`. For f32 the result views `src` itself (zero copy):
   * the caller must not modify src until the bytes are serialized.
   */
  encode(src: Float32Array, dtype: number): Buffer {
    switch (dtype) {
      case WIRE_DTYPE.f32:
        return bytesOf(src);
      case WIRE_DTYPE.f16:
      case WIRE_DTYPE.bf16: {
        if (this.half.length < src.length) this.half = new Uint16Array(Math.max(src.length, this.half.length * 2));
        const dst = this.half.subarray(0, src.length);
        if (dtype === WIRE_DTYPE.f16) f32ToF16(src, dst);
        else f32ToBf16(src, dst);
        return bytesOf(dst);
      }
      default:
        throw new ServerError('bad_message', `unknown activation dtype ${dtype}`);
    }
  }

  /**
   * bytes of `dtype` holding exactly `count` elements -> float32 [count]. An aligned f32 payload is
   * viewed in place (zero copy); anything else is realigned / widened into scratch.
   */
  decode(bytes: Uint8Array, dtype: number, count: number, what = 'hidden'): Float32Array {
    return this.decodeTo(bytes, dtype, count, null, what);
  }

  /**
   * As `decode`, but a payload that needs copying is written into `out` ([count], caller-owned)
   * instead of this codec's scratch, so several decoded payloads can be alive at once.
   */
  decodeTo(bytes: Uint8Array, dtype: number, count: number, out: Float32Array | null, what = 'hidden'): Float32Array {
    const size = DTYPE_BYTES[dtype];
    if (size === undefined) throw new ServerError('bad_message', `unknown activation dtype ${dtype} (expected 0 f32, 1 f16, 2 bf16)`);
    if (bytes.byteLength !== count * size) {
      throw new ServerError('bad_message', `${what} has ${bytes.byteLength} bytes; expected ${count} ${dtypeName(dtype)} values = ${count * size} bytes`);
    }
    if (dtype === WIRE_DTYPE.f32 && bytes.byteOffset % 4 === 0) return new Float32Array(bytes.buffer, bytes.byteOffset, count);
    const dst = out ? out.subarray(0, count) : this.takeF32(count);
    if (dst.length < count) throw new ServerError('internal', `decode: output holds ${dst.length} of ${count} values`);
    if (dtype === WIRE_DTYPE.f32) {
      new Uint8Array(dst.buffer, dst.byteOffset, count * 4).set(bytes);
      return dst;
    }
    const aligned = bytes.byteOffset % 2 === 0 ? bytes : this.realign(bytes);
    const src = new Uint16Array(aligned.buffer, aligned.byteOffset, count);
    const bits = new Uint32Array(dst.buffer, dst.byteOffset, count);
    if (dtype === WIRE_DTYPE.bf16) bf16BitsToF32Bits(src, bits);
    else f16BitsToF32Bits(src, bits);
    return dst;
  }

  private takeF32(n: number): Float32Array {
    if (this.f32.length < n) this.f32 = new Float32Array(Math.max(n, this.f32.length * 2));
    return this.f32.subarray(0, n);
  }

  private realign(bytes: Uint8Array): Uint8Array {
    if (this.bytes.length < bytes.byteLength) this.bytes = new Uint8Array(Math.max(bytes.byteLength, this.bytes.length * 2));
    const out = this.bytes.subarray(0, bytes.byteLength);
    out.set(bytes);
    return out;
  }
}

/**
 * A Buffer viewing a typed array's bytes (no copy). protobufjs copies a Buffer with one memcpy but a
 * plain Uint8Array byte by byte, so bytes fields are always given as Buffers.
 */
export function bytesOf(a: Float32Array | Int32Array | Uint16Array): Buffer {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}

/** One-shot helpers (tests, cold paths). */
export function encodeRows(src: Float32Array, dtype: number): Buffer {
  return Buffer.from(new RowCodec().encode(src, dtype));
}

export function decodeRows(bytes: Uint8Array, dtype: number, count: number): Float32Array {
  return new RowCodec().decode(bytes, dtype, count).slice();
}

/** int32 [n] <-> LE bytes (expert ids); a view when aligned. */
export function int32View(bytes: Uint8Array, count: number, what: string, scratch: { buf: Int32Array }): Int32Array {
  if (bytes.byteLength !== count * 4) throw new ServerError('bad_message', `${what} has ${bytes.byteLength} bytes; expected ${count} int32 = ${count * 4} bytes`);
  if (bytes.byteOffset % 4 === 0) return new Int32Array(bytes.buffer, bytes.byteOffset, count);
  if (scratch.buf.length < count) scratch.buf = new Int32Array(Math.max(count, scratch.buf.length * 2));
  const out = scratch.buf.subarray(0, count);
  new Uint8Array(out.buffer, 0, count * 4).set(bytes);
  return out;
}

/** float32 [n] from LE bytes (weights); a view when aligned. */
export function float32View(bytes: Uint8Array, count: number, what: string, scratch: { buf: Float32Array }): Float32Array {
  if (bytes.byteLength !== count * 4) throw new ServerError('bad_message', `${what} has ${bytes.byteLength} bytes; expected ${count} float32 = ${count * 4} bytes`);
  if (bytes.byteOffset % 4 === 0) return new Float32Array(bytes.buffer, bytes.byteOffset, count);
  if (scratch.buf.length < count) scratch.buf = new Float32Array(Math.max(count, scratch.buf.length * 2));
  const out = scratch.buf.subarray(0, count);
  new Uint8Array(out.buffer, 0, count * 4).set(bytes);
  return out;
}

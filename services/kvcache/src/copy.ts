/**
 * The one element-copy primitive of the KV data path (writeRows, gather, readRows).
 *
 * Why not always a loop, why not always `set`: on Node 20 a JS Float32Array copy loop measured
 * ~3.4 ns/element, `dst.set(src.subarray(...))` ~0.2-0.4 ns/element plus one short-lived view
 * object (~100 bytes, young generation) per call. So:
 *   - whole source array          -> `dst.set(src, off)`: memcpy, nothing allocated;
 *   - up to LOOP_COPY_MAX_ELEMENTS -> tight loop: as fast as set at that size, nothing allocated;
 *   - longer runs                 -> one `set` over a subarray view: one view per contiguous run
 *                                    (never per token), amortized over >= 256 bytes copied.
 * There is no allocation-free memcpy between two different typed arrays in Node 20
 * (`Buffer#copy` builds the same view internally).
 */

/** Runs of at most this many elements are copied by a loop (no view allocated). */
export const LOOP_COPY_MAX_ELEMENTS = 64;

/** Copies src[srcOff, srcOff + len) to dst[dstOff, dstOff + len). Bounds are the caller's. */
export function copyElements(dst: Float32Array, dstOff: number, src: Float32Array, srcOff: number, len: number): void {
  if (len <= LOOP_COPY_MAX_ELEMENTS) {
    for (let i = 0; i < len; i++) dst[dstOff + i] = src[srcOff + i];
  } else if (srcOff === 0 && len === src.length) {
    dst.set(src, dstOff);
  } else {
    dst.set(src.subarray(srcOff, srcOff + len), dstOff);
  }
}

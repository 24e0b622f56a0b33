/**
 * Seeded random weights for generated checkpoints: fast, deterministic, per tensor.
 *
 * (seed, tensor name) -> `tensorRng` (splitmix32 over an FNV-1a hash of the name: each tensor's
 * stream depends on nothing else, so its bytes do not change with shard size, layout order or
 * chunk size) -> `fillNormal` (xoshiro128** + Irwin–Hall) -> Float32Array chunks.
 *
 * Irwin–Hall with four 16-bit uniforms (two xoshiro outputs) instead of Box–Muller: no log, sqrt
 * or trig per element, so the loop runs at several hundred million samples per second; the tails
 * are cut at ±2√3 σ ≈ ±3.46 σ, which random test weights do not miss.
 */

/** xoshiro128** state: four u32 words, advanced in place by `fillNormal`. */
export type RngState = Uint32Array;

/** splitmix32 step: a well-mixed u32 from a u32 counter (used only for seeding). */
function splitmix32(x: number): number {
  x = (x + 0x9e3779b9) | 0;
  let z = x;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

/** The generator state for one tensor: a function of the seed and the tensor's name only. */
export function tensorRng(seed: number, name: string): RngState {
  // FNV-1a over the name's UTF-16 code units, then the seed's low and high words
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
  h = Math.imul(h ^ (seed >>> 0), 0x01000193);
  h = Math.imul(h ^ Math.floor(seed / 0x100000000), 0x01000193);
  const s = new Uint32Array(4);
  let x = h >>> 0;
  for (let i = 0; i < 4; i++) {
    x = (x + 0x9e3779b9) >>> 0;
    s[i] = splitmix32(x);
  }
  if ((s[0]! | s[1]! | s[2]! | s[3]!) === 0) s[0] = 1; // the all-zero state is xoshiro's fixed point
  return s;
}

/** Sum of four U[0, 65535] has mean 131070 and standard deviation 65536/√3 (to 1e-9). */
const IH_MEAN = 131070;
const IH_UNIT = Math.sqrt(3) / 65536;

/**
 * Fills dst with approximately normal samples (mean, std), advancing `state`.
 * dst: Float32Array [n]. Single pass, state in locals: this loop produces gigabytes.
 */
export function fillNormal(dst: Float32Array, state: RngState, mean: number, std: number): void {
  let s0 = state[0]!;
  let s1 = state[1]!;
  let s2 = state[2]!;
  let s3 = state[3]!;
  const scale = std * IH_UNIT;
  const offset = mean - IH_MEAN * scale;
  const n = dst.length;
  for (let i = 0; i < n; i++) {
    // xoshiro128** output 1
    let r = Math.imul(s1, 5);
    const a = Math.imul((r << 7) | (r >>> 25), 9) >>> 0;
    let t = s1 << 9;
    s2 ^= s0;
    s3 ^= s1;
    s1 ^= s2;
    s0 ^= s3;
    s2 ^= t;
    s3 = (s3 << 11) | (s3 >>> 21);
    // xoshiro128** output 2
    r = Math.imul(s1, 5);
    const b = Math.imul((r << 7) | (r >>> 25), 9) >>> 0;
    t = s1 << 9;
    s2 ^= s0;
    s3 ^= s1;
    s1 ^= s2;
    s0 ^= s3;
    s2 ^= t;
    s3 = (s3 << 11) | (s3 >>> 21);
    dst[i] = offset + scale * ((a & 0xffff) + (a >>> 16) + (b & 0xffff) + (b >>> 16));
  }
  state[0] = s0;
  state[1] = s1;
  state[2] = s2;
  state[3] = s3;
}

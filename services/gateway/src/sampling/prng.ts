/**
 * The per-sequence pseudo-random generator: xoshiro128** (Blackman & Vigna, 2018), 128-bit
 * state, period 2^128 - 1, 32-bit outputs, all in `Math.imul` / shifts so V8 keeps it in int32
 * registers and it allocates nothing. Not cryptographic; it only has to be fast, well mixed and
 * reproducible from a seed.
 *
 * Seeding (documented because `seed` reproducibility is an API promise): the seed number's
 * IEEE-754 float64 bit pattern (two 32-bit words, lo and hi) is expanded to the four state words by
 * splitmix32 (the 32-bit variant of Vigna's splitmix64 with the murmur3 finalizer), so any
 * integer seed — including int64 seeds that JSON rounded to a double — gives a distinct, well-mixed
 * state, and seed 0 does not give the all-zero state xoshiro must avoid. Unseeded generators take
 * 128 bits from `crypto.getRandomValues` once, at construction.
 *
 * Same seed => same sequence of `nextU32` / `nextFloat` values, on every platform and Node version
 * (integer arithmetic only; `nextFloat` is exact: 53 bits / 2^53).
 */
import { getRandomValues } from 'node:crypto';

// Scratch views for reading a double's bits; module-level so seeding allocates nothing.
const F64 = new Float64Array(1);
const U32 = new Uint32Array(F64.buffer);

export class Xoshiro128 {
  private s0 = 0;
  private s1 = 0;
  private s2 = 0;
  private s3 = 0;

  /** @param seed any number (its float64 bits are hashed); null or undefined = crypto-random. */
  constructor(seed: number | null = null) {
    if (seed === null) {
      const r = getRandomValues(new Uint32Array(4));
      this.s0 = r[0]! | 0;
      this.s1 = r[1]! | 0;
      this.s2 = r[2]! | 0;
      this.s3 = r[3]! | 0;
      if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1; // the one forbidden state
      return;
    }
    F64[0] = seed === 0 ? 0 : seed; // -0 and +0 are the same seed
    // Little-endian hosts: U32[0] is the low word. Endianness only permutes the two words, and
    // every Node target we run on is little-endian; the mixing below does not depend on it.
    let x = U32[0]! ^ Math.imul(U32[1]!, 0x9e3779b9);
    const next = (): number => {
      x = (x + 0x9e3779b9) | 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) | 0;
    };
    this.s0 = next();
    this.s1 = next() ^ U32[1]!;
    this.s2 = next();
    this.s3 = next();
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s3 = 1;
  }

  /** A generator at an exact state (known-answer tests of the core; not for serving). */
  static fromState(s0: number, s1: number, s2: number, s3: number): Xoshiro128 {
    const g = new Xoshiro128(0);
    g.s0 = s0 | 0;
    g.s1 = s1 | 0;
    g.s2 = s2 | 0;
    g.s3 = s3 | 0;
    return g;
  }

  /** Next 32-bit output as an unsigned integer in [0, 2^32). */
  nextU32(): number {
    const s0 = this.s0;
    const s1 = this.s1;
    const s2 = this.s2;
    const s3 = this.s3;
    // result = rotl(s1 * 5, 7) * 9
    const t5 = Math.imul(s1, 5);
    const result = Math.imul((t5 << 7) | (t5 >>> 25), 9);
    const t = s1 << 9;
    const n2 = s2 ^ s0;
    const n3 = s3 ^ s1;
    this.s1 = s1 ^ n2;
    this.s0 = s0 ^ n3;
    this.s2 = n2 ^ t;
    this.s3 = (n3 << 11) | (n3 >>> 21);
    return result >>> 0;
  }

  /** Uniform double in [0, 1) with 53 random bits (two outputs: 27 + 26 bits). */
  nextFloat(): number {
    const a = this.nextU32() >>> 5; // 27 bits
    const b = this.nextU32() >>> 6; // 26 bits
    return (a * 67108864 + b) / 9007199254740992; // (a * 2^26 + b) / 2^53
  }
}

/**
 * Chained content hashes of full KV blocks: the identity of a cached block in the pool (prefix
 * caching) and in the Redis tier's keys.
 *
 *   parent of block 0 = rootHash(salt)                 (PREFIX_ROOT_HASH when salt is null)
 *   h_i               = hashBlock(h_{i-1}, tokens[i·B, (i+1)·B))     B = blockSize
 *
 * so equal h_i means (up to a collision) the whole prefix tokens[0, (i+1)·B) and the salt are
 * equal: a hit on block i is a hit on blocks 0..i. Only FULL blocks are hashed, each once: when it
 * fills (KvCacheManager.commitFullBlocks) or for a prompt at admission (prefixHashes); never per
 * token per step.
 *
 * The function: two independent 32-bit MurmurHash3-style lanes (the x86_32 body on one lane, the
 * x86_128 lane constants on the other), both fed the parent's 53 bits and every token id as an
 * Int32, cross-mixed and finalized (fmix32) as murmur3 x86_128 does; the result keeps 21 bits of
 * lane A and 32 of lane B = a 53-bit non-negative integer, exact as a JS number (the pool stores
 * hashes in a Float64Array and a Map<number, blockId>). Math.imul only: no BigInt, no allocation,
 * the same value in every process (the Redis tier depends on that).
 *
 * Collision odds, for a well-mixed 53-bit value: about n² / 2^54 over n distinct blocks alive at
 * once — 1e6 blocks (pool and Redis together) ≈ 5.5e-5, 1e5 ≈ 5.5e-7. KvCacheManager also stores
 * each cached block's token ids and a hit must match them, so a collision between two different
 * blocks is caught (a miss, then a recompute); what remains is a collision of the parent chain
 * under identical block tokens. The hash is not cryptographic: tenants that must not share cache
 * entries pass a cache salt (unknown to the other tenant, it makes engineered collisions
 * impractical), as vLLM recommends.
 */

/** Parent hash of the first block of an unsalted sequence. */
export const PREFIX_ROOT_HASH = 0x1f_3a5c_96e1_7b2d; // an arbitrary 53-bit constant

const TWO_POW_32 = 4294967296;

// MurmurHash3 constants: x86_32 (c1, c2) for lane A, x86_128 lanes 3/4 for lane B.
const C1 = 0xcc9e2d51;
const C2 = 0x1b873593;
const C3 = 0x38b34ae5;
const C4 = 0xa1e38b93;
const SEED_A = 0x9747b28c;
const SEED_B = 0x2f6e2b1d;
// Domain separation: a salt's code units are hashed under other seeds than token blocks.
const SALT_SEED_A = 0x3c6ef372;
const SALT_SEED_B = 0xa54ff53a;

function mixA(h: number, k: number): number {
  k = Math.imul(k, C1);
  k = (k << 15) | (k >>> 17);
  k = Math.imul(k, C2);
  h ^= k;
  h = (h << 13) | (h >>> 19);
  return (Math.imul(h, 5) + 0xe6546b64) | 0;
}

function mixB(h: number, k: number): number {
  k = Math.imul(k, C3);
  k = (k << 17) | (k >>> 15);
  k = Math.imul(k, C4);
  h ^= k;
  h = (h << 15) | (h >>> 17);
  return (Math.imul(h, 5) + 0x38495ab5) | 0;
}

function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h;
}

/** Two finished lanes -> a 53-bit integer (21 bits of a, 32 of b). */
function finish(a: number, b: number, len: number): number {
  a ^= len;
  b ^= len;
  a = (a + b) | 0;
  b = (b + a) | 0;
  a = fmix32(a);
  b = fmix32(b);
  a = (a + b) | 0;
  b = (b + a) | 0;
  return (a >>> 11) * TWO_POW_32 + (b >>> 0);
}

/**
 * The hash of one full block: its parent's hash (a 53-bit integer) and tokens[start, start+count)
 * as Int32 ids. Allocates nothing.
 */
export function hashBlock(parent: number, tokens: ArrayLike<number>, start: number, count: number): number {
  const lo = parent >>> 0; // ToUint32: parent mod 2^32, exact for integers
  const hi = Math.floor(parent / TWO_POW_32) | 0;
  let a = mixA(mixA(SEED_A, lo), hi);
  let b = mixB(mixB(SEED_B, hi), lo);
  const end = start + count;
  for (let i = start; i < end; i++) {
    const t = tokens[i]! | 0;
    a = mixA(a, t);
    b = mixB(b, t);
  }
  return finish(a, b, count);
}

/**
 * The parent hash of block 0: PREFIX_ROOT_HASH for no salt, else a hash of the salt's UTF-16 code
 * units under seeds of their own (so no salt collides with the unsalted root by construction of
 * the inputs, only by chance). '' is a salt, distinct from null.
 */
export function rootHash(salt: string | null): number {
  if (salt === null) return PREFIX_ROOT_HASH;
  let a = SALT_SEED_A;
  let b = SALT_SEED_B;
  for (let i = 0; i < salt.length; i++) {
    const c = salt.charCodeAt(i);
    a = mixA(a, c);
    b = mixB(b, c);
  }
  return finish(a, b, salt.length ^ 0x5a17);
}

/**
 * Hashes of the full blocks 0..numBlocks-1 of tokens: Float64Array [numBlocks].
 * `known` (an earlier result for a prefix of the same tokens and salt) is reused, not recomputed.
 */
export function chainHashes(tokens: ArrayLike<number>, numBlocks: number, blockSize: number, salt: string | null, known?: Float64Array): Float64Array {
  const out = new Float64Array(numBlocks);
  let first = 0;
  if (known !== undefined) {
    first = Math.min(known.length, numBlocks);
    out.set(known.subarray(0, first));
  }
  let parent = first > 0 ? out[first - 1]! : rootHash(salt);
  for (let i = first; i < numBlocks; i++) {
    parent = hashBlock(parent, tokens, i * blockSize, blockSize);
    out[i] = parent;
  }
  return out;
}

/** A hash as 14 lowercase hex digits (53 bits), the form used in Redis keys. */
export function hashHex(hash: number): string {
  return hash.toString(16).padStart(14, '0');
}

/**
 * Engine sizing and its defaults, in a module with no imports: the HTTP edge and the CLI read the
 * defaults on the main thread without loading the model runtime (onnxruntime-node) there.
 */
/**
 * How big the engine is: context, KV pool, batch. Shared by LoadOptions and the engine thread's
 * init message. Every default is written once, in DEFAULT_ENGINE_SIZING; `moeserve serve` flags
 * and their help read it from there.
 */
export interface EngineSizing {
  /** Longest prompt + output served, tokens. @defaultValue min(max_position_embeddings, DEFAULT_ENGINE_SIZING.maxModelLenCap = 4096) */
  readonly maxModelLen?: number;
  /** KV-cache storage over all layers, bytes. @defaultValue DEFAULT_ENGINE_SIZING.kvCacheBytes (1 GiB) */
  readonly kvCacheBytes?: number;
  /** Tokens per KV block. @defaultValue DEFAULT_ENGINE_SIZING.blockSize (16) */
  readonly blockSize?: number;
  /** Sequences decoding at once. @defaultValue DEFAULT_ENGINE_SIZING.maxNumSeqs (64) */
  readonly maxNumSeqs?: number;
  /** Tokens per engine step (decodes + prefill chunks). @defaultValue DEFAULT_ENGINE_SIZING.maxBatchedTokens (512) */
  readonly maxBatchedTokens?: number;
  /** Reuse KV blocks of identical prefixes. @defaultValue DEFAULT_ENGINE_SIZING.prefixCaching (true) */
  readonly prefixCaching?: boolean;
  /**
   * Memory that keeps the decoding sequences' past between steps, so a step copies one new row a
   * sequence out of the KV cache instead of all of them (engine/decode-past.ts), bytes; 0 = copy
   * every row every step. @defaultValue DEFAULT_ENGINE_SIZING.decodePastBytes (512 MiB)
   */
  readonly decodePastBytes?: number;
}

export const DEFAULT_ENGINE_SIZING = Object.freeze({
  /** maxModelLen is the model's max_position_embeddings, capped at this. */
  maxModelLenCap: 4096,
  kvCacheBytes: 2 ** 30,
  blockSize: 16,
  maxNumSeqs: 64,
  maxBatchedTokens: 512,
  prefixCaching: true,
  decodePastBytes: 2 ** 29,
});

/**
 * KV-cache layouts: what one token of one layer stores in the cache, and its exact size.
 *
 * `MoeModelConfig.attention` (model/, 'gqa' | 'mla') -> `KvLayout` (this file; small frozen spec)
 * -> `BlockPool` sizing and capacity (pool.ts) -> rows written and gathered by the attention path
 * (manager.ts) -> bytes reported to admission and /metrics. Nothing downstream branches on model
 * names, only on `layout.kind`.
 *
 * Row format (the attention graphs depend on it; keep it exactly): each token of each layer is ONE
 * contiguous row of `elementsPerToken` float32 values.
 *   GQA row = [K: numKvHeads·headDim (head-major) | V: numKvHeads·vHeadDim (head-major)]
 *             K of kv head h at h·headDim, V of kv head h at vOffset + h·vHeadDim.
 *   MLA row = [c_kv: kvLoraRank | k_pe: qkRopeHeadDim]
 *             the compressed latent (after kv_a_layernorm) and the shared rotary key (after RoPE);
 *             per-head keys and values are rebuilt from c_kv (or the up-projections absorbed) at
 *             attention time, so nothing per head is stored.
 *
 * Blocks store their rows segment-major (`segments`): a row is cut into fixed element ranges, and
 * a block of B tokens holds segment s as [B, length_s] contiguous at element B·offset_s of the
 * block. GQA has one segment per K head, then one per V head (head-major blocks: one head's keys of
 * a block are contiguous, so attention gathers K and V head-major in whole-block runs); MLA has one
 * segment, the whole row (row-major). Rows in and out of the manager keep the row format above.
 *
 * Sizes (b = dtypeBytes), per token per layer, as in DESIGN.md "KV layouts":
 *   GQA: 2 · numKvHeads · headDim · b        MLA: (kvLoraRank + qkRopeHeadDim) · b
 */
import { ServerError } from '../../common/src/errors.js';
import type { MoeModelConfig } from '../../model/src/config.js';

/** Bytes per stored element: the pool stores float32 today. */
export const KV_FLOAT32_BYTES = 4;

/** One fixed element range [offset, offset + length) of a row; see "Blocks" above. */
export interface KvSegment {
  readonly offset: number;
  readonly length: number;
}

interface KvLayoutSizes {
  readonly numLayers: number;
  /** How a block stores its rows: segment-major, segments in row order, covering the row. */
  readonly segments: readonly KvSegment[];
  /** Bytes per stored element. @defaultValue 4 (float32 storage) */
  readonly dtypeBytes: number;
  /** Elements of one token's row in one layer. */
  readonly elementsPerToken: number;
  /** elementsPerToken · dtypeBytes. */
  readonly bytesPerTokenPerLayer: number;
  /** bytesPerTokenPerLayer · numLayers: one token across every layer. */
  readonly bytesPerToken: number;
  /** Bytes of one block of `blockSize` tokens in ONE layer: blockSize · bytesPerTokenPerLayer. */
  pageSizeBytes(blockSize: number): number;
}

/** Grouped-query attention cache: K and V for every KV head (MHA when numKvHeads = numHeads). */
export interface GqaLayout extends KvLayoutSizes {
  readonly kind: 'gqa';
  readonly numKvHeads: number;
  /** Per-head dimension of K. */
  readonly headDim: number;
  /**
   * Per-head dimension of V. Equal to headDim for every GQA model; differs only in
   * `mhaEquivalentLayout` of an MLA model (K head = qkNope + qkRope, V head = vHeadDim).
   */
  readonly vHeadDim: number;
  /** Element offset of V in a row: numKvHeads · headDim. */
  readonly vOffset: number;
}

/** DeepSeek MLA cache: only the latent c_kv and the shared rotary key k_pe. */
export interface MlaLayout extends KvLayoutSizes {
  readonly kind: 'mla';
  readonly kvLoraRank: number;
  readonly qkRopeHeadDim: number;
  /** Element offset of k_pe in a row: kvLoraRank. */
  readonly kPeOffset: number;
}

export type KvLayout = GqaLayout | MlaLayout;

export interface GqaLayoutSpec {
  readonly numLayers: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  /** @defaultValue headDim */
  readonly vHeadDim?: number;
  /** @defaultValue 4 */
  readonly dtypeBytes?: number;
}

export interface MlaLayoutSpec {
  readonly numLayers: number;
  readonly kvLoraRank: number;
  readonly qkRopeHeadDim: number;
  /** @defaultValue 4 */
  readonly dtypeBytes?: number;
}

function positiveInt(name: string, v: number): number {
  if (!Number.isSafeInteger(v) || v <= 0) throw new ServerError('invalid_request', `KV layout: ${name} must be a positive integer, got ${v}`);
  return v;
}

function sizes(numLayers: number, elementsPerToken: number, dtypeBytes: number, segments: readonly KvSegment[] = [{ offset: 0, length: elementsPerToken }]): KvLayoutSizes {
  const bytesPerTokenPerLayer = elementsPerToken * dtypeBytes;
  return {
    numLayers,
    segments: Object.freeze(segments.map((x) => Object.freeze({ ...x }))),
    dtypeBytes,
    elementsPerToken,
    bytesPerTokenPerLayer,
    bytesPerToken: bytesPerTokenPerLayer * numLayers,
    pageSizeBytes(blockSize: number): number {
      return positiveInt('blockSize', blockSize) * bytesPerTokenPerLayer;
    },
  };
}

export function gqaLayout(spec: GqaLayoutSpec): GqaLayout {
  const numLayers = positiveInt('numLayers', spec.numLayers);
  const numKvHeads = positiveInt('numKvHeads', spec.numKvHeads);
  const headDim = positiveInt('headDim', spec.headDim);
  const vHeadDim = positiveInt('vHeadDim', spec.vHeadDim ?? headDim);
  const dtypeBytes = positiveInt('dtypeBytes', spec.dtypeBytes ?? KV_FLOAT32_BYTES);
  // [K: numKvHeads·headDim | V: numKvHeads·vHeadDim]; = 2·numKvHeads·headDim when vHeadDim = headDim.
  const elementsPerToken = numKvHeads * (headDim + vHeadDim);
  const segments: KvSegment[] = [];
  for (let h = 0; h < numKvHeads; h++) segments.push({ offset: h * headDim, length: headDim });
  for (let h = 0; h < numKvHeads; h++) segments.push({ offset: numKvHeads * headDim + h * vHeadDim, length: vHeadDim });
  return Object.freeze({
    kind: 'gqa',
    ...sizes(numLayers, elementsPerToken, dtypeBytes, segments),
    numKvHeads,
    headDim,
    vHeadDim,
    vOffset: numKvHeads * headDim,
  });
}

export function mlaLayout(spec: MlaLayoutSpec): MlaLayout {
  const numLayers = positiveInt('numLayers', spec.numLayers);
  const kvLoraRank = positiveInt('kvLoraRank', spec.kvLoraRank);
  const qkRopeHeadDim = positiveInt('qkRopeHeadDim', spec.qkRopeHeadDim);
  const dtypeBytes = positiveInt('dtypeBytes', spec.dtypeBytes ?? KV_FLOAT32_BYTES);
  return Object.freeze({
    kind: 'mla',
    ...sizes(numLayers, kvLoraRank + qkRopeHeadDim, dtypeBytes),
    kvLoraRank,
    qkRopeHeadDim,
    kPeOffset: kvLoraRank,
  });
}

/** The layout the model's attention needs: GQA K/V per KV head, or the MLA latent. */
export function kvLayoutFor(cfg: MoeModelConfig, dtypeBytes: number = KV_FLOAT32_BYTES): KvLayout {
  const a = cfg.attention;
  switch (a.kind) {
    case 'gqa':
      return gqaLayout({ numLayers: cfg.numLayers, numKvHeads: a.numKvHeads, headDim: a.headDim, dtypeBytes });
    case 'mla':
      return mlaLayout({ numLayers: cfg.numLayers, kvLoraRank: a.kvLoraRank, qkRopeHeadDim: a.qkRopeHeadDim, dtypeBytes });
  }
}

/**
 * For benchmarks: the cache the same model would need with keys and values stored expanded per
 * attention head (plain MHA), as a 'gqa' layout with numKvHeads = numHeads.
 *   GQA model: 2 · numHeads · headDim elements per token per layer.
 *   MLA model: K per head is qkNopeHeadDim + qkRopeHeadDim dims (the rebuilt nope part plus the
 *     broadcast rotary key), V per head is vHeadDim dims, so
 *     elements = numHeads·(qkNope + qkRope) + numHeads·vHeadDim  (headDim = qkNope + qkRope,
 *     vHeadDim = vHeadDim in the returned spec).
 */
export function mhaEquivalentLayout(cfg: MoeModelConfig, dtypeBytes: number = KV_FLOAT32_BYTES): GqaLayout {
  const a = cfg.attention;
  switch (a.kind) {
    case 'gqa':
      return gqaLayout({ numLayers: cfg.numLayers, numKvHeads: a.numHeads, headDim: a.headDim, dtypeBytes });
    case 'mla':
      return gqaLayout({
        numLayers: cfg.numLayers,
        numKvHeads: a.numHeads,
        headDim: a.qkNopeHeadDim + a.qkRopeHeadDim,
        vHeadDim: a.vHeadDim,
        dtypeBytes,
      });
  }
}

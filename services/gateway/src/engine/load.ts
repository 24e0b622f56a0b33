/**
 * Loading a model directory into runnable parts: config -> checkpoint (lazy reader, validated
 * against the weight manifest) -> dense runner (gateway units) + routed experts (in-process shard
 * or the router's workers) + KV-cache manager + engine.
 */
import { openModelDir, type ModelDir } from '../../../model/src/model-dir.js';
import type { MlaImpl } from '../../../model/src/graphs/attention.js';
import { DEFAULT_RUNTIME, type RuntimeOptions } from '../../../model/src/runtime/onnx.js';
import { KvCacheManager } from '../../../kvcache/src/manager.js';
import { inProcessTopology, type Topology } from '../../../../router/src/topology.js';
import type { RoutedExperts } from '../../../../router/src/types.js';
import { DenseRunner } from './dense-runner.js';
import { Engine } from './engine.js';
import { DEFAULT_ENGINE_SIZING, type EngineSizing } from './sizing.js';

export interface LoadOptions extends EngineSizing {
  readonly runtime: RuntimeOptions;
  readonly mlaImpl: MlaImpl;
  /** Routed experts elsewhere (the router's workers); default: an in-process shard of all experts. */
  readonly experts?: RoutedExperts;
}

export interface LoadedModel extends ModelDir {
  readonly runner: DenseRunner;
  readonly experts: RoutedExperts;
  /** The in-process experts' topology (its stats count the routed rows); null when `opts.experts` came from the caller. */
  readonly topology: Topology | null;
  readonly kv: KvCacheManager;
  readonly engine: Engine;
  readonly maxModelLen: number;
}

export const DEFAULT_LOAD: LoadOptions = Object.freeze({ runtime: DEFAULT_RUNTIME, mlaImpl: 'auto' });

export async function loadModel(dir: string, opts: LoadOptions = DEFAULT_LOAD): Promise<LoadedModel> {
  const md = openModelDir(dir);
  const { cfg, checkpoint } = md;
  const d = DEFAULT_ENGINE_SIZING;
  const maxModelLen = Math.min(opts.maxModelLen ?? d.maxModelLenCap, cfg.maxPositionEmbeddings);
  // The process's ORT pool spins only where it runs every unit of a step: waiting on workers, it
  // would hold the cores they need (runtime/onnx.ts).
  const runtime: RuntimeOptions = { ...opts.runtime, poolSpinning: opts.runtime.poolSpinning ?? (!opts.experts || opts.experts.inProcess === true) };
  const runner = await DenseRunner.load(cfg, checkpoint, { runtime, mlaImpl: opts.mlaImpl, maxPositions: maxModelLen, decodePastBytes: opts.decodePastBytes ?? d.decodePastBytes });
  const topology = opts.experts ? null : await inProcessTopology(cfg, checkpoint, runtime);
  const experts = opts.experts ?? topology!.experts;
  const kv = KvCacheManager.forModel(cfg, { blockSize: opts.blockSize ?? d.blockSize, budgetBytes: opts.kvCacheBytes ?? d.kvCacheBytes });
  const engine = new Engine(cfg, runner, experts, kv, {
    maxNumSeqs: opts.maxNumSeqs ?? d.maxNumSeqs,
    maxBatchedTokens: opts.maxBatchedTokens ?? d.maxBatchedTokens,
    maxModelLen,
    prefixCaching: opts.prefixCaching ?? d.prefixCaching,
  });
  return { ...md, runner, experts, topology, kv, engine, maxModelLen };
}

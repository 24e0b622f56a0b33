/**
 * Messages between the gateway's main thread (HTTP, tokenizer, streaming) and the engine thread
 * (ONNX Runtime, KV cache, router). onnxruntime-node's run() blocks the thread that calls it
 * (onnxruntime#19611), so model compute lives on its own thread and the main event loop only
 * moves ids, logprobs and events.
 *
 * main -> engine: init (model dir + load options), add (a request, keyed by the host's id),
 *                 abort (host id), stats, rebalance (POST /admin/rebalance; answered by
 *                 rebalanced with the same id), shutdown
 * One id per request: the host's id is the engine's sequence id (Engine.add(request, id)), so
 * events need no translation; the KV manager's sequence handle is the engine's own (a preempted
 * sequence gets a fresh one).
 *
 * engine -> main: ready (model facts), events (the step's StepEvents as the engine made them, with the
 *                 engine's running / waiting counts after the step), rejected (an add that failed
 *                 validation), stats, log (topology messages for the main thread's logger), fatal
 */
import type { ErrorCode } from '../../../common/src/errors.js';
import type { MoeModelConfig } from '../../../model/src/config.js';
import type { MlaImpl } from '../../../model/src/graphs/attention.js';
import type { Quantization } from '../../../model/src/graphs/linear.js';
import type { KvStats } from '../../../kvcache/src/manager.js';
import type { ExpertsStatus, TopologyOptions } from '../../../../router/src/topology.js';
import type { RebalanceReport, RebalanceStatus } from '../../../../router/src/rebalance.js';
import type { EngineRequest, StepEvent } from './engine.js';
import type { EngineSizing } from './sizing.js';

/**
 * Where the routed experts run, as plain data (what survives postMessage): the router's
 * TopologyOptions less the model dir, runtime and logger, which the engine thread supplies.
 */
export type SerializedTopology = Omit<TopologyOptions, 'modelDir' | 'runtime' | 'log'>;

export interface SerializedLoadOptions extends EngineSizing {
  readonly device: 'cpu' | 'cuda';
  readonly deviceId: number;
  readonly intraOpThreads: number;
  /** Weight format (RuntimeOptions.quantization). @defaultValue 'none' */
  readonly quantization?: Quantization;
  readonly mlaImpl: MlaImpl;
  /** Expert workers (router/ topology, started by the engine thread); absent or null = in-process experts. */
  readonly experts?: SerializedTopology | null;
  /** The shared KV tier in Redis (services/kvcache/src/redis-tier.ts); absent or null = off. */
  readonly kvRedis?: { readonly url: string; readonly ttlMs?: number; readonly maxBytes?: number } | null;
}

export type ToEngine =
  | { type: 'init'; modelDir: string; options: SerializedLoadOptions }
  | { type: 'add'; id: number; request: EngineRequest }
  | { type: 'abort'; id: number }
  | { type: 'stats' }
  | { type: 'rebalance'; id: number }
  | { type: 'shutdown' };

/**
 * Routed load per MoE layer since start, for /metrics (rows per expert, rows per worker,
 * balancedness). Letters: M MoE layers, X routed experts, W workers.
 */
export interface RoutingLoadSnapshot {
  /** 'in-process' (one worker named "local"), or the router's 'local' / 'remote' workers. */
  readonly topology: 'in-process' | 'local' | 'remote';
  /** The model's MoE layer indices, ascending: [M]. */
  readonly layers: readonly number[];
  /** Cumulative (token, expert) pairs: [M][X]. */
  readonly expertRows: readonly (readonly number[])[];
  /** Worker names: ["local"] in-process, else w0, w1, ... */
  readonly workers: readonly string[];
  /**
   * Cumulative token rows sent to each worker (messages): [M][W]. A token row goes to each worker
   * holding at least one of its experts; in-process every row goes to "local".
   */
  readonly workerRows: readonly (readonly number[])[];
  /** Cumulative (token, expert) rows each worker computed (its load): [M][W]. */
  readonly workerLoad: readonly (readonly number[])[];
  /** The sliding window (RoutingStats.windowCalls steps): (token, expert) rows per expert [M][X] and per worker [M][W]. */
  readonly windowExpertRows: readonly (readonly number[])[];
  readonly windowWorkerLoad: readonly (readonly number[])[];
  /** Replicas per expert in the current placement: [M][X] (all 1 in-process). */
  readonly replicas: readonly (readonly number[])[];
  /** Live rebalancing (null in-process). */
  readonly rebalance: RebalanceStatus | null;
}

export interface EngineStatsSnapshot {
  readonly running: number;
  readonly waiting: number;
  readonly preemptions: number;
  readonly kv: KvStats;
  /** Bytes holding the decode group's past between steps (bounded by --decode-past-bytes). */
  readonly decodePastBytes: number;
  /** Step counters since start. */
  readonly steps: number;
  readonly stepSeconds: number;
  readonly routing: RoutingLoadSnapshot;
  /** Expert workers up or down, experts without a live worker; null in-process. */
  readonly experts: ExpertsStatus | null;
}

export type FromEngine =
  | { type: 'ready'; cfg: MoeModelConfig; maxModelLen: number; maxNumSeqs: number; kv: KvStats; topology: string; experts: ExpertsStatus | null }
  | { type: 'experts'; status: ExpertsStatus }
  | { type: 'events'; events: readonly StepEvent[]; running: number; waiting: number }
  | { type: 'rejected'; id: number; code: ErrorCode; message: string; param?: string }
  | { type: 'stats'; stats: EngineStatsSnapshot }
  | { type: 'rebalanced'; id: number; report: RebalanceReport | null; code?: ErrorCode; message?: string }
  | { type: 'log'; level: 'info' | 'warn' | 'error'; message: string }
  | { type: 'fatal'; message: string; code?: ErrorCode };

/**
 * Messages between the gateway's main thread (HTTP, tokenizer, streaming) and the engine thread
 * (ONNX Runtime, KV cache, router). onnxruntime-node's run() blocks the thread that calls it
 * (onnxruntime#19611), so model compute lives on its own thread and the main event loop only
 * moves ids, logprobs and events.
 *
 * main -> engine: init (model dir + load options), add (a request, keyed by the host's id),
 *                 abort (host id), stats, shutdown
 * engine -> main: ready (model facts), events (one batch per step, keyed by host id),
 *                 rejected (an add that failed validation), stats, fatal
 */
import type { ErrorCode } from '../../../common/src/errors.js';
import type { MoeModelConfig } from '../../../model/src/config.js';
import type { EngineRequest, FinishReason, TokenLogprobs } from './engine.js';

export interface SerializedLoadOptions {
  readonly device: 'cpu' | 'cuda';
  readonly deviceId: number;
  readonly intraOpThreads: number;
  readonly mlaImpl: 'naive' | 'absorbed';
  readonly maxModelLen?: number;
  readonly kvCacheBytes?: number;
  readonly blockSize?: number;
  readonly maxNumSeqs?: number;
  readonly maxBatchedTokens?: number;
  /** Expert topology, interpreted by the engine thread (router/). */
  readonly experts?: unknown;
}

export type ToEngine =
  | { type: 'init'; modelDir: string; options: SerializedLoadOptions }
  | { type: 'add'; id: number; request: EngineRequest }
  | { type: 'abort'; id: number }
  | { type: 'stats' }
  | { type: 'shutdown' };

export interface ThreadEvent {
  /** The host's request id. */
  readonly id: number;
  readonly tokenId: number;
  readonly logprobs: TokenLogprobs | null;
  readonly promptLogprobs: TokenLogprobs[] | null;
  readonly finishReason: FinishReason | null;
  readonly error?: { code: ErrorCode; message: string };
}

export interface EngineStatsSnapshot {
  readonly running: number;
  readonly waiting: number;
  readonly preemptions: number;
  readonly kv: import('../../../kvcache/src/manager.js').KvStats;
  /** Step counters since start. */
  readonly steps: number;
  readonly stepSeconds: number;
}

export type FromEngine =
  | { type: 'ready'; cfg: MoeModelConfig; maxModelLen: number }
  | { type: 'events'; events: ThreadEvent[] }
  | { type: 'rejected'; id: number; code: ErrorCode; message: string; param?: string }
  | { type: 'stats'; stats: EngineStatsSnapshot }
  | { type: 'fatal'; message: string };

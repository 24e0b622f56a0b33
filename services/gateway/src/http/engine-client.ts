/**
 * What the HTTP layer needs of the engine: EngineHost (engine/host.ts) implements it, with the
 * engine on its own thread so that no request handler ever waits on ONNX Runtime.
 */
import type { ServerError } from '../../../common/src/errors.js';
import type { ExpertsStatus } from '../../../../router/src/topology.js';
import type { RebalanceReport } from '../../../../router/src/rebalance.js';
import type { EngineRequest, StepEvent } from '../engine/engine.js';
import type { EngineStatsSnapshot } from '../engine/thread-protocol.js';

export interface EngineClient {
  /** Queues one sequence; events arrive until one carries a finishReason. Returns its id. */
  submit(request: EngineRequest, onEvent: (ev: StepEvent) => void, onReject: (e: ServerError) => void): number;
  /** Ends a sequence now; its KV blocks are freed at once. */
  abort(id: number): void;
  stats(): Promise<EngineStatsSnapshot>;
  /** Live EPLB rebalance of the expert workers; absent where there are none to rebalance. */
  rebalance?(): Promise<RebalanceReport>;
  /** Sequences running as of the engine's last step. */
  readonly numRunning: number;
  /** Sequences submitted and not admitted yet. */
  readonly numQueued: number;
  readonly healthy: boolean;
  /** Expert workers up or down and experts without a live worker, as last reported; null in-process. */
  readonly experts: ExpertsStatus | null;
}

/** Model facts the HTTP layer validates against. */
export interface ModelFacts {
  /** Width of the model's logits: token ids must be below it. */
  readonly vocabSize: number;
  /** Longest prompt + output. */
  readonly maxModelLen: number;
  /** Sequences the engine runs at once. */
  readonly maxNumSeqs: number;
  /** Ids that end generation unless ignore_eos (tokenizer's EOS and generation_config's, and the model config's). */
  readonly eosTokenIds: readonly number[];
  /** Unix seconds the server started (GET /v1/models `created`). */
  readonly created: number;
}

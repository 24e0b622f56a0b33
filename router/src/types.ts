/**
 * Router boundary types.
 *
 * Data flow of one MoE layer of one step (activations only; token ids and KV block ids never
 * leave the gateway):
 *
 *   xNorm float32 [N, H] + router logits [N, X]          (gateway: DenseRunner, attention half)
 *     -> gating.route()  ids int32 [N, A], weights [N, A]  (router/src/gating.ts, pure)
 *     -> planDispatch()  (row, slot) -> worker            (dispatch.ts, pure; placement.ts says
 *                                                          which workers hold each expert)
 *     -> ForwardRequest per worker: its rows, their ids   (dispatch.ts -> client.ts, one gRPC
 *        (-1 where another worker serves the slot),        bidi stream per worker, all workers
 *        weights, as raw LE bytes                          written before the first await)
 *     -> worker: Σ_j w·expert_j(x) per row                (workers/src/server.ts -> shard.ts)
 *     -> ForwardReply [n_w, H]                            (client.ts matches it by request_id)
 *     -> out[N, H] = Σ over workers of their rows          (dispatch.ts combine; the gateway adds
 *                                                          the shared experts it computed while
 *                                                          the requests were in flight)
 *
 * Ownership: the gateway owns xNorm, ids, weights and out (valid for the duration of one
 * forward call); the router owns per-worker scratch reused across calls; a worker owns nothing
 * beyond one request. Counts of rows per expert and per worker are kept in stats.ts.
 */

/**
 * Routed-expert execution for one MoE layer: the one declaration, implemented by the router's
 * topologies (topology.ts: in-process shard, ShardedExperts over gRPC) and called by the gateway's
 * DenseRunner (a type-only import of router/; nothing in router/ imports the gateway).
 *   x        float32 [n, H]  normalized hidden rows
 *   ids      int32   [n, k]  expert ids (-1 = unused slot)
 *   weights  float32 [n, k]  combine weights (renormalised, × routed_scaling_factor)
 *   out      float32 [n, H]  out[r] = Σ_j weights[r, j] · expert_{ids[r, j]}(x[r])
 */
export interface RoutedExperts {
  forward(layer: number, x: Float32Array, numRows: number, ids: Int32Array, weights: Float32Array, k: number, out: Float32Array): Promise<void>;
  /**
   * true when the experts compute on the caller's thread (the in-process shard): nothing can
   * overlap, so the runner awaits them before the shared experts (and the profile attributes time
   * correctly).
   */
  readonly inProcess?: boolean;
}

/** Which workers hold which experts, per MoE layer (placement.ts builds it). */
export interface Placement {
  readonly numWorkers: number;
  readonly numExperts: number;
  /** MoE layer -> expert -> worker indices holding it (replicas), ascending; never empty. */
  readonly layers: ReadonlyMap<number, readonly (readonly number[])[]>;
}

/** How the router talks to workers. Frozen at topology start. */
export interface DispatchOptions {
  /** Deadline of every exchange (request -> reply), ms. @defaultValue 5000 */
  readonly deadlineMs: number;
  /** gRPC message limit on the gateway side, bytes; requests are chunked under min(this, the worker's). @defaultValue 64 MiB */
  readonly maxMessageBytes: number;
  /** Activation dtype on the wire (proto WIRE_DTYPE value). @defaultValue 0 (f32: bit-exact) */
  readonly wireDtype: number;
  /** Reconnect backoff after a worker failure: first delay, ms. @defaultValue 100 */
  readonly reconnectMinMs: number;
  /** Reconnect backoff cap, ms. @defaultValue 1000 */
  readonly reconnectMaxMs: number;
  /** Deadline of Info / Health calls, ms. @defaultValue 2000 */
  readonly controlDeadlineMs: number;
}

export const DEFAULT_DISPATCH: DispatchOptions = Object.freeze({
  deadlineMs: 5000,
  maxMessageBytes: 64 * 2 ** 20,
  wireDtype: 0,
  reconnectMinMs: 100,
  reconnectMaxMs: 1000,
  controlDeadlineMs: 2000,
});

/** A worker's connection state, as the dispatcher sees it. */
export type WorkerState = 'connecting' | 'live' | 'down' | 'closed';

export type LogFn = (msg: string, level: 'info' | 'warn' | 'error') => void;

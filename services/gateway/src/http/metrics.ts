/**
 * /metrics: Prometheus text from prom-client, one Registry per app (several servers can share a
 * process, as the tests do). Names follow vLLM's (`vllm:` -> `moeserve:`), every series carries
 * `model_name` (a registry default label, added at scrape time: observing costs no label hash).
 *
 * Request-path metrics are recorded as tokens arrive (RequestRun -> RunObserver). Engine-derived
 * metrics (running / waiting, KV usage, rows per expert and per worker) are refreshed on each
 * scrape from one EngineClient.stats() snapshot; if the engine does not answer within
 * statsTimeoutMs the scrape serves the last values.
 *
 * The MoE view: for each MoE layer, cumulative (token, expert) rows per expert and per worker (a
 * worker's load: what DeepSeek's EPLB and vLLM balance), token rows per worker (messages: a token
 * goes once to each worker holding any of its experts), and balancedness = mean / max (token,
 * expert) rows per worker (1 = perfectly even; in-process there is one worker, "local"), over
 * all time and over the load window, plus the same ratio over experts. Live rebalancing:
 * rebalances, failures, time to apply, replicas per expert.
 *
 * Expert workers (sharded topologies only): per worker, up (1/0, as of the engine's last report),
 * when it last answered (Unix seconds), and how often the gateway restarted it (local workers).
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { ErrorCode } from '../../../common/src/errors.js';
import type { ExpertsStatus } from '../../../../router/src/topology.js';
import type { EngineStatsSnapshot } from '../engine/thread-protocol.js';
import type { EngineClient } from './engine-client.js';
import type { ChoiceFinish, RunObserver } from './generation.js';

// vLLM's buckets, with finer low ends: a small model on a CPU decodes in a few ms.
const TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640, 2560];
const ITL_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80];
const E2E_BUCKETS = [0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680];

export class ServerMetrics implements RunObserver {
  readonly registry = new Registry();
  private readonly running: Gauge;
  private readonly waiting: Gauge;
  private readonly kvUsage: Gauge;
  private readonly kvBytesPerToken: Gauge;
  private readonly kvBytes: Gauge;
  private readonly kvBlocks: Gauge;
  private readonly decodePast: Gauge;
  private readonly preemptions: Counter;
  private readonly prefixQueries: Counter;
  private readonly prefixHits: Counter;
  private readonly redisQueries: Counter;
  private readonly redisHits: Counter;
  private readonly redisErrors: Counter;
  private readonly promptTokensTotal: Counter;
  private readonly generationTokensTotal: Counter;
  private readonly success: Counter;
  private readonly failure: Counter;
  private readonly ttft: Histogram;
  private readonly itl: Histogram;
  private readonly tpot: Histogram;
  private readonly e2e: Histogram;
  private readonly expertRows: Counter;
  private readonly workerRows: Counter;
  private readonly balancedness: Gauge;
  private readonly expertBalancedness: Gauge;
  private readonly workerUp: Gauge;
  private readonly workerLastSeen: Gauge;
  private readonly workerRestarts: Counter;
  private readonly workerLoad: Counter;
  private readonly windowBalancedness: Gauge;
  private readonly rebalances: Counter;
  private readonly rebalanceFailures: Counter;
  private readonly rebalanceSeconds: Counter;
  private readonly rebalanceLastSeconds: Gauge;
  private readonly replicas: Gauge;
  /** Plain totals for the dashboard (no registry read per poll). */
  generatedTokens = 0;
  ttftSecondsSum = 0;
  ttftCount = 0;

  constructor(
    modelName: string,
    private readonly engine: EngineClient,
    private readonly statsTimeoutMs: number,
    private readonly onStatsError: (msg: string) => void = () => undefined,
  ) {
    const registers = [this.registry];
    this.registry.setDefaultLabels({ model_name: modelName });
    const gauge = (name: string, help: string, labelNames: string[] = []) => new Gauge({ name: `moeserve:${name}`, help, labelNames, registers });
    const counter = (name: string, help: string, labelNames: string[] = []) => new Counter({ name: `moeserve:${name}`, help, labelNames, registers });
    const histogram = (name: string, help: string, buckets: number[]) => new Histogram({ name: `moeserve:${name}`, help, buckets, registers });
    this.running = gauge('num_requests_running', 'Sequences in the running batch (prompts x n).');
    this.waiting = gauge('num_requests_waiting', 'Sequences waiting for a seat or for KV blocks.');
    this.kvUsage = gauge('kv_cache_usage_perc', 'KV-cache usage: used blocks / all blocks (1 = full).');
    this.kvBytesPerToken = gauge('kv_cache_bytes_per_token', 'KV-cache bytes per token over all layers (the layout: GQA K+V or MLA latent).');
    this.kvBytes = gauge('kv_cache_bytes', 'KV-cache bytes, used and total.', ['state']);
    this.decodePast = gauge('decode_past_bytes', "Bytes holding the decoding sequences' past between steps, beside the KV cache (bounded by --decode-past-bytes).");
    this.kvBlocks = gauge('kv_cache_blocks', 'KV-cache blocks: used, cached_free (free but still holding a reusable prefix) and total.', ['state']);
    this.preemptions = counter('num_preemptions_total', 'Sequences preempted (KV blocks freed, recomputed later).');
    this.prefixQueries = counter('prefix_cache_queries_total', 'Prompt tokens looked up in the prefix cache.');
    this.prefixHits = counter('prefix_cache_hits_total', 'Prompt tokens found in the prefix cache (their KV reused, not recomputed).');
    this.redisQueries = counter('kv_redis_queries_total', 'Prompt tokens missing from the pool and looked up in the shared Redis tier.');
    this.redisHits = counter('kv_redis_hits_total', 'Prompt tokens the shared Redis tier returned (installed into the pool, not recomputed).');
    this.redisErrors = counter('kv_redis_errors_total', 'Redis tier commands that failed or timed out (requests then recompute).');
    this.promptTokensTotal = counter('prompt_tokens_total', 'Prompt tokens submitted (per sequence).');
    this.generationTokensTotal = counter('generation_tokens_total', 'Tokens generated.');
    this.success = counter('request_success_total', 'Sequences finished, by finish reason.', ['finished_reason']);
    this.failure = counter('request_failure_total', 'Requests ended by an error, by error code.', ['code']);
    this.ttft = histogram('time_to_first_token_seconds', 'Time from arrival to the first generated token.', TTFT_BUCKETS);
    this.itl = histogram('inter_token_latency_seconds', 'Time between two generated tokens of a sequence.', ITL_BUCKETS);
    this.tpot = histogram('request_time_per_output_token_seconds', 'Per sequence: (e2e - TTFT) / (tokens - 1).', ITL_BUCKETS);
    this.e2e = histogram('e2e_request_latency_seconds', 'Time from arrival to the last token of a sequence.', E2E_BUCKETS);
    this.expertRows = counter('expert_rows_total', 'Routed (token, expert) rows per MoE layer and expert.', ['layer', 'expert']);
    this.workerRows = counter('worker_rows_total', 'Token rows (messages) sent to each expert worker per MoE layer: a token once per worker holding any of its experts ("local" in-process).', ['layer', 'worker']);
    this.workerLoad = counter('worker_expert_rows_total', 'Routed (token, expert) rows each expert worker computed per MoE layer: its load ("local" in-process).', ['layer', 'worker']);
    this.balancedness = gauge('layer_balancedness', 'Per MoE layer: mean / max (token, expert) rows per worker since start (1 = even).', ['layer']);
    this.windowBalancedness = gauge('layer_window_balancedness', 'Per MoE layer: mean / max (token, expert) rows per worker over the load window (since the last rebalance; 1 = even).', ['layer']);
    this.rebalances = counter('rebalances_total', 'Live EPLB rebalances applied.');
    this.rebalanceFailures = counter('rebalance_failures_total', 'Live rebalances that failed (the placement stayed).');
    this.rebalanceSeconds = counter('rebalance_apply_seconds_total', 'Time to apply rebalances (load, switch, free), summed.');
    this.rebalanceLastSeconds = gauge('rebalance_last_apply_seconds', 'Time to apply the last rebalance.');
    this.replicas = gauge('expert_replicas', 'Workers holding each routed expert per MoE layer (the current placement).', ['layer', 'expert']);
    this.expertBalancedness = gauge('layer_expert_balancedness', 'Per MoE layer: mean / max rows per expert (1 = even).', ['layer']);
    this.workerUp = gauge('worker_up', 'Expert worker connected and serving (1) or down (0).', ['worker']);
    this.workerLastSeen = gauge('worker_last_seen_seconds', 'When the expert worker last answered or reconnected, Unix seconds (0 = never).', ['worker']);
    this.workerRestarts = counter('worker_restarts_total', 'Times the gateway restarted this local expert worker after it died.', ['worker']);
  }

  // RunObserver: the request path (cheap: no labels, no allocation).
  promptTokens(n: number): void {
    this.promptTokensTotal.inc(n);
  }
  firstToken(seconds: number): void {
    this.ttft.observe(seconds);
    this.ttftSecondsSum += seconds;
    this.ttftCount++;
  }
  interToken(seconds: number): void {
    this.itl.observe(seconds);
  }
  generationToken(): void {
    this.generationTokensTotal.inc();
    this.generatedTokens++;
  }
  sequenceFinished(reason: ChoiceFinish, e2eSeconds: number, ttftSeconds: number, tokens: number): void {
    this.success.inc({ finished_reason: reason });
    this.e2e.observe(e2eSeconds);
    if (tokens > 1) this.tpot.observe((e2eSeconds - ttftSeconds) / (tokens - 1));
  }
  requestFailed(code: ErrorCode): void {
    this.failure.inc({ code });
  }

  /** The engine's snapshot, or null when it does not answer within statsTimeoutMs (the dashboard's feed). */
  async engineStats(): Promise<EngineStatsSnapshot | null> {
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([this.engine.stats(), new Promise<null>((resolve) => (timer = setTimeout(() => resolve(null), this.statsTimeoutMs)))]);
    } catch {
      return null;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Prometheus text exposition, engine gauges refreshed first. */
  async render(): Promise<string> {
    let timer: NodeJS.Timeout | undefined;
    try {
      const stats = await Promise.race([
        this.engine.stats(),
        new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`no engine stats within ${this.statsTimeoutMs} ms`)), this.statsTimeoutMs))),
      ]);
      this.refresh(stats);
      this.refreshWorkers(stats.experts);
    } catch (err) {
      this.onStatsError((err as Error).message);
      this.running.set(this.engine.numRunning);
      this.waiting.set(this.engine.numQueued);
      this.refreshWorkers(this.engine.experts);
    } finally {
      clearTimeout(timer);
    }
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  private refresh(s: EngineStatsSnapshot): void {
    this.running.set(s.running);
    // The engine's queue plus sequences submitted since its last step.
    this.waiting.set(Math.max(s.waiting, this.engine.numQueued));
    this.kvUsage.set(s.kv.blocksTotal > 0 ? s.kv.blocksUsed / s.kv.blocksTotal : 0);
    this.kvBytesPerToken.set(s.kv.bytesPerToken);
    this.kvBytes.set({ state: 'used' }, s.kv.bytesUsed);
    this.kvBytes.set({ state: 'total' }, s.kv.bytesTotal);
    this.kvBlocks.set({ state: 'used' }, s.kv.blocksUsed);
    this.kvBlocks.set({ state: 'total' }, s.kv.blocksTotal);
    this.kvBlocks.set({ state: 'cached_free' }, s.kv.blocksCachedFree);
    this.decodePast.set(s.decodePastBytes);
    // Counters read from the engine are set to its totals (they only grow).
    for (const [c, v] of [
      [this.preemptions, s.preemptions],
      [this.prefixQueries, s.kv.prefixPoolQueryTokens],
      [this.prefixHits, s.kv.prefixPoolHitTokens],
      [this.redisQueries, s.kv.prefixRedisQueryTokens],
      [this.redisHits, s.kv.prefixRedisHitTokens],
      [this.redisErrors, s.kv.redis?.errors ?? 0],
    ] as const) {
      c.reset();
      c.inc(v);
    }
    const r = s.routing;
    this.expertRows.reset();
    this.workerRows.reset();
    this.workerLoad.reset();
    r.layers.forEach((layer, i) => {
      const l = String(layer);
      const experts = r.expertRows[i]!;
      experts.forEach((v, e) => this.expertRows.inc({ layer: l, expert: String(e) }, v));
      r.workerRows[i]!.forEach((v, w) => this.workerRows.inc({ layer: l, worker: r.workers[w]! }, v));
      const load = r.workerLoad[i]!;
      load.forEach((v, w) => this.workerLoad.inc({ layer: l, worker: r.workers[w]! }, v));
      this.balancedness.set({ layer: l }, balance(load));
      this.windowBalancedness.set({ layer: l }, balance(r.windowWorkerLoad[i]!));
      this.expertBalancedness.set({ layer: l }, balance(experts));
      r.replicas[i]!.forEach((v, e) => this.replicas.set({ layer: l, expert: String(e) }, v));
    });
    const rb = r.rebalance;
    if (rb) {
      for (const [c, v] of [
        [this.rebalances, rb.rebalances],
        [this.rebalanceFailures, rb.failures],
        [this.rebalanceSeconds, rb.applySecondsTotal],
      ] as const) {
        c.reset();
        c.inc(v);
      }
      this.rebalanceLastSeconds.set(rb.lastApplyMs / 1000);
    }
  }

  private refreshWorkers(ex: ExpertsStatus | null): void {
    if (ex === null) return;
    this.workerRestarts.reset(); // set to the topology's totals (they only grow)
    for (const w of ex.workers) {
      this.workerUp.set({ worker: w.name }, w.up ? 1 : 0);
      this.workerLastSeen.set({ worker: w.name }, w.lastSeenMs / 1000);
      this.workerRestarts.inc({ worker: w.name }, w.restarts);
    }
  }
}

/** mean / max; 1 when nothing was routed yet (nothing is uneven). */
export function balance(rows: readonly number[]): number {
  let max = 0;
  let sum = 0;
  for (const v of rows) {
    sum += v;
    if (v > max) max = v;
  }
  return max > 0 ? sum / rows.length / max : 1;
}

/**
 * The engine thread: loads the model (and, with workers, the router's topology), runs
 * Engine.step() in a loop while there is work, and posts each step's events to the main thread.
 * Started by EngineHost (host.ts) through services/common/src/ts-entry.mjs.
 */
import { parentPort } from 'node:worker_threads';
import { toServerError } from '../../../common/src/errors.js';
import { expertsOnWorkers, startTopology, type Topology } from '../../../../router/index.js';
import type { Placement, RoutedExperts } from '../../../../router/src/types.js';
import { moeLayers } from '../../../model/src/config.js';
import type { Engine, StepEvent } from './engine.js';
import { RedisKvTier } from '../../../kvcache/src/redis-tier.js';
import { loadModel, type LoadedModel } from './load.js';
import { readModelConfig } from '../../../model/src/model-dir.js';
import type { FromEngine, RoutingLoadSnapshot, SerializedLoadOptions, ToEngine } from './thread-protocol.js';

const port = parentPort;
if (!port) throw new Error('engine-thread must run in a worker thread');

let model: LoadedModel | null = null;
let engine: Engine | null = null;
let topology: Topology | null = null;
let tier: RedisKvTier | null = null;
/** Host ids whose prompt is being looked up in the Redis tier (not yet in the engine). */
const prefetching = new Set<number>();
let looping = false;
/** A step is in flight (its forward awaits ONNX Runtime); aborts wait for its end. */
let stepping = false;
/** Ids aborted while a step was in flight: freed after it, and their events of that step dropped. */
const pendingAborts = new Set<number>();
let steps = 0;
let stepSeconds = 0;
/** Counts last posted to the host (it bounds its waiting queue with them). */
let postedRunning = -1;
let postedWaiting = -1;
const post = (m: FromEngine) => port.postMessage(m);
const NO_EVENTS: readonly StepEvent[] = Object.freeze([]);
const log = (message: string, level: 'info' | 'warn' | 'error') => post({ type: 'log', level, message });
/** The error's code travels with it: a corrupt checkpoint stays checkpoint_invalid on the main thread. */
const fatal = (err: unknown) => {
  const e = toServerError(err);
  post({ type: 'fatal', message: e.message, code: e.code });
};

port.on('message', (msg: ToEngine) => {
  void handle(msg).catch((err) => fatal(err));
});

async function init(modelDir: string, o: SerializedLoadOptions): Promise<void> {
  const runtime = { device: o.device, deviceId: o.deviceId, intraOpThreads: o.intraOpThreads, quantization: o.quantization, log: (msg: string, level: 'info' | 'warn') => log(msg, level) };
  let experts: RoutedExperts | undefined;
  if (o.experts && expertsOnWorkers(o.experts)) {
    topology = await startTopology(readModelConfig(modelDir), { ...o.experts, modelDir, runtime, log });
    experts = topology.experts;
    // Workers going down or coming back reach the host at once (its /health reads the last status).
    const topo = topology;
    topo.onChange = () => {
      const status = topo.status();
      if (status) post({ type: 'experts', status });
    };
    log(topology.description, 'info');
  }
  try {
    const { maxModelLen, kvCacheBytes, blockSize, maxNumSeqs, maxBatchedTokens, prefixCaching, decodePastBytes } = o;
    model = await loadModel(modelDir, { runtime, mlaImpl: o.mlaImpl, maxModelLen, kvCacheBytes, blockSize, maxNumSeqs, maxBatchedTokens, prefixCaching, decodePastBytes, experts });
  } catch (err) {
    await topology?.close().catch(() => undefined); // no orphaned workers when the load fails
    throw err;
  }
  engine = model.engine;
  try {
    // A prompt and one more token, no past: MLA's absorbed decode graph is not among them (Engine.warmUp).
    log(`warm-up: a prompt and one decode step ran in ${Math.round(await engine.warmUp())} ms`, 'info');
  } catch (err) {
    // Serving goes on: a unit that cannot run answers each request with its error.
    log(`warm-up failed: ${toServerError(err).message}`, 'warn');
  }
  routingTopology(model)?.stats.reset(); // the warm-up's rows are not traffic
  if (o.kvRedis) {
    tier = new RedisKvTier(model.kv, {
      url: o.kvRedis.url,
      modelId: model.fingerprint,
      ttlMs: o.kvRedis.ttlMs,
      maxBytes: o.kvRedis.maxBytes,
      logger: { warn: (_obj, msg) => log(`kv-redis: ${msg}`, 'warn'), info: (_obj, msg) => log(`kv-redis: ${msg}`, 'info') },
    });
    log(`kv-redis: shared KV tier at ${o.kvRedis.url} (fingerprint ${tier.fingerprint})`, 'info');
  }
  post({ type: 'ready', cfg: model.cfg, maxModelLen: model.maxModelLen, maxNumSeqs: model.engine.opts.maxNumSeqs, kv: model.kv.stats(), topology: topology?.description ?? 'experts in-process', experts: topology?.status() ?? null });
}

async function handle(msg: ToEngine): Promise<void> {
  switch (msg.type) {
    case 'init':
      await init(msg.modelDir, msg.options);
      return;
    case 'add': {
      if (!engine) throw new Error('engine not initialized');
      const r = msg.request;
      if (tier && r.promptLogprobs === null && !r.captureLastPromptLogits) {
        // A prefix missing from the pool is looked up in the shared tier first (bounded wait;
        // a Redis that is down or slow yields no hit, never an error). The request joins the
        // engine afterwards, unless it was aborted meanwhile.
        prefetching.add(msg.id);
        await tier.prefetch(r.promptIds, r.promptIds.length, r.cacheSalt ?? null);
        if (!prefetching.delete(msg.id)) return;
      }
      try {
        engine.add(msg.request, msg.id); // one id per request: the host's
      } catch (err) {
        const e = toServerError(err);
        post({ type: 'rejected', id: msg.id, code: e.code, message: e.message, param: e.param });
        return;
      }
      kick();
      return;
    }
    case 'abort': {
      if (prefetching.delete(msg.id)) return; // still in the tier lookup: it never joins
      if (!engine) return;
      // Messages are handled while a step awaits ONNX Runtime: freeing the sequence's KV blocks
      // then would pull them from under the step. Between steps, it is freed at once.
      if (stepping) pendingAborts.add(msg.id);
      else if (engine.abort(msg.id)) postCounts(NO_EVENTS);
      return;
    }
    case 'stats': {
      if (!engine || !model) return;
      post({ type: 'stats', stats: { running: engine.numRunning, waiting: engine.numWaiting, preemptions: engine.preemptions, kv: model.kv.stats(), decodePastBytes: model.runner.stagedPastBytes, steps, stepSeconds, routing: routingSnapshot(model), experts: topology?.status() ?? null } });
      return;
    }
    case 'rebalance': {
      const r = topology?.rebalancer;
      if (!r) {
        post({ type: 'rebalanced', id: msg.id, report: null, code: 'invalid_request', message: 'rebalancing needs expert workers (--workers N or --worker-addrs)' });
        return;
      }
      // Runs alongside the step loop: workers load in the background, the switch waits for a step boundary.
      r.rebalance('manual').then(
        (report) => post({ type: 'rebalanced', id: msg.id, report }),
        (err) => {
          const e = toServerError(err);
          post({ type: 'rebalanced', id: msg.id, report: null, code: e.code, message: e.message });
        },
      );
      return;
    }
    case 'shutdown':
      await tier?.close().catch(() => undefined);
      await topology?.close().catch(() => undefined);
      model?.checkpoint.close();
      process.exit(0);
  }
}

/** The topology whose stats count the routed rows: the workers', else the in-process one. */
function routingTopology(m: LoadedModel): Topology | null {
  return topology ?? m.topology;
}

/** Rows per expert and per worker, as the router's stats counted them (every topology). */
function routingSnapshot(m: LoadedModel): RoutingLoadSnapshot {
  const topo = routingTopology(m)!;
  const X = m.cfg.moe.nRoutedExperts;
  const W = topo.stats.numWorkers;
  const layers = moeLayers(m.cfg);
  const perExpert = topo.stats.totalPerExpert;
  const perWorker = topo.stats.totalPerLayerWorker;
  const s = topo.stats;
  const placement = topo.kind === 'in-process' ? null : (topo.experts as { placement?: Placement }).placement ?? topo.placement;
  const perLayer = (a: Float64Array, n: number) => layers.map((l) => Array.from(a.subarray(l * n, (l + 1) * n)));
  return {
    topology: topo.kind,
    layers,
    expertRows: layers.map((l) => Array.from(perExpert.subarray(l * X, (l + 1) * X))),
    workers: topo.kind === 'in-process' ? ['local'] : topo.workers.map((w) => `w${w.index}`),
    workerRows: layers.map((l) => Array.from(perWorker.subarray(l * W, (l + 1) * W))),
    workerLoad: perLayer(s.totalLoadPerLayerWorker, W),
    windowExpertRows: perLayer(s.windowPerExpert, X),
    windowWorkerLoad: perLayer(s.windowLoadPerWorker, W),
    replicas: layers.map((l) => placement?.layers.get(l)?.map((h) => h.length) ?? new Array<number>(X).fill(1)),
    rebalance: topo.rebalancer?.status() ?? null,
  };
}

/** Posts the step's events, and the engine's counts whenever they changed (the host's queue bound). */
function postCounts(events: readonly StepEvent[]): void {
  if (!engine) return;
  const running = engine.numRunning;
  const waiting = engine.numWaiting;
  if (events.length === 0 && running === postedRunning && waiting === postedWaiting) return;
  postedRunning = running;
  postedWaiting = waiting;
  post({ type: 'events', events, running, waiting });
}

/** Runs steps until the engine is idle; new messages are handled between steps. */
function kick(): void {
  if (looping) return;
  looping = true;
  setImmediate(loop);
}

async function loop(): Promise<void> {
  try {
    while (engine && engine.hasWork()) {
      const t0 = performance.now();
      stepping = true;
      let events: readonly StepEvent[];
      try {
        events = await engine.step();
      } finally {
        stepping = false;
      }
      stepSeconds += (performance.now() - t0) / 1000;
      steps++;
      for (const id of pendingAborts) engine.abort(id);
      // The step's events go out as the engine made them, less prefill chunks (nothing to report)
      // and sequences aborted meanwhile.
      const out = events.filter((ev) => (ev.tokenId >= 0 || ev.finishReason !== null) && !pendingAborts.has(ev.seqId));
      pendingAborts.clear();
      postCounts(out);
      // Let queued messages (adds, aborts) in before the next step.
      await new Promise<void>((r) => setImmediate(r));
    }
  } catch (err) {
    fatal(err);
  } finally {
    looping = false;
  }
}

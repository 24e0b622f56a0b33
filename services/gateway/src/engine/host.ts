/**
 * EngineHost: the main thread's handle on the engine thread. Requests go in with a host id;
 * each step's events come back and are delivered to the request's listener. Nothing here runs
 * model code, so the main event loop (HTTP, SSE) never blocks on ONNX Runtime.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { ServerError } from '../../../common/src/errors.js';
import type { KvStats } from '../../../kvcache/src/manager.js';
import type { MoeModelConfig } from '../../../model/src/config.js';
import type { ExpertsStatus } from '../../../../router/src/topology.js';
import type { RebalanceReport } from '../../../../router/src/rebalance.js';
import type { EngineStatsSnapshot, FromEngine, SerializedLoadOptions, ToEngine } from './thread-protocol.js';
import type { EngineRequest, StepEvent } from './engine.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const TS_ENTRY = path.resolve(HERE, '../../../common/src/ts-entry.mjs');
const THREAD_MAIN = path.resolve(HERE, 'engine-thread.ts');
/** How long close() lets the thread stop its workers before terminating it, ms. */
const SHUTDOWN_GRACE_MS = 5000;

export type EventListener = (ev: StepEvent) => void;

export interface HostHooks {
  /** The engine thread died or a step failed; every in-flight request already got an error event. */
  readonly onFatal?: (msg: string) => void;
  /** Messages of the engine thread (expert topology, execution provider) for the main logger. */
  readonly onLog?: (msg: string, level: 'info' | 'warn' | 'error') => void;
}

type Ready = Extract<FromEngine, { type: 'ready' }>;

export class EngineHost {
  private nextId = 1;
  private readonly listeners = new Map<number, { onEvent: EventListener; onReject: (e: ServerError) => void }>();
  private nextRebalanceId = 1;
  private readonly rebalanceWaiters = new Map<number, { resolve: (r: RebalanceReport) => void; reject: (e: ServerError) => void }>();
  private statsWaiters: { resolve: (s: EngineStatsSnapshot) => void; reject: (e: ServerError) => void }[] = [];
  private closed = false;
  private dead: string | null = null;
  /** The engine's running count after its last step (see `numQueued`). */
  private running = 0;
  readonly cfg: MoeModelConfig;
  readonly maxModelLen: number;
  /** Sequences the engine runs at once. */
  readonly maxNumSeqs: number;
  /** The KV pool as loaded (capacity, bytes per token). */
  readonly kvAtStart: KvStats;
  /** Where the routed experts run, in one line. */
  readonly topology: string;
  /** The expert workers' status as last reported by the engine thread (null in-process). */
  experts: ExpertsStatus | null;

  private constructor(
    private readonly worker: Worker,
    ready: Ready,
    private readonly hooks: HostHooks,
  ) {
    this.cfg = ready.cfg;
    this.maxModelLen = ready.maxModelLen;
    this.maxNumSeqs = ready.maxNumSeqs;
    this.kvAtStart = ready.kv;
    this.topology = ready.topology;
    this.experts = ready.experts;
    worker.on('message', (m: FromEngine) => this.onMessage(m));
    worker.on('error', (err) => this.fail(`engine thread crashed: ${err.message}`));
    worker.on('exit', (code) => {
      if (!this.closed) this.fail(`engine thread exited (code ${code})`);
    });
  }

  static async start(modelDir: string, options: SerializedLoadOptions, hooks: HostHooks = {}): Promise<EngineHost> {
    const worker = new Worker(TS_ENTRY, { workerData: { entry: THREAD_MAIN } });
    let ready: Ready;
    // Only our own listeners are removed afterwards: Worker keeps internal ones
    // ('newListener' hooks that start its message port), which removeAllListeners() would drop.
    let onMsg: (m: FromEngine) => void = () => undefined;
    let onError: (e: Error) => void = () => undefined;
    let onExit: (code: number) => void = () => undefined;
    try {
      ready = await new Promise<Ready>((resolve, reject) => {
        onMsg = (m: FromEngine) => {
          if (m.type === 'ready') resolve(m);
          else if (m.type === 'fatal') reject(new ServerError(m.code ?? 'internal', m.message));
          else if (m.type === 'log') hooks.onLog?.(m.message, m.level);
        };
        onError = reject;
        onExit = (code) => reject(new ServerError('internal', `engine thread exited during load (code ${code})`));
        worker.on('message', onMsg);
        worker.once('error', onError);
        worker.once('exit', onExit);
        worker.postMessage({ type: 'init', modelDir, options } satisfies ToEngine);
      });
    } catch (err) {
      await worker.terminate().catch(() => undefined);
      throw err;
    }
    worker.off('message', onMsg);
    worker.off('error', onError);
    worker.off('exit', onExit);
    return new EngineHost(worker, ready, hooks);
  }

  /** Submits a request; events arrive on onEvent until one carries a finishReason. Returns the host id. */
  submit(request: EngineRequest, onEvent: EventListener, onReject: (e: ServerError) => void): number {
    if (this.closed) throw new ServerError('internal', 'the engine is shut down');
    if (this.dead) throw new ServerError('internal', `the engine is down: ${this.dead}`);
    const id = this.nextId++;
    this.listeners.set(id, { onEvent, onReject });
    this.post({ type: 'add', id, request });
    return id;
  }

  /** Cancels a request; its KV blocks are freed by the engine thread at once. */
  abort(id: number): void {
    if (this.listeners.delete(id)) this.post({ type: 'abort', id });
  }

  /** Asks the engine thread for a snapshot (answered between two steps). */
  stats(): Promise<EngineStatsSnapshot> {
    if (this.dead || this.closed) return Promise.reject(new ServerError('internal', `the engine is down: ${this.dead ?? 'closed'}`));
    return new Promise((resolve, reject) => {
      this.statsWaiters.push({ resolve, reject });
      this.post({ type: 'stats' });
    });
  }

  /** Live EPLB rebalance of the expert workers (POST /admin/rebalance); resolves when applied. */
  rebalance(): Promise<RebalanceReport> {
    if (this.dead || this.closed) return Promise.reject(new ServerError('internal', `the engine is down: ${this.dead ?? 'closed'}`));
    const id = this.nextRebalanceId++;
    return new Promise((resolve, reject) => {
      this.rebalanceWaiters.set(id, { resolve, reject });
      this.post({ type: 'rebalance', id });
    });
  }

  /** Sequences submitted and not finished (running or queued). */
  get inFlight(): number {
    return this.listeners.size;
  }

  /** Sequences the engine is running, as of its last step. */
  get numRunning(): number {
    return Math.min(this.running, this.listeners.size);
  }

  /** Sequences submitted and not admitted by the engine yet (its waiting queue plus adds in transit). */
  get numQueued(): number {
    return this.listeners.size - this.numRunning;
  }

  /** False once the engine thread died or a step failed (GET /health answers 503). */
  get healthy(): boolean {
    return this.dead === null && !this.closed;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const w of this.statsWaiters) w.reject(new ServerError('internal', 'the engine is shut down'));
    this.statsWaiters = [];
    // The thread stops its expert workers, then exits; terminate it if it takes too long.
    const exited = new Promise<void>((resolve) => this.worker.once('exit', () => resolve()));
    this.post({ type: 'shutdown' });
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([exited, new Promise<void>((resolve) => (timer = setTimeout(resolve, SHUTDOWN_GRACE_MS)))]);
    clearTimeout(timer);
    await this.worker.terminate().catch(() => undefined);
  }

  private post(m: ToEngine): void {
    this.worker.postMessage(m);
  }

  private onMessage(m: FromEngine): void {
    switch (m.type) {
      case 'events':
        this.running = m.running;
        for (const ev of m.events) {
          const l = this.listeners.get(ev.seqId);
          if (!l) continue;
          if (ev.finishReason) this.listeners.delete(ev.seqId);
          l.onEvent(ev);
        }
        return;
      case 'rejected': {
        const l = this.listeners.get(m.id);
        this.listeners.delete(m.id);
        l?.onReject(new ServerError(m.code, m.message, { param: m.param }));
        return;
      }
      case 'stats': {
        const waiters = this.statsWaiters;
        this.statsWaiters = [];
        for (const w of waiters) w.resolve(m.stats);
        return;
      }
      case 'rebalanced': {
        const w = this.rebalanceWaiters.get(m.id);
        this.rebalanceWaiters.delete(m.id);
        if (m.report) w?.resolve(m.report);
        else w?.reject(new ServerError(m.code ?? 'internal', m.message ?? 'rebalance failed'));
        return;
      }
      case 'log':
        this.hooks.onLog?.(m.message, m.level);
        return;
      case 'experts':
        this.experts = m.status;
        return;
      case 'fatal':
        this.fail(m.message);
        return;
      case 'ready':
        return;
    }
  }

  private fail(msg: string): void {
    // Every in-flight request ends with an error; a later submit is refused.
    this.dead = msg;
    for (const [id, l] of this.listeners) l.onEvent({ seqId: id, tokenId: -1, logprobs: null, promptLogprobs: null, lastPromptLogits: null, finishReason: 'error', error: { code: 'internal', message: msg } });
    this.listeners.clear();
    for (const w of this.statsWaiters) w.reject(new ServerError('internal', msg));
    this.statsWaiters = [];
    for (const w of this.rebalanceWaiters.values()) w.reject(new ServerError('internal', msg));
    this.rebalanceWaiters.clear();
    this.hooks.onFatal?.(msg);
  }
}

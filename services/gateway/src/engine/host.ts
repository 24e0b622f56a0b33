/**
 * EngineHost: the main thread's handle on the engine thread. Requests go in with a host id;
 * each step's events come back and are delivered to the request's listener. Nothing here runs
 * model code, so the main event loop (HTTP, SSE) never blocks on ONNX Runtime.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { ServerError } from '../../../common/src/errors.js';
import type { MoeModelConfig } from '../../../model/src/config.js';
import type { EngineRequest } from './engine.js';
import type { EngineStatsSnapshot, FromEngine, SerializedLoadOptions, ThreadEvent, ToEngine } from './thread-protocol.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const TS_ENTRY = path.resolve(HERE, '../../../common/src/ts-entry.mjs');
const THREAD_MAIN = path.resolve(HERE, 'engine-thread.ts');

export type EventListener = (ev: ThreadEvent) => void;

export class EngineHost {
  private nextId = 1;
  private readonly listeners = new Map<number, { onEvent: EventListener; onReject: (e: ServerError) => void }>();
  private statsWaiters: ((s: EngineStatsSnapshot) => void)[] = [];
  private closed = false;

  private constructor(
    private readonly worker: Worker,
    readonly cfg: MoeModelConfig,
    readonly maxModelLen: number,
    private readonly onFatal: (msg: string) => void,
  ) {
    worker.on('message', (m: FromEngine) => this.onMessage(m));
    worker.on('error', (err) => this.fail(`engine thread crashed: ${err.message}`));
    worker.on('exit', (code) => {
      if (!this.closed) this.fail(`engine thread exited (code ${code})`);
    });
  }

  static async start(modelDir: string, options: SerializedLoadOptions, onFatal: (msg: string) => void = () => undefined): Promise<EngineHost> {
    const worker = new Worker(TS_ENTRY, { workerData: { entry: THREAD_MAIN } });
    const ready = await new Promise<Extract<FromEngine, { type: 'ready' }>>((resolve, reject) => {
      const onMsg = (m: FromEngine) => {
        if (m.type === 'ready') resolve(m);
        else if (m.type === 'fatal') reject(new ServerError('internal', m.message));
      };
      worker.on('message', onMsg);
      worker.once('error', reject);
      worker.once('exit', (code) => reject(new ServerError('internal', `engine thread exited during load (code ${code})`)));
      worker.postMessage({ type: 'init', modelDir, options } satisfies ToEngine);
    });
    worker.removeAllListeners();
    return new EngineHost(worker, ready.cfg, ready.maxModelLen, onFatal);
  }

  /** Submits a request; events arrive on onEvent until one carries a finishReason. Returns the host id. */
  submit(request: EngineRequest, onEvent: EventListener, onReject: (e: ServerError) => void): number {
    if (this.closed) throw new ServerError('internal', 'the engine is shut down');
    const id = this.nextId++;
    this.listeners.set(id, { onEvent, onReject });
    this.post({ type: 'add', id, request });
    return id;
  }

  /** Cancels a request; its KV blocks are freed by the engine thread at once. */
  abort(id: number): void {
    if (this.listeners.delete(id)) this.post({ type: 'abort', id });
  }

  stats(): Promise<EngineStatsSnapshot> {
    return new Promise((resolve) => {
      this.statsWaiters.push(resolve);
      this.post({ type: 'stats' });
    });
  }

  get inFlight(): number {
    return this.listeners.size;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.post({ type: 'shutdown' });
    await this.worker.terminate().catch(() => undefined);
  }

  private post(m: ToEngine): void {
    this.worker.postMessage(m);
  }

  private onMessage(m: FromEngine): void {
    switch (m.type) {
      case 'events':
        for (const ev of m.events) {
          const l = this.listeners.get(ev.id);
          if (!l) continue;
          if (ev.finishReason) this.listeners.delete(ev.id);
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
        for (const w of waiters) w(m.stats);
        return;
      }
      case 'fatal':
        this.fail(m.message);
        return;
      case 'ready':
        return;
    }
  }

  private fail(msg: string): void {
    // Every in-flight request ends with an error; the host stays usable only if the thread lives.
    for (const [id, l] of this.listeners) l.onEvent({ id, tokenId: -1, logprobs: null, promptLogprobs: null, finishReason: 'error', error: { code: 'internal', message: msg } });
    this.listeners.clear();
    this.onFatal(msg);
  }
}

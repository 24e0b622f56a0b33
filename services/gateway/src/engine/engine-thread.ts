/**
 * The engine thread: loads the model and runs Engine.step() in a loop while there is work,
 * posting each step's events to the main thread. Started by EngineHost (host.ts) through
 * services/common/src/ts-entry.mjs.
 */
import { parentPort } from 'node:worker_threads';
import { toServerError } from '../../../common/src/errors.js';
import type { Engine } from './engine.js';
import { loadModel, type LoadedModel } from './load.js';
import type { FromEngine, ThreadEvent, ToEngine } from './thread-protocol.js';

const port = parentPort;
if (!port) throw new Error('engine-thread must run in a worker thread');

let model: LoadedModel | null = null;
let engine: Engine | null = null;
const hostIdOf = new Map<number, number>(); // engine seq id -> host id
const seqIdOf = new Map<number, number>(); // host id -> engine seq id
let looping = false;
let steps = 0;
let stepSeconds = 0;
const post = (m: FromEngine) => port.postMessage(m);

port.on('message', (msg: ToEngine) => {
  void handle(msg).catch((err) => post({ type: 'fatal', message: toServerError(err).message }));
});

async function handle(msg: ToEngine): Promise<void> {
  switch (msg.type) {
    case 'init': {
      const o = msg.options;
      model = await loadModel(msg.modelDir, {
        runtime: { device: o.device, deviceId: o.deviceId, intraOpThreads: o.intraOpThreads },
        mlaImpl: o.mlaImpl,
        maxModelLen: o.maxModelLen,
        kvCacheBytes: o.kvCacheBytes,
        blockSize: o.blockSize,
        maxNumSeqs: o.maxNumSeqs,
        maxBatchedTokens: o.maxBatchedTokens,
      });
      engine = model.engine;
      post({ type: 'ready', cfg: model.cfg, maxModelLen: model.maxModelLen });
      return;
    }
    case 'add': {
      if (!engine) throw new Error('engine not initialized');
      try {
        const seqId = engine.add(msg.request);
        hostIdOf.set(seqId, msg.id);
        seqIdOf.set(msg.id, seqId);
      } catch (err) {
        const e = toServerError(err);
        post({ type: 'rejected', id: msg.id, code: e.code, message: e.message, param: e.param });
        return;
      }
      kick();
      return;
    }
    case 'abort': {
      const seqId = seqIdOf.get(msg.id);
      if (seqId !== undefined && engine) {
        engine.abort(seqId);
        forget(seqId);
      }
      return;
    }
    case 'stats': {
      if (!engine || !model) return;
      post({ type: 'stats', stats: { running: engine.numRunning, waiting: engine.numWaiting, preemptions: engine.preemptions, kv: model.kv.stats(), steps, stepSeconds } });
      return;
    }
    case 'shutdown':
      model?.checkpoint.close();
      process.exit(0);
  }
}

function forget(seqId: number): void {
  const hostId = hostIdOf.get(seqId);
  hostIdOf.delete(seqId);
  if (hostId !== undefined) seqIdOf.delete(hostId);
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
      const events = await engine.step();
      stepSeconds += (performance.now() - t0) / 1000;
      steps++;
      const out: ThreadEvent[] = [];
      for (const ev of events) {
        const id = hostIdOf.get(ev.seqId);
        if (id === undefined) continue; // aborted meanwhile
        if (ev.tokenId < 0 && !ev.finishReason) continue; // a prefill chunk: nothing to report
        out.push({ id, tokenId: ev.tokenId, logprobs: ev.logprobs, promptLogprobs: ev.promptLogprobs, finishReason: ev.finishReason });
        if (ev.finishReason) forget(ev.seqId);
      }
      if (out.length > 0) post({ type: 'events', events: out });
      // Let queued messages (adds, aborts) in before the next step.
      await new Promise<void>((r) => setImmediate(r));
    }
  } catch (err) {
    post({ type: 'fatal', message: toServerError(err).message });
  } finally {
    looping = false;
  }
}

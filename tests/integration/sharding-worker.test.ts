/**
 * One expert worker process (`moeserve worker`, mixtral-tiny, experts 0-3) over real gRPC:
 * - it reads only its experts' tensors (Info's checkpoint_bytes_read, exact);
 * - a valid request returns exactly what the in-process shard computes;
 * - bad messages (unknown expert, wrong byte length, unknown layer, oversized) each get a clear
 *   status, and the worker keeps serving (same stream for per-request errors, a new stream after
 *   the oversized one);
 * - Info / Health / Stats;
 * - TLS with mutual authentication (self-signed certificate made with openssl at test time).
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { channelOptions, expertProto, SERVING_STATUS, WIRE_DTYPE, type ExpertWorkerClient, type ForwardReply, type ForwardRequest, type HealthReply, type InfoReply, type StatsReply } from '../../proto/index.js';
import { DEFAULT_TOPOLOGY, startTopology } from '../../router/index.js';
import { generateCached } from '../../services/gateway/src/engine/generate.js';
import { loadModel } from '../../services/gateway/src/engine/load.js';
import { DEFAULT_SAMPLING } from '../../services/gateway/src/sampling/params.js';
import { Checkpoint } from '../../services/model/src/checkpoint/checkpoint.js';
import * as W from '../../services/model/src/names.js';
import { DEFAULT_RUNTIME } from '../../services/model/src/runtime/onnx.js';
import { readModelConfig } from '../../services/model/src/model-dir.js';
import { ExpertShard } from '../../workers/src/shard.js';
import { spawnWorker, stopProcess, type ReadyInfo, type WorkerProcess } from '../../workers/src/spawn.js';
import { fixtureDir, loadExpected } from '../helpers/golden.js';

const DIR = fixtureDir('mixtral-tiny');
const cfg = readModelConfig(DIR);
const H = cfg.hiddenSize;
const HELD = [0, 1, 2, 3];
const LIMIT = 64 * 1024; // the worker's --max-message-bytes
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moeserve-worker-'));

let worker: WorkerProcess;
let ready: ReadyInfo;
let client: ExpertWorkerClient;

function newClient(address: string): ExpertWorkerClient {
  const { Client } = expertProto();
  // The client may send up to 1 MiB: the worker's own 64 KiB limit is what is under test.
  return new Client(address, grpc.credentials.createInsecure(), channelOptions({ maxMessageBytes: 2 ** 20, reconnectMinMs: 100, reconnectMaxMs: 1000 }));
}

function unary<T>(c: ExpertWorkerClient, method: 'info' | 'health' | 'stats'): Promise<T> {
  return new Promise((resolve, reject) => {
    (c[method] as unknown as (r: object, md: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: T) => void) => void).call(c, {}, new grpc.Metadata(), { deadline: Date.now() + 5000 }, (e, r) => (e ? reject(e) : resolve(r!)));
  });
}

/** Rows with a deterministic pattern; ids / weights [n, k]. */
function request(id: number, layer: number, rows: number[][], opts: { hiddenBytes?: number; n?: number } = {}): ForwardRequest {
  const n = opts.n ?? rows.length;
  const k = rows[0]!.length;
  const x = Float32Array.from({ length: n * H }, (_, i) => Math.sin(i * 0.37) * 0.5);
  const ids = Int32Array.from(rows.flat());
  const weights = Float32Array.from(rows.flat().map((e, i) => (e < 0 ? 0 : 0.25 + 0.125 * (i % 3))));
  const hidden = Buffer.from(x.buffer);
  return {
    requestId: id,
    layer,
    numRows: n,
    topK: k,
    dtype: WIRE_DTYPE.f32,
    hidden: opts.hiddenBytes === undefined ? hidden : hidden.subarray(0, opts.hiddenBytes),
    expertIds: Buffer.from(ids.buffer),
    weights: Buffer.from(weights.buffer),
    step: 0,
    sentAtUs: 0,
  };
}

/** A Forward stream with replies delivered by request id. */
function openStream(c: ExpertWorkerClient) {
  const call = c.forward();
  const waiting = new Map<number, (r: ForwardReply) => void>();
  let ended: grpc.ServiceError | null = null;
  const onEnd: ((e: grpc.ServiceError) => void)[] = [];
  call.on('data', (r: ForwardReply) => waiting.get(r.requestId)?.(r));
  call.on('error', (e: grpc.ServiceError) => {
    ended = e;
    for (const f of onEnd) f(e);
  });
  return {
    call,
    send(req: ForwardRequest): Promise<ForwardReply> {
      return new Promise((resolve, reject) => {
        waiting.set(req.requestId, resolve);
        onEnd.push(reject);
        if (ended) reject(ended);
        call.write(req);
      });
    },
  };
}

beforeAll(async () => {
  worker = spawnWorker({ args: ['--model', DIR, '--experts', '0-3', '--socket', path.join(tmp, 'w.sock'), '--max-message-bytes', String(LIMIT), '--log-level', 'error', '--exit-with-stdin'], startTimeoutMs: 60_000 });
  ready = await worker.ready;
  client = newClient(ready.address);
});

afterAll(async () => {
  client?.close();
  if (worker) await stopProcess(worker.child);
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('an expert worker process', () => {
  it('reads only its experts tensors from the checkpoint (lazy reader, exact bytes)', async () => {
    const ckpt = Checkpoint.open(DIR);
    let mine = 0;
    let all = 0;
    for (const l of cfg.layers) {
      for (let e = 0; e < cfg.moe.nRoutedExperts; e++) {
        for (const proj of ['gate', 'up', 'down'] as const) {
          const bytes = ckpt.info(W.expert(cfg, l.index, e, proj)).byteLength;
          all += bytes;
          if (HELD.includes(e)) mine += bytes;
        }
      }
    }
    ckpt.close();
    const info = await unary<InfoReply>(client, 'info');
    expect(info.checkpointBytesRead).toBe(mine);
    expect(ready.bytesRead).toBe(mine);
    expect(mine).toBe(all / 2);
    expect(info.layers).toEqual(cfg.layers.map((l) => ({ layer: l.index, experts: HELD })));
    expect(info).toMatchObject({ architecture: 'MixtralForCausalLM', hiddenSize: H, numLayers: cfg.numLayers, nRoutedExperts: 8, device: 'cpu', requestedDevice: 'cpu', maxMessageBytes: LIMIT, dtypes: [0, 1, 2] });
    expect((await unary<HealthReply>(client, 'health')).status).toBe(SERVING_STATUS.SERVING);
  });

  it('answers a request with exactly what the in-process shard computes', async () => {
    const ckpt = Checkpoint.open(DIR);
    const shard = await ExpertShard.load(cfg, ckpt, new Map([[1, HELD]]), DEFAULT_RUNTIME);
    ckpt.close();
    const rows = [[0, 1], [2, -1], [3, 0], [-1, 1]];
    const req = request(1, 1, rows);
    const want = new Float32Array(rows.length * H);
    await shard.forward(1, new Float32Array(req.hidden.buffer.slice(0)), rows.length, Int32Array.from(rows.flat()), new Float32Array(req.weights.buffer.slice(0)), 2, want);
    const s = openStream(client);
    const reply = await s.send(req);
    s.call.end();
    expect(reply.status).toBeNull();
    expect(reply.requestId).toBe(1);
    expect(reply.numRows).toBe(4);
    const got = new Float32Array(new Uint8Array(reply.output).buffer);
    expect(Array.from(got)).toEqual(Array.from(want));
  });
});

describe('EXPECTED FAILURE - bad messages get a clear status and the worker keeps serving', () => {
  it('unknown expert, wrong byte length, unknown layer: per-request status, the stream goes on', async () => {
    const s = openStream(client);
    const unknownExpert = await s.send(request(10, 0, [[0, 5], [6, 1]]));
    expect(unknownExpert.status).toMatchObject({ code: grpc.status.INVALID_ARGUMENT, errorCode: 'bad_message' });
    expect(unknownExpert.status!.message).toMatch(/experts 5, 6 of layer 0 not held by this worker \(it holds 0-3\)/);

    const wrongLength = await s.send(request(11, 0, [[0, 1], [2, 3]], { hiddenBytes: 2 * H * 4 - 4 }));
    expect(wrongLength.status).toMatchObject({ code: grpc.status.INVALID_ARGUMENT, errorCode: 'bad_message' });
    expect(wrongLength.status!.message).toMatch(/hidden of 2 rows x 64 has 508 bytes; expected 128 f32 values = 512 bytes/);

    const unknownLayer = await s.send(request(12, 7, [[0, 1]]));
    expect(unknownLayer.status).toMatchObject({ code: grpc.status.INVALID_ARGUMENT, errorCode: 'bad_message' });
    expect(unknownLayer.status!.message).toMatch(/layer 7 is not held by this worker \(it holds MoE layers 0-2\)/);

    const ok = await s.send(request(13, 2, [[0, 1]]));
    expect(ok.status).toBeNull();
    expect(ok.output.byteLength).toBe(H * 4);
    s.call.end();
  });

  it('oversized: RESOURCE_EXHAUSTED on that stream; a new stream is served', async () => {
    const s = openStream(client);
    const rows = Array.from({ length: 300 }, () => [0, 1]); // 300 x 64 x 4 B = 75 KiB > 64 KiB
    let err: grpc.ServiceError | null = null;
    try {
      await s.send(request(20, 0, rows));
    } catch (e) {
      err = e as grpc.ServiceError;
    }
    expect(err?.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(err?.details).toMatch(/larger than max/);

    const again = openStream(client);
    const ok = await again.send(request(21, 0, [[3, 2]]));
    expect(ok.status).toBeNull();
    again.call.end();
    expect((await unary<HealthReply>(client, 'health')).status).toBe(SERVING_STATUS.SERVING);
    const stats = await unary<StatsReply>(client, 'stats');
    expect(stats.failed).toBe(3);
    expect(stats.requests).toBeGreaterThanOrEqual(6);
  });
});

describe('TLS between gateway and workers', () => {
  // openssl makes the self-signed certificate; .ci/run installs it where it is missing.
  it('mutual TLS: a gateway with a client certificate gets the fixture output; one without is refused', async () => {
    const cert = path.join(tmp, 'cert.pem');
    const key = path.join(tmp, 'key.pem');
    const gen = spawnSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'], { encoding: 'utf8' });
    expect(gen.status, gen.stderr).toBe(0);
    const w = spawnWorker({ args: ['--model', DIR, '--experts', 'all', '--port', '0', '--tls-cert', cert, '--tls-key', key, '--tls-ca', cert, '--log-level', 'error', '--exit-with-stdin'], startTimeoutMs: 60_000 });
    try {
      const r = await w.ready;
      // By name (the certificate's DNS SAN): TLS server names must not be IP addresses (RFC 6066).
      const base = { ...DEFAULT_TOPOLOGY, modelDir: DIR, runtime: DEFAULT_RUNTIME, workerAddrs: [`localhost:${r.port}`], connectTimeoutMs: 1500, log: () => undefined };
      const topology = await startTopology(cfg, { ...base, tls: { cert, key, ca: cert } });
      try {
        const exp = loadExpected('mixtral-tiny');
        const model = await loadModel(DIR, { runtime: DEFAULT_RUNTIME, mlaImpl: 'absorbed', experts: topology.experts });
        const [out] = await generateCached(model.engine, [exp.prompts.len7.input_ids], { maxTokens: 16, sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, stopTokenIds: [] });
        model.checkpoint.close();
        expect(out!.greedy_ids).toEqual(exp.prompts.len7.greedy_ids);
      } finally {
        await topology.close();
      }
      // No client certificate: the mutual-TLS worker refuses the connection.
      await expect(startTopology(cfg, { ...base, tls: { ca: cert } })).rejects.toThrow(/worker localhost:\d+ info/);
      // Plaintext to a TLS worker: refused too.
      await expect(startTopology(cfg, { ...base, tls: null })).rejects.toThrow(/worker localhost:\d+ info/);
    } finally {
      await stopProcess(w.child);
    }
  });
});

/**
 * ExpertWorkerServer: serves one ExpertShard over the ExpertWorker contract (proto/expert.proto).
 *
 * Forward stream: each ForwardRequest is validated (layer held, sizes exact, every expert id held),
 * decoded (views, no copies for aligned f32), run through the shard (one ONNX Runtime run per
 * request for all experts of the layer), and answered with one ForwardReply of the same
 * request_id. A bad request is answered with a RequestStatus (gRPC code + moeserve code +
 * message) and the stream goes on; a message over the receive limit is refused by grpc-js with
 * RESOURCE_EXHAUSTED on that stream only. Either way the worker keeps serving.
 *
 * Requests of all streams run one at a time, in arrival order: the shard's scratch buffers are
 * shared and ONNX Runtime's run() blocks the event loop anyway (onnxruntime#19611). A stream the
 * gateway cancels (its deadline passed) has its queued requests dropped unrun.
 *
 * Load (live rebalancing): the new experts' sessions are built off the request chain, so Forward
 * keeps being served meanwhile; the swap is queued on the chain (it happens between two requests)
 * and the old sessions are freed right after it, when no request can be using them.
 */
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { GRPC_STATUS, ServerError, toServerError } from '../../services/common/src/errors.js';
import type { MoeModelConfig } from '../../services/model/src/config.js';
import {
  DTYPE_BYTES,
  expertProto,
  float32View,
  int32View,
  RowCodec,
  SERVING_STATUS,
  serverCredentials,
  serverOptions,
  toGrpcStatus,
  wallClockUs,
  WIRE_DTYPE,
  type ExpertWorkerHandlers,
  type ForwardReply,
  type ForwardRequest,
  type HealthReply,
  type InfoReply,
  type LoadReply,
  type LoadRequest,
  type StatsReply,
  type TlsMaterial,
} from '../../proto/index.js';
import { formatIdList } from '../../services/model/src/experts-spec.js';
import type { LiveShard } from './live-shard.js';

export interface WorkerServerOptions {
  /** `host:port` (port 0 = a free port, reported by `address`) or `unix:/abs/path.sock`. */
  readonly listen: string;
  /** gRPC send/receive limit, bytes. @defaultValue DEFAULT_MAX_MESSAGE_BYTES (64 MiB) */
  readonly maxMessageBytes: number;
  readonly tls: TlsMaterial | null;
  readonly workerId: string;
  readonly configSha256: string;
  readonly requestedDevice: string;
  readonly checkpointBytesRead: number;
  readonly log: Logger;
}

type Call = grpc.ServerDuplexStream<ForwardRequest, ForwardReply>;

/** Per-stream state: replies go back on the stream the request came in on. */
interface StreamState {
  readonly call: Call;
  closed: boolean;
}

const OK_STATUS = null;

/** HTTP/2 receive window of the worker, per stream and per connection, bytes. */
const FLOW_CONTROL_WINDOW = 16 * 2 ** 20;

/*
 * HTTP/2 starts every stream and connection with a 64 KiB receive window. A decode request of 16
 * rows of a 1024-wide model is 65.8 KiB, so the gateway would stall mid-message until the worker
 * wakes up and sends a WINDOW_UPDATE: one more wake-up per request. grpc-js has a client option
 * for this ('grpc-node.flow_control_window', set in channelOptions) but none for servers, so the
 * worker sets Node's http2 settings on grpc-js's private fields. Best effort: if a grpc-js version
 * renames them, this does nothing and only large requests get slower.
 */
function widenReceiveWindow(server: grpc.Server, bytes: number): void {
  const common = (server as unknown as { commonServerOptions?: { settings?: Record<string, unknown> } }).commonServerOptions;
  if (common) common.settings = { ...common.settings, initialWindowSize: bytes };
}

function widenConnectionWindow(server: grpc.Server, bytes: number): void {
  const servers = (server as unknown as { http2Servers?: Map<{ on(ev: 'session', f: (s: { setLocalWindowSize(n: number): void }) => void): void }, unknown> }).http2Servers;
  if (!(servers instanceof Map)) return;
  for (const h of servers.keys()) {
    h.on('session', (session) => {
      try {
        session.setLocalWindowSize(bytes);
      } catch {
        // an older Node without setLocalWindowSize: keep the default window
      }
    });
  }
}

export class ExpertWorkerServer {
  private readonly H: number;
  private readonly X: number;
  /** Serializes request processing across streams (see the header). */
  private chain: Promise<void> = Promise.resolve();
  private queued = 0;
  private openStreams = 0;
  private readonly started = Date.now();
  private serving = true;
  // Scratch reused across requests (avoid GC on the per-layer path).
  private readonly inCodec = new RowCodec();
  private readonly outCodec = new RowCodec();
  private out = new Float32Array(0);
  private readonly idScratch = { buf: new Int32Array(0) };
  private readonly weightScratch = { buf: new Float32Array(0) };
  // Counters (Stats).
  private requests = 0;
  private failed = 0;
  private rows = 0;
  private bytesIn = 0;
  private bytesOut = 0;
  private computeUs = 0;
  /** (row, expert) pairs per [layer * X + expert]. */
  private readonly expertRows: Float64Array;

  private constructor(
    private readonly server: grpc.Server,
    readonly cfg: MoeModelConfig,
    readonly shard: LiveShard,
    readonly opts: WorkerServerOptions,
    /** The bound address: `127.0.0.1:PORT` or `unix:/path`. */
    public address: string,
    public port: number,
  ) {
    this.H = cfg.hiddenSize;
    this.X = cfg.moe.nRoutedExperts;
    this.expertRows = new Float64Array(cfg.numLayers * this.X);
  }

  static async start(cfg: MoeModelConfig, shard: LiveShard, opts: WorkerServerOptions): Promise<ExpertWorkerServer> {
    const server = new grpc.Server(serverOptions(opts.maxMessageBytes));
    widenReceiveWindow(server, FLOW_CONTROL_WINDOW);
    const self = new ExpertWorkerServer(server, cfg, shard, opts, opts.listen, 0);
    // Unary failures leave as a gRPC status with moeserve's code in the trailers (one mapping).
    const unary =
      <T>(f: () => T): grpc.handleUnaryCall<unknown, T> =>
      (_call, cb) => {
        try {
          cb(null, f());
        } catch (err) {
          cb(toGrpcStatus(err) as grpc.ServiceError);
        }
      };
    const handlers: ExpertWorkerHandlers = {
      forward: (call) => self.onStream(call),
      info: unary(() => self.info()),
      health: unary(() => self.health()),
      stats: unary(() => self.stats()),
      load: (call, cb) => {
        self.load(call.request).then(
          (r) => cb(null, r),
          (err) => cb(toGrpcStatus(err) as grpc.ServiceError),
        );
      },
    };
    server.addService(expertProto().service, handlers);
    const port = await new Promise<number>((resolve, reject) => {
      server.bindAsync(opts.listen, serverCredentials(opts.tls), (err, p) => (err ? reject(new ServerError('invalid_request', `cannot listen on ${opts.listen}: ${err.message}`, { cause: err })) : resolve(p)));
    });
    self.port = port;
    widenConnectionWindow(server, FLOW_CONTROL_WINDOW);
    if (!opts.listen.startsWith('unix:')) self.address = `${opts.listen.slice(0, opts.listen.lastIndexOf(':'))}:${port}`;
    return self;
  }

  /** Stops accepting streams, lets queued requests finish (up to graceMs), then closes. */
  async close(graceMs = 2000): Promise<void> {
    this.serving = false;
    await new Promise<void>((resolve) => {
      const t = setTimeout(() => {
        this.server.forceShutdown();
        resolve();
      }, graceMs);
      t.unref();
      this.server.tryShutdown(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  // ---------------------------------------------------------------- Forward (hot path)

  private onStream(call: Call): void {
    const st: StreamState = { call, closed: false };
    this.openStreams++;
    call.on('data', (req: ForwardRequest) => {
      const arrived = performance.now();
      const arrivedUs = wallClockUs();
      this.queued++;
      this.chain = this.chain.then(() => this.process(st, req, arrived, arrivedUs));
    });
    // The gateway half-closed: answer what is queued, then end the stream.
    call.on('end', () => {
      this.chain = this.chain.then(() => {
        if (!st.closed) call.end();
      });
    });
    call.on('cancelled', () => (st.closed = true));
    call.on('error', () => (st.closed = true));
    call.on('close', () => {
      st.closed = true;
      this.openStreams--;
    });
  }

  /** Never rejects (the chain must keep going). */
  private async process(st: StreamState, req: ForwardRequest, arrived: number, arrivedUs: number): Promise<void> {
    this.queued--;
    if (st.closed) return; // the gateway gave up on this stream (deadline): do not compute
    const t0 = performance.now();
    this.requests++;
    this.bytesIn += req.hidden.byteLength + req.expertIds.byteLength + req.weights.byteLength;
    let reply: ForwardReply;
    try {
      const n = req.numRows;
      const out = await this.run(req);
      // f32: the reply views `out`; safe because the stream serializes it synchronously in write()
      // when nothing is buffered — otherwise copy, as `out` is reused by the next request.
      const view = this.outCodec.encode(out, req.dtype);
      reply = {
        requestId: req.requestId,
        numRows: n,
        dtype: req.dtype,
        output: st.call.writableLength === 0 ? view : Buffer.from(view),
        status: OK_STATUS,
        computeUs: Math.round((performance.now() - t0) * 1000),
        queueUs: Math.round((t0 - arrived) * 1000),
        receivedAtUs: arrivedUs,
        sentAtUs: 0,
      };
    } catch (err) {
      const e = toServerError(err);
      this.failed++;
      this.opts.log.warn({ layer: req.layer, requestId: req.requestId, code: e.code }, e.message);
      reply = {
        requestId: req.requestId,
        numRows: 0,
        dtype: req.dtype,
        output: Buffer.alloc(0),
        status: { code: GRPC_STATUS[e.code], errorCode: e.code, message: e.message },
        computeUs: Math.round((performance.now() - t0) * 1000),
        queueUs: Math.round((t0 - arrived) * 1000),
        receivedAtUs: arrivedUs,
        sentAtUs: 0,
      };
    }
    this.computeUs += reply.computeUs;
    this.bytesOut += reply.output.byteLength;
    reply.sentAtUs = wallClockUs();
    if (!st.closed) st.call.write(reply);
  }

  /** Validates and runs one request; returns out float32 [n, H] (scratch, valid until the next call). */
  private async run(req: ForwardRequest): Promise<Float32Array> {
    const H = this.H;
    const X = this.X;
    const { layer, numRows: n, topK: k } = req;
    const held = this.shard.held().get(layer);
    if (!held) {
      const layers = [...this.shard.held().keys()];
      throw new ServerError('bad_message', `layer ${layer} is not held by this worker (it holds MoE layers ${formatIdList(layers)})`);
    }
    if (!Number.isInteger(n) || n < 1) throw new ServerError('bad_message', `num_rows must be >= 1, got ${n}`);
    if (!Number.isInteger(k) || k < 1 || k > X) throw new ServerError('bad_message', `top_k must be in [1, ${X}], got ${k}`);
    if (DTYPE_BYTES[req.dtype] === undefined) throw new ServerError('bad_message', `unknown dtype ${req.dtype} (0 f32, 1 f16, 2 bf16)`);
    const ids = int32View(req.expertIds, n * k, `expert_ids of ${n} rows x ${k} slots`, this.idScratch);
    const weights = float32View(req.weights, n * k, `weights of ${n} rows x ${k} slots`, this.weightScratch);
    const x = this.inCodec.decode(req.hidden, req.dtype, n * H, `hidden of ${n} rows x ${H}`);
    // Every id must be -1 or an expert this worker holds for the layer; name them all if not.
    let unheld: number[] | null = null;
    for (let i = 0; i < n * k; i++) {
      const e = ids[i]!;
      if (e === -1) continue;
      if (e < -1 || e >= X || !this.shard.holds(layer, e)) (unheld ??= []).push(e);
    }
    if (unheld) {
      const list = [...new Set(unheld)].sort((a, b) => a - b).join(', ');
      throw new ServerError('bad_message', `expert${unheld.length > 1 ? 's' : ''} ${list} of layer ${layer} not held by this worker (it holds ${formatIdList(held)})`);
    }
    for (let i = 0; i < n * k; i++) {
      const e = ids[i]!;
      if (e >= 0) this.expertRows[layer * X + e]++;
    }
    this.rows += n;
    if (this.out.length < n * H) this.out = new Float32Array(Math.max(n * H, this.out.length * 2));
    const out = this.out.subarray(0, n * H);
    await this.shard.forward(layer, x, n, ids, weights, k, out);
    return out;
  }

  // ---------------------------------------------------------------- unary

  info(): InfoReply {
    const cfg = this.cfg;
    const layers = [...this.shard.held().entries()].map(([layer, experts]) => ({ layer, experts: [...experts] }));
    const dev = this.shard.sessionDevice;
    return {
      workerId: this.opts.workerId,
      architecture: cfg.architecture,
      hiddenSize: cfg.hiddenSize,
      numLayers: cfg.numLayers,
      nRoutedExperts: cfg.moe.nRoutedExperts,
      layers,
      dtypes: [WIRE_DTYPE.f32, WIRE_DTYPE.f16, WIRE_DTYPE.bf16],
      device: dev === 'cuda' ? `cuda:${this.opts.requestedDevice.split(':')[1] ?? '0'}` : dev,
      requestedDevice: this.opts.requestedDevice,
      maxMessageBytes: this.opts.maxMessageBytes,
      configSha256: this.opts.configSha256,
      pid: process.pid,
      checkpointBytesRead: this.opts.checkpointBytesRead,
    };
  }

  /** Live rebalancing: build the listed layers' experts in the background, swap them between two requests, free the old ones. */
  private loading: Promise<unknown> = Promise.resolve();
  load(req: LoadRequest): Promise<LoadReply> {
    // One Load at a time (each swap must see the previous one's result).
    const run = this.loading.then(async () => {
      const t0 = performance.now();
      const wanted = new Map<number, readonly number[]>();
      for (const le of req.layers ?? []) {
        for (const e of le.experts) if (!Number.isInteger(e) || e < 0 || e >= this.X) throw new ServerError('invalid_request', `Load: expert ${e} of layer ${le.layer} out of range [0, ${this.X})`);
        wanted.set(le.layer, le.experts);
      }
      const prepared = await this.shard.prepare(wanted);
      let bytesRead = 0;
      if (prepared) {
        bytesRead = prepared.bytesRead;
        await new Promise<void>((resolve, reject) => {
          this.chain = this.chain.then(async () => {
            try {
              const retired = this.shard.swap(prepared);
              await this.shard.release(retired);
              resolve();
            } catch (err) {
              reject(err);
            }
          });
        });
        this.opts.log.info({ layers: prepared.layers, ms: Math.round(performance.now() - t0) }, 'experts reloaded');
      }
      const layers = [...this.shard.held().entries()].map(([layer, experts]) => ({ layer, experts: [...experts] }));
      return { layers, loadMs: Math.round(performance.now() - t0), checkpointBytesRead: bytesRead };
    });
    this.loading = run.catch(() => undefined);
    return run;
  }

  health(): HealthReply {
    return { status: this.serving ? SERVING_STATUS.SERVING : SERVING_STATUS.NOT_SERVING, uptimeMs: Date.now() - this.started, queueDepth: this.queued };
  }

  stats(): StatsReply {
    const expertRows: StatsReply['expertRows'] = [];
    for (let i = 0; i < this.expertRows.length; i++) {
      if (this.expertRows[i]! > 0) expertRows.push({ layer: Math.floor(i / this.X), expert: i % this.X, rows: this.expertRows[i]! });
    }
    return {
      requests: this.requests,
      failed: this.failed,
      rows: this.rows,
      bytesIn: this.bytesIn,
      bytesOut: this.bytesOut,
      computeUs: this.computeUs,
      expertRows,
      openStreams: this.openStreams,
    };
  }
}

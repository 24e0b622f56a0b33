/**
 * WorkerClient: the gateway's connection to one expert worker — one gRPC channel, one long-lived
 * Forward bidi stream, replies matched to requests by request_id, a deadline on every exchange,
 * and reconnection with exponential backoff.
 *
 * States: connecting -> live -> down -> (probe: Health, then Info checked against what this
 * worker must hold) -> live ... ; closed is final.
 * - The stream ends or errors (worker killed, connection lost): every pending request fails at
 *   once, the worker goes down, probing starts.
 * - A request misses its deadline: the stream is cancelled (the worker sees 'cancelled' and
 *   drops that stream's queued requests), the worker goes down, probing starts.
 * - A reply with a RequestStatus (the worker is alive but refused the request) fails only that
 *   request; the worker stays live.
 * A worker that comes back at the same address is used again without restarting the gateway.
 */
import * as grpc from '@grpc/grpc-js';
import { ServerError } from '../../services/common/src/errors.js';
import {
  channelCredentials,
  channelOptions,
  expertProto,
  fromGrpcStatus,
  fromServiceError,
  SERVING_STATUS,
  wallClockUs,
  type ExpertWorkerClient,
  type ForwardReply,
  type ForwardRequest,
  type HealthReply,
  type InfoReply,
  type LoadReply,
  type StatsReply,
  type TlsMaterial,
} from '../../proto/index.js';
import { backoffMs, grpcDeadline } from './deadline.js';
import type { DispatchOptions, LogFn, WorkerState } from './types.js';

/** What every worker must agree on with the gateway. */
export interface ModelIdentity {
  readonly hiddenSize: number;
  readonly numLayers: number;
  readonly nRoutedExperts: number;
  /** The model fingerprint (services/model/src/model-dir.ts `modelFingerprint`). */
  readonly configSha256: string;
}

interface Pending {
  /** Wall clock at write, µs since the epoch. */
  readonly sentAtUs: number;
  resolve(r: ForwardReply): void;
  reject(e: ServerError): void;
  timer: NodeJS.Timeout;
}

type Stream = grpc.ClientDuplexStream<ForwardRequest, ForwardReply>;

/** An idle live worker is asked for its Health this often, ms (its last-seen time stays current). */
const IDLE_PING_MS = 5000;

/** Bytes of protobuf framing and fixed fields a request may add on top of its three payloads. */
export const REQUEST_OVERHEAD_BYTES = 256;

export class WorkerClient {
  state: WorkerState = 'connecting';
  info: InfoReply | null = null;
  /** The last failure (cleared when live again). */
  lastError: ServerError | null = null;
  /** Times this worker came back after a failure. */
  reconnects = 0;
  /** When the worker last answered (a reply, Health, Info) or its stream opened: Unix ms; 0 = never. */
  lastSeenMs = 0;
  /** Summed one-way latencies of answered requests, µs (request: our write -> its arrival; reply: its write -> our receipt). */
  readonly latency = { requestUs: 0, replyUs: 0, count: 0 };
  private readonly client: ExpertWorkerClient;
  private stream: Stream | null = null;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private attempt = 0;
  private probeTimer: NodeJS.Timeout | null = null;
  /** While live: a Health call when nothing was heard for IDLE_PING_MS (keeps lastSeenMs true for an idle worker). */
  private pingTimer: NodeJS.Timeout | null = null;
  /** layer -> experts this worker must hold (checked on every (re)connect). */
  private expected: ReadonlyMap<number, readonly number[]> | null = null;
  /** Invoked when the worker goes down or comes back (dispatch resets its live mask). */
  onStateChange: (c: WorkerClient) => void = () => undefined;

  constructor(
    readonly index: number,
    readonly address: string,
    private readonly identity: ModelIdentity,
    private readonly opts: DispatchOptions,
    tls: TlsMaterial | null,
    private readonly log: LogFn,
  ) {
    const { Client } = expertProto();
    this.client = new Client(address, channelCredentials(tls), channelOptions({ maxMessageBytes: opts.maxMessageBytes, reconnectMinMs: opts.reconnectMinMs, reconnectMaxMs: opts.reconnectMaxMs }));
  }

  get live(): boolean {
    return this.state === 'live';
  }

  /** Largest request this worker accepts, bytes (min of both ends' limits). */
  get maxRequestBytes(): number {
    return Math.min(this.opts.maxMessageBytes, this.info?.maxMessageBytes ?? this.opts.maxMessageBytes);
  }

  /**
   * First connection: Info (checked against the model and, when given, the experts this worker
   * must hold), then the Forward stream. Throws a clear error when the worker is unreachable or
   * serves something else.
   */
  async connect(expected: ReadonlyMap<number, readonly number[]> | null, timeoutMs: number): Promise<InfoReply> {
    const info = await this.unary<InfoReply>('info', timeoutMs, true);
    this.check(info, expected);
    this.expected = expected ?? heldOf(info);
    this.info = info;
    this.openStream();
    return info;
  }

  /** Sends one request; resolves with its reply, rejects on a RequestStatus, a deadline or a lost worker. */
  send(req: ForwardRequest, timeoutMs: number): Promise<ForwardReply> {
    const stream = this.stream;
    if (this.state !== 'live' || !stream) {
      return Promise.reject(this.lastError ?? new ServerError('experts_unavailable', `worker ${this.address} is ${this.state}`));
    }
    const id = this.nextId++;
    req.requestId = id;
    req.sentAtUs = wallClockUs();
    return new Promise<ForwardReply>((resolve, reject) => {
      const timer = setTimeout(() => this.onDeadline(id, timeoutMs), timeoutMs);
      this.pending.set(id, { sentAtUs: req.sentAtUs, resolve, reject, timer });
      stream.write(req);
    });
  }

  /** Whether a write now is serialized at once (nothing buffered): the caller may reuse its buffers after. */
  get writesImmediately(): boolean {
    return (this.stream?.writableLength ?? 1) === 0;
  }

  health(timeoutMs = this.opts.controlDeadlineMs): Promise<HealthReply> {
    return this.unary<HealthReply>('health', timeoutMs, false).then((h) => {
      this.lastSeenMs = Date.now();
      return h;
    });
  }

  stats(timeoutMs = this.opts.controlDeadlineMs): Promise<StatsReply> {
    return this.unary<StatsReply>('stats', timeoutMs, false);
  }

  /**
   * Live rebalancing: the worker loads these experts per layer in the background and swaps them
   * in (proto Load); resolves with what it holds then, which becomes what a reconnect expects.
   */
  load(held: ReadonlyMap<number, readonly number[]>, timeoutMs: number): Promise<LoadReply> {
    const layers = [...held].map(([layer, experts]) => ({ layer, experts: [...experts] }));
    return new Promise<LoadReply>((resolve, reject) => {
      this.client.load({ layers }, new grpc.Metadata(), { deadline: grpcDeadline(performance.now() + timeoutMs) }, (err, res) => {
        if (err || !res) return reject(fromServiceError(err!, `worker ${this.address} load`));
        this.expected = new Map((res.layers ?? []).map((l) => [l.layer, l.experts]));
        this.lastSeenMs = Date.now();
        resolve(res);
      });
    });
  }

  /** Takes the worker out of rotation after a failure the dispatcher saw (e.g. a deadline on another request). */
  markDown(err: ServerError): void {
    this.fail(err);
  }

  close(): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    if (this.probeTimer) clearTimeout(this.probeTimer);
    this.probeTimer = null;
    if (this.pingTimer) clearInterval(this.pingTimer);
    this.pingTimer = null;
    const s = this.stream;
    this.stream = null;
    this.rejectAll(new ServerError('cancelled', `worker ${this.address}: the gateway closed the connection`));
    s?.cancel();
    this.client.close();
  }

  // ---------------------------------------------------------------- internals

  private openStream(): void {
    const s = this.client.forward();
    this.stream = s;
    s.on('data', (reply: ForwardReply) => {
      this.lastSeenMs = Date.now();
      const p = this.pending.get(reply.requestId);
      if (!p) return; // answered after its deadline: already failed over
      this.pending.delete(reply.requestId);
      clearTimeout(p.timer);
      // One-way latencies (worker clock vs ours: exact on one host), for "where the time goes".
      if (reply.receivedAtUs > 0) {
        this.latency.requestUs += reply.receivedAtUs - p.sentAtUs;
        this.latency.replyUs += wallClockUs() - reply.sentAtUs;
        this.latency.count++;
      }
      const st = reply.status;
      if (st && st.code !== 0) p.reject(fromGrpcStatus(st.code, st.message, st.errorCode, `worker ${this.address}`));
      else p.resolve(reply);
    });
    s.on('error', (err: grpc.ServiceError) => {
      if (s === this.stream) this.fail(new ServerError('experts_unavailable', `worker ${this.address} lost: ${fromServiceError(err).message}`));
    });
    s.on('end', () => {
      if (s === this.stream) this.fail(new ServerError('experts_unavailable', `worker ${this.address} ended its stream`));
    });
    this.lastSeenMs = Date.now();
    this.lastError = null;
    this.attempt = 0;
    this.setState('live');
    if (!this.pingTimer) {
      this.pingTimer = setInterval(() => {
        // Only refreshes lastSeenMs: a missed ping does not take the worker down (a stream error does).
        if (this.state === 'live' && Date.now() - this.lastSeenMs >= IDLE_PING_MS) void this.health().catch(() => undefined);
      }, IDLE_PING_MS);
      this.pingTimer.unref();
    }
  }

  private onDeadline(id: number, timeoutMs: number): void {
    const p = this.pending.get(id);
    if (!p) return;
    // The exchange's deadline passed: the worker is slow or gone; its rows go elsewhere.
    this.fail(new ServerError('deadline_exceeded', `worker ${this.address} did not answer within ${timeoutMs} ms`));
  }

  private fail(err: ServerError): void {
    if (this.state === 'closed') return;
    this.lastError = err;
    const s = this.stream;
    this.stream = null;
    this.rejectAll(err);
    s?.cancel(); // the worker sees 'cancelled' and drops what it queued for this stream
    if (this.state !== 'down') {
      this.log(`worker ${this.index} (${this.address}) down: ${err.message}`, 'warn');
      this.setState('down');
    }
    this.scheduleProbe();
  }

  private rejectAll(err: ServerError): void {
    if (this.pending.size === 0) return;
    const all = [...this.pending.values()];
    this.pending.clear();
    for (const p of all) {
      clearTimeout(p.timer);
      p.reject(err);
    }
  }

  private scheduleProbe(): void {
    if (this.probeTimer || this.state === 'closed') return;
    const delay = backoffMs(this.attempt++, this.opts.reconnectMinMs, this.opts.reconnectMaxMs);
    this.probeTimer = setTimeout(() => {
      this.probeTimer = null;
      void this.probe();
    }, delay);
    this.probeTimer.unref(); // a gateway may exit while a worker is down
  }

  private async probe(): Promise<void> {
    if (this.state !== 'down') return;
    try {
      const h = await this.health();
      if (h.status !== SERVING_STATUS.SERVING) throw new ServerError('experts_unavailable', `worker ${this.address} is not serving yet`);
      const info = await this.unary<InfoReply>('info', this.opts.controlDeadlineMs, false);
      this.check(info, this.expected);
      if (this.state !== 'down') return; // closed meanwhile
      this.info = info;
      this.reconnects++;
      this.openStream();
      this.log(`worker ${this.index} (${this.address}) is back (pid ${info.pid})`, 'info');
    } catch (err) {
      if (this.state !== 'down') return;
      this.lastError = fromServiceError(err as Error, `worker ${this.address}`); // a ServerError passes through unchanged
      this.scheduleProbe();
    }
  }

  private setState(s: WorkerState): void {
    this.state = s;
    this.onStateChange(this);
  }

  private check(info: InfoReply, expected: ReadonlyMap<number, readonly number[]> | null): void {
    const id = this.identity;
    const where = `worker ${this.address} (${info.workerId})`;
    if (info.configSha256 !== id.configSha256 || info.hiddenSize !== id.hiddenSize || info.nRoutedExperts !== id.nRoutedExperts || info.numLayers !== id.numLayers) {
      throw new ServerError('invalid_request', `${where} serves another model (${info.architecture}, hidden ${info.hiddenSize}, ${info.nRoutedExperts} experts, config ${info.configSha256.slice(0, 12)}) than the gateway (hidden ${id.hiddenSize}, ${id.nRoutedExperts} experts, config ${id.configSha256.slice(0, 12)})`);
    }
    if (!expected) return;
    const held = heldOf(info);
    for (const [layer, experts] of expected) {
      const h = new Set(held.get(layer) ?? []);
      const lacking = experts.filter((e) => !h.has(e));
      if (lacking.length > 0) throw new ServerError('invalid_request', `${where} does not hold experts ${lacking.join(',')} of layer ${layer} that the placement gives it`);
    }
  }

  private unary<T>(method: 'info' | 'health' | 'stats', timeoutMs: number, waitForReady: boolean): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const fn = this.client[method] as unknown as (req: object, md: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: T) => void) => void;
      fn.call(this.client, {}, new grpc.Metadata({ waitForReady }), { deadline: grpcDeadline(performance.now() + timeoutMs) }, (err, res) => {
        if (err) reject(fromServiceError(err, `worker ${this.address} ${method}`));
        else resolve(res as T);
      });
    });
  }
}

/** Info's held experts as layer -> experts. */
export function heldOf(info: InfoReply): Map<number, number[]> {
  return new Map(info.layers.map((l) => [l.layer, [...l.experts]]));
}

/** How a gRPC target string is written for a --worker-addrs entry or a Unix socket path. */
export function grpcTarget(addr: string): string {
  if (addr.startsWith('unix:')) return addr;
  if (addr.startsWith('/')) return `unix:${addr}`;
  return addr;
}

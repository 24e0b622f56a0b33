/**
 * Topologies: where the routed experts run, behind one `RoutedExperts` for the gateway.
 *
 *   in-process   --workers 0: one ExpertShard of every expert in the gateway process
 *   local        --workers N: N child processes (`moeserve worker`) on Unix sockets (or loopback
 *                TCP), the experts sharded among them by --placement / --replicate
 *   remote       --worker-addrs a,b,...: running workers; the placement is what they report (Info)
 *
 * Local children: each prints a ready line the parent waits for; each is told --exit-with-stdin
 * (it exits when the parent dies, even by SIGKILL); the parent kills them on exit and on
 * SIGINT/SIGTERM, and on close().
 */
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { isMainThread } from 'node:worker_threads';
import { ServerError } from '../../services/common/src/errors.js';
import { Checkpoint } from '../../services/model/src/checkpoint/checkpoint.js';
import { allExperts, moeLayers, type MoeModelConfig } from '../../services/model/src/config.js';
import { modelFingerprint } from '../../services/model/src/model-dir.js';
import type { WeightSource } from '../../services/model/src/graphs/source.js';
import type { RuntimeOptions } from '../../services/model/src/runtime/onnx.js';
import { readTls, type TlsMaterial, type TlsPaths } from '../../proto/index.js';
import { formatExpertsSpec } from '../../services/model/src/experts-spec.js';
import { ExpertShard } from '../../workers/src/shard.js';
import { spawnWorker, stopProcess } from '../../workers/src/spawn.js';
import { grpcTarget, heldOf, WorkerClient, type ModelIdentity } from './client.js';
import { ShardedExperts } from './dispatch.js';
import { basePlacement, describeHomes, expertsOf, parseReplicate, placementFromHeld, replicate, uniformPlacement } from './placement.js';
import { RoutingStats } from './stats.js';
import { DEFAULT_DISPATCH, type DispatchOptions, type LogFn, type Placement, type RoutedExperts } from './types.js';

export interface TopologyOptions {
  /** Checkpoint folder (the gateway's; local workers read the same). */
  readonly modelDir: string;
  /** Local worker processes to start; 0 = experts in-process. Ignored when workerAddrs is set. @defaultValue 0 */
  readonly workers: number;
  /** Running workers (`host:port` or `unix:/path`); null = none. */
  readonly workerAddrs: readonly string[] | null;
  /** contiguous | round-robin | explicit "0-2;3-5;6,7" (local only). @defaultValue 'contiguous' */
  readonly placement: string;
  /** all | N | e:n,... (local only); null = one copy of each expert. */
  readonly replicate: string | null;
  /** Local workers listen on Unix sockets (≈25% faster here) or loopback TCP. @defaultValue 'unix' */
  readonly transport: 'unix' | 'tcp';
  /** Gateway runtime: local workers use the same device and threads. */
  readonly runtime: RuntimeOptions;
  readonly dispatch: DispatchOptions;
  /** PEM files; a local worker gets the same files (cert/key to serve, ca for mutual TLS). */
  readonly tls: TlsPaths | null;
  /** Time a local worker may take to load and print its ready line, ms. @defaultValue 300000 */
  readonly startTimeoutMs: number;
  /** Time to reach a running worker at start, ms. @defaultValue 10000 */
  readonly connectTimeoutMs: number;
  /** Extra node flags for local workers (e.g. --cpu-prof in benchmarks). */
  readonly workerNodeArgs?: readonly string[];
  /** pino level of local workers (their logs go to this process's stderr). @defaultValue 'warn' */
  readonly workerLogLevel?: string;
  readonly log: LogFn;
}

export const DEFAULT_TOPOLOGY: Omit<TopologyOptions, 'modelDir' | 'runtime' | 'log'> = Object.freeze({
  workers: 0,
  workerAddrs: null,
  placement: 'contiguous',
  replicate: null,
  transport: 'unix',
  dispatch: DEFAULT_DISPATCH,
  tls: null,
  startTimeoutMs: 300_000,
  connectTimeoutMs: 10_000,
});

export interface WorkerHandle {
  readonly index: number;
  readonly address: string;
  /** Local child process (null for remote workers). */
  readonly process: ChildProcess | null;
  readonly client: WorkerClient | null;
  /** Experts per MoE layer it holds. */
  readonly held: ReadonlyMap<number, readonly number[]>;
}

export interface Topology {
  readonly kind: 'in-process' | 'local' | 'remote';
  /** What the gateway's DenseRunner / Engine calls. */
  readonly experts: RoutedExperts;
  readonly stats: RoutingStats;
  readonly placement: Placement | null;
  readonly workers: readonly WorkerHandle[];
  /** One line for logs ("3 local workers: w0: 0-2 | w1: 3-5 | w2: 6,7"). */
  readonly description: string;
  /** The last routed failure (null in-process, or while none happened). */
  lastError(): ServerError | null;
  close(): Promise<void>;
}

/** Starts the experts' topology for a model (see the header). */
export async function startTopology(cfg: MoeModelConfig, opts: TopologyOptions): Promise<Topology> {
  const identity: ModelIdentity = { hiddenSize: cfg.hiddenSize, numLayers: cfg.numLayers, nRoutedExperts: cfg.moe.nRoutedExperts, configSha256: modelFingerprint(opts.modelDir, cfg) };
  const tls = opts.tls ? readTls(opts.tls) : null;
  if (opts.workerAddrs && opts.workerAddrs.length > 0) return startRemote(cfg, opts, identity, tls);
  if (opts.workers > 0) return startLocal(cfg, opts, identity, tls);
  return startInProcess(cfg, opts);
}

// ---------------------------------------------------------------- in-process

/**
 * The in-process shard of every expert, counted like the distributed ones (metrics look the
 * same): one worker, "local", that every routed row goes to.
 */
class InProcessExperts implements RoutedExperts {
  readonly inProcess = true;
  /** [1] rows of the current call (the one worker's count; reused, avoid GC per layer). */
  private readonly rows = new Int32Array(1);
  constructor(
    private readonly shard: ExpertShard,
    readonly stats: RoutingStats,
  ) {}
  async forward(layer: number, x: Float32Array, numRows: number, ids: Int32Array, weights: Float32Array, k: number, out: Float32Array): Promise<void> {
    this.stats.recordExperts(layer, ids, numRows, k);
    this.rows[0] = numRows;
    this.stats.recordWorkers(layer, this.rows);
    const t0 = performance.now();
    await this.shard.forward(layer, x, numRows, ids, weights, k, out);
    const ms = performance.now() - t0;
    this.stats.forwardMs += ms;
    this.stats.criticalComputeMs += ms;
  }
}

/** Every expert of every MoE layer in this process, from an open weight source (the caller's checkpoint). */
export async function inProcessTopology(cfg: MoeModelConfig, ws: WeightSource, runtime: RuntimeOptions): Promise<Topology> {
  const shard = await ExpertShard.load(cfg, ws, allExperts(cfg), runtime);
  const stats = new RoutingStats(cfg.numLayers, cfg.moe.nRoutedExperts, 1);
  return { kind: 'in-process', experts: new InProcessExperts(shard, stats), stats, placement: null, workers: [], description: 'experts in-process', lastError: () => null, close: async () => undefined };
}

async function startInProcess(cfg: MoeModelConfig, opts: TopologyOptions): Promise<Topology> {
  const ckpt = Checkpoint.open(opts.modelDir);
  try {
    return await inProcessTopology(cfg, ckpt, opts.runtime);
  } finally {
    ckpt.close();
  }
}

// ---------------------------------------------------------------- remote

async function startRemote(cfg: MoeModelConfig, opts: TopologyOptions, identity: ModelIdentity, tls: TlsMaterial | null): Promise<Topology> {
  const addrs = opts.workerAddrs!.map(grpcTarget);
  if (opts.placement !== DEFAULT_TOPOLOGY.placement || opts.replicate) {
    opts.log('--placement / --replicate apply to local workers; running workers hold what they were started with', 'warn');
  }
  const clients = addrs.map((a, i) => new WorkerClient(i, a, identity, opts.dispatch, tls, opts.log));
  try {
    const infos = await Promise.all(clients.map((c) => c.connect(null, opts.connectTimeoutMs)));
    const placement = placementFromHeld(infos.map(heldOf), moeLayers(cfg), cfg.moe.nRoutedExperts);
    const stats = new RoutingStats(cfg.numLayers, cfg.moe.nRoutedExperts, clients.length);
    const experts = new ShardedExperts(cfg.hiddenSize, placement, clients, opts.dispatch, stats);
    const workers = clients.map((c, i) => ({ index: i, address: c.address, process: null, client: c, held: heldOf(infos[i]!) }));
    const description = `${clients.length} remote workers: ${workers.map((w) => `w${w.index} ${w.address}: ${formatExpertsSpec(w.held, moeLayers(cfg))}`).join(' | ')}`;
    return { kind: 'remote', experts, stats, placement, workers, description, lastError: () => experts.lastError, close: async () => experts.close() };
  } catch (err) {
    for (const c of clients) c.close();
    throw err;
  }
}

// ---------------------------------------------------------------- local

async function startLocal(cfg: MoeModelConfig, opts: TopologyOptions, identity: ModelIdentity, tls: TlsMaterial | null): Promise<Topology> {
  const X = cfg.moe.nRoutedExperts;
  const N = opts.workers;
  const layers = moeLayers(cfg);
  const homes = replicate(basePlacement(opts.placement, X, N), parseReplicate(opts.replicate ?? '', X, N), N);
  const placement = uniformPlacement(homes, layers, N);
  const sockDir = opts.transport === 'unix' ? fs.mkdtempSync(path.join(os.tmpdir(), 'moeserve-')) : null;
  const children: ChildProcess[] = [];
  const clients: WorkerClient[] = [];
  const cleanup = async () => {
    for (const c of clients) c.close();
    await Promise.all(children.map((c) => stopProcess(c)));
    if (sockDir) fs.rmSync(sockDir, { recursive: true, force: true });
  };
  try {
    const ready = await Promise.all(
      Array.from({ length: N }, (_, i) => {
        const held = new Map(layers.map((l) => [l, expertsOf(homes, i)]));
        const listen = sockDir ? ['--socket', path.join(sockDir, `w${i}.sock`)] : ['--port', '0'];
        const args = [
          '--model',
          path.resolve(opts.modelDir),
          '--experts',
          formatExpertsSpec(held, layers),
          ...listen,
          '--device',
          opts.runtime.device === 'cuda' ? `cuda:${opts.runtime.deviceId}` : 'cpu',
          '--threads',
          String(opts.runtime.intraOpThreads),
          '--quantization',
          opts.runtime.quantization ?? 'none',
          '--max-message-bytes',
          String(opts.dispatch.maxMessageBytes),
          '--id',
          `local-${i}`,
          '--log-level',
          opts.workerLogLevel ?? 'warn',
          '--exit-with-stdin',
          ...tlsArgs(opts.tls),
        ];
        const w = spawnWorker({ args, nodeArgs: opts.workerNodeArgs, name: `local worker ${i}`, startTimeoutMs: opts.startTimeoutMs, onStderrLine: (line) => opts.log(`[worker ${i}] ${line}`, 'warn') });
        children.push(w.child);
        track(w.child);
        return w.ready.then((r) => ({ address: r.address, held }));
      }),
    );
    ready.forEach((r, i) => clients.push(new WorkerClient(i, r.address, identity, opts.dispatch, tls, opts.log)));
    await Promise.all(clients.map((c, i) => c.connect(ready[i]!.held, opts.connectTimeoutMs)));
    const stats = new RoutingStats(cfg.numLayers, X, N);
    const experts = new ShardedExperts(cfg.hiddenSize, placement, clients, opts.dispatch, stats);
    const workers = clients.map((c, i) => ({ index: i, address: c.address, process: children[i]!, client: c, held: ready[i]!.held }));
    return {
      kind: 'local',
      experts,
      stats,
      placement,
      workers,
      description: `${N} local workers (${opts.transport}): ${describeHomes(homes, N)}`,
      lastError: () => experts.lastError,
      close: cleanup,
    };
  } catch (err) {
    await cleanup();
    throw err;
  }
}

function tlsArgs(tls: TlsPaths | null): string[] {
  if (!tls) return [];
  const out: string[] = [];
  if (tls.cert) out.push('--tls-cert', path.resolve(tls.cert));
  if (tls.key) out.push('--tls-key', path.resolve(tls.key));
  if (tls.ca) out.push('--tls-ca', path.resolve(tls.ca));
  return out;
}

// ---------------------------------------------------------------- children die with the parent

const live = new Set<ChildProcess>();
let hooked = false;

function track(child: ChildProcess): void {
  live.add(child);
  child.once('exit', () => live.delete(child));
  if (hooked) return;
  hooked = true;
  process.on('exit', killAll);
  // Signals can only be handled on the main thread. If nobody else handles the signal, re-raise
  // it after killing the children so the process still ends as it would have.
  if (!isMainThread) return;
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const handler = () => {
      killAll();
      if (process.listenerCount(sig) === 1) {
        process.removeListener(sig, handler);
        process.kill(process.pid, sig);
      }
    };
    process.on(sig, handler);
  }
}

function killAll(): void {
  for (const c of live) c.kill('SIGKILL');
  live.clear();
}

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
 * SIGINT/SIGTERM, and on close(). A local child that dies is restarted by the parent on the same
 * address, with exponential backoff (RESPAWN_*); its WorkerClient's probe finds it there and it
 * rejoins. Remote workers rejoin by themselves when they come back at their address.
 *
 * Health: `status()` says which workers are up, when each last answered, and which experts have
 * no live worker (per MoE layer); `onChange` fires whenever a worker goes down or comes back.
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
import { backoffMs } from './deadline.js';
import { ShardedExperts } from './dispatch.js';
import { basePlacement, describeHomes, expertsOf, parseReplicate, placementFromHeld, replicate, uniformPlacement } from './placement.js';
import { DEFAULT_REBALANCE, Rebalancer, type RebalanceOptions } from './rebalance.js';
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
  /** Live rebalancing (rebalance.ts) of sharded experts; absent = DEFAULT_REBALANCE (manual only). */
  readonly rebalance?: RebalanceOptions;
  /** Steps (calls per MoE layer) in the routing statistics' sliding window. @defaultValue 64 */
  readonly loadWindowSteps?: number;
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
  /** Local child process (null for remote workers); the current one after a restart. */
  process: ChildProcess | null;
  readonly client: WorkerClient | null;
  /** Experts per MoE layer it holds. */
  readonly held: ReadonlyMap<number, readonly number[]>;
}

export interface Topology {
  readonly kind: 'in-process' | 'local' | 'remote';
  /** What the gateway's DenseRunner / Engine calls. */
  readonly experts: RoutedExperts;
  readonly stats: RoutingStats;
  /** The placement at start; the current one is `experts.placement` once rebalanced. */
  readonly placement: Placement | null;
  /** Live EPLB rebalancing of sharded experts; null in-process. */
  readonly rebalancer: Rebalancer | null;
  readonly workers: readonly WorkerHandle[];
  /** One line for logs ("3 local workers: w0: 0-2 | w1: 3-5 | w2: 6,7"). */
  readonly description: string;
  /** The last routed failure (null in-process, or while none happened). */
  lastError(): ServerError | null;
  /** Workers up or down and the experts left without a live worker; null in-process. */
  status(): ExpertsStatus | null;
  /** Called whenever a worker goes down or comes back (set by the owner). */
  onChange: () => void;
  close(): Promise<void>;
}

/** One worker as health checks and /metrics see it. */
export interface WorkerStatus {
  /** w0, w1, ... (the /metrics `worker` label). */
  readonly name: string;
  readonly address: string;
  readonly up: boolean;
  /** When it last answered or (re)connected, Unix ms; 0 = never. */
  readonly lastSeenMs: number;
  /** Times the parent restarted this local worker (0 for remote ones). */
  readonly restarts: number;
}

/**
 * ok: every worker up. degraded: some worker down, every expert still has a live replica.
 * unavailable: some experts have no live worker (rows routed to them fail with 503); down: no
 * worker is up.
 */
export interface ExpertsStatus {
  readonly state: 'ok' | 'degraded' | 'unavailable' | 'down';
  readonly workers: readonly WorkerStatus[];
  /** Per MoE layer with any, the experts no live worker holds, ascending. */
  readonly unavailable: readonly { readonly layer: number; readonly experts: readonly number[] }[];
}

/** The status of sharded experts from the placement and each worker's connection. */
export function expertsStatus(placement: Placement, clients: readonly WorkerClient[], restarts: readonly number[]): ExpertsStatus {
  const workers = clients.map((c, i) => ({ name: `w${c.index}`, address: c.address, up: c.live, lastSeenMs: c.lastSeenMs, restarts: restarts[i] ?? 0 }));
  const unavailable: { layer: number; experts: number[] }[] = [];
  for (const [layer, homes] of placement.layers) {
    const experts: number[] = [];
    homes.forEach((holders, e) => {
      if (!holders.some((w) => clients[w]?.live)) experts.push(e);
    });
    if (experts.length > 0) unavailable.push({ layer, experts });
  }
  const upCount = workers.filter((w) => w.up).length;
  const state = upCount === 0 ? 'down' : unavailable.length > 0 ? 'unavailable' : upCount < workers.length ? 'degraded' : 'ok';
  return { state, workers, unavailable };
}

/** Restart backoff of a local worker that died: first delay, cap, and the uptime that resets it, ms. */
const RESPAWN_MIN_MS = 200;
const RESPAWN_MAX_MS = 10_000;
const RESPAWN_RESET_MS = 30_000;

/** Whether these options put the routed experts on worker processes (local or remote). */
export function expertsOnWorkers(opts: Pick<TopologyOptions, 'workers' | 'workerAddrs'>): boolean {
  return (opts.workerAddrs?.length ?? 0) > 0 || opts.workers > 0;
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
  /** [1] rows and (row, expert) pairs of the current call (the one worker's counts; reused, avoid GC per layer). */
  private readonly rows = new Int32Array(1);
  private readonly slots = new Int32Array(1);
  constructor(
    private readonly shard: ExpertShard,
    readonly stats: RoutingStats,
  ) {}
  async forward(layer: number, x: Float32Array, numRows: number, ids: Int32Array, weights: Float32Array, k: number, out: Float32Array): Promise<void> {
    this.stats.recordExperts(layer, ids, numRows, k);
    this.rows[0] = numRows;
    let slots = 0;
    for (let i = 0; i < numRows * k; i++) if (ids[i]! >= 0) slots++;
    this.slots[0] = slots;
    this.stats.recordWorkers(layer, this.rows, this.slots);
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
  return {
    kind: 'in-process',
    experts: new InProcessExperts(shard, stats),
    stats,
    placement: null,
    rebalancer: null,
    workers: [],
    description: 'experts in-process',
    lastError: () => null,
    status: () => null,
    onChange: () => undefined,
    close: async () => undefined,
  };
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
    const stats = new RoutingStats(cfg.numLayers, cfg.moe.nRoutedExperts, clients.length, opts.loadWindowSteps);
    const experts = new ShardedExperts(cfg.hiddenSize, placement, clients, opts.dispatch, stats);
    const rebalancer = new Rebalancer(experts, clients, stats, opts.rebalance ?? DEFAULT_REBALANCE, opts.log);
    const workers = clients.map((c, i) => ({ index: i, address: c.address, process: null, client: c, held: heldOf(infos[i]!) }));
    const description = `${clients.length} remote workers: ${workers.map((w) => `w${w.index} ${w.address}: ${formatExpertsSpec(w.held, moeLayers(cfg))}`).join(' | ')}`;
    const restarts = clients.map(() => 0);
    const topo: Topology = {
      kind: 'remote',
      experts,
      stats,
      placement,
      rebalancer,
      workers,
      description,
      lastError: () => experts.lastError,
      status: () => expertsStatus(experts.placement, clients, restarts),
      onChange: () => undefined,
      close: async () => experts.close(),
    };
    for (const c of clients) c.onStateChange = () => topo.onChange();
    return topo;
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
  /** [N] the current child of each worker (replaced on restart). */
  const children: ChildProcess[] = [];
  /** [N] `moeserve worker` arguments; a TCP worker's port 0 becomes its first port (restarts reuse the address). */
  const argsOf: string[][] = [];
  const clients: WorkerClient[] = [];
  let closing = false;
  const timers = new Set<NodeJS.Timeout>();
  const cleanup = async () => {
    closing = true;
    for (const t of timers) clearTimeout(t);
    for (const c of clients) c.close();
    await Promise.all(children.map((c) => stopProcess(c)));
    if (sockDir) fs.rmSync(sockDir, { recursive: true, force: true });
  };
  const spawnOne = (i: number) => {
    const w = spawnWorker({ args: argsOf[i]!, nodeArgs: opts.workerNodeArgs, name: `local worker ${i}`, startTimeoutMs: opts.startTimeoutMs, onStderrLine: (line) => opts.log(`[worker ${i}] ${line}`, 'warn') });
    children[i] = w.child;
    track(w.child);
    return w;
  };
  try {
    const ready = await Promise.all(
      Array.from({ length: N }, (_, i) => {
        const held = new Map(layers.map((l) => [l, expertsOf(homes, i)]));
        const listen = sockDir ? ['--socket', path.join(sockDir, `w${i}.sock`)] : ['--port', '0'];
        argsOf[i] = [
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
        return spawnOne(i).ready.then((r) => {
          if (!sockDir) argsOf[i] = argsOf[i]!.map((a, j, all) => (j > 0 && all[j - 1] === '--port' ? String(r.port) : a));
          return { address: r.address, held };
        });
      }),
    );
    ready.forEach((r, i) => clients.push(new WorkerClient(i, r.address, identity, opts.dispatch, tls, opts.log)));
    await Promise.all(clients.map((c, i) => c.connect(ready[i]!.held, opts.connectTimeoutMs)));
    const stats = new RoutingStats(cfg.numLayers, X, N, opts.loadWindowSteps);
    const experts = new ShardedExperts(cfg.hiddenSize, placement, clients, opts.dispatch, stats);
    const rebalancer = new Rebalancer(experts, clients, stats, opts.rebalance ?? DEFAULT_REBALANCE, opts.log);
    // A worker restarted after a rebalance loads what the current placement gives it.
    rebalancer.onPlaced = (held) => {
      held.forEach((m, i) => (argsOf[i] = argsOf[i]!.map((a, j, all) => (j > 0 && all[j - 1] === '--experts' ? formatExpertsSpec(m, layers) : a))));
    };
    const workers = clients.map((c, i) => ({ index: i, address: c.address, process: children[i]!, client: c, held: ready[i]!.held }));
    const restarts = new Array<number>(N).fill(0);
    const attempts = new Array<number>(N).fill(0);

    // Supervision: a worker that exits is started again on the same address after a backoff
    // (reset once a worker has stayed up RESPAWN_RESET_MS); its client's probe reconnects.
    const supervise = (i: number, child: ChildProcess) => {
      const startedAt = Date.now();
      const onExit = (code: number | null, signal: NodeJS.Signals | null) => {
        if (closing || children[i] !== child) return;
        if (Date.now() - startedAt >= RESPAWN_RESET_MS) attempts[i] = 0;
        const delay = backoffMs(attempts[i]++, RESPAWN_MIN_MS, RESPAWN_MAX_MS);
        opts.log(`local worker ${i} exited (${signal ?? `code ${code}`}); restarting it in ${delay} ms`, 'warn');
        const t = setTimeout(() => {
          timers.delete(t);
          if (!closing) restart(i);
        }, delay);
        timers.add(t);
      };
      if (child.exitCode !== null || child.signalCode !== null) onExit(child.exitCode, child.signalCode);
      else child.once('exit', onExit);
    };
    const restart = (i: number) => {
      const w = spawnOne(i);
      workers[i]!.process = w.child;
      supervise(i, w.child); // an exit during its start schedules the next try
      w.ready.then(
        (r) => {
          restarts[i]!++;
          opts.log(`local worker ${i} restarted (pid ${r.pid}) at ${r.address}; it rejoins once its connection is back`, 'info');
        },
        (err: Error) => {
          opts.log(`local worker ${i} did not restart: ${err.message}`, 'warn');
          if (w.child.exitCode === null && w.child.signalCode === null) w.child.kill('SIGKILL'); // start timeout: its exit retries
        },
      );
    };
    children.forEach((c, i) => supervise(i, c));

    const topo: Topology = {
      kind: 'local',
      experts,
      stats,
      placement,
      rebalancer,
      workers,
      description: `${N} local workers (${opts.transport}): ${describeHomes(homes, N)}`,
      lastError: () => experts.lastError,
      status: () => expertsStatus(experts.placement, clients, restarts),
      onChange: () => undefined,
      close: cleanup,
    };
    for (const c of clients) c.onStateChange = () => topo.onChange();
    return topo;
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

/**
 * The expert worker service: frozen options -> model folder opened lazily -> the experts named by
 * --experts read (only their tensors) and built into ONNX Runtime sessions -> gRPC server.
 * `moeserve worker` (services/cli/worker.ts) parses flags into `WorkerOptions` and calls
 * `startWorker`; nothing here reads argv or the environment.
 */
import fs from 'node:fs';
import os from 'node:os';
import type { Logger } from 'pino';
import type { RuntimeOptions } from '../../services/model/src/runtime/onnx.js';
import type { TlsMaterial } from '../../proto/index.js';
import { formatExpertsSpec, parseExpertsSpec } from '../../services/model/src/experts-spec.js';
import { moeLayers } from '../../services/model/src/config.js';
import { openModelDir } from '../../services/model/src/model-dir.js';
import { Checkpoint } from '../../services/model/src/checkpoint/checkpoint.js';
import { ExpertWorkerServer } from './server.js';
import { ExpertShard, type ShardExperts } from './shard.js';
import { LiveShard, type ShardLoader } from './live-shard.js';

/** The line a worker process prints on stdout once it serves, followed by JSON ({address, port, pid, experts, bytesRead}). */
export const READY_PREFIX = 'MOESERVE_WORKER_READY ';

export interface WorkerOptions {
  /** Hugging Face checkpoint folder. */
  readonly modelDir: string;
  /** --experts SPEC (services/model/src/experts-spec.ts). @defaultValue 'all' */
  readonly experts: string;
  /** `host:port` (port 0 = any free port) or `unix:/abs/path.sock`. @defaultValue '127.0.0.1:0' */
  readonly listen: string;
  readonly runtime: RuntimeOptions;
  /** Device as given on the command line (`cpu`, `cuda`, `cuda:1`), reported by Info. */
  readonly requestedDevice: string;
  /** gRPC send/receive limit, bytes. @defaultValue 64 MiB */
  readonly maxMessageBytes: number;
  readonly tls: TlsMaterial | null;
  /** @defaultValue `${hostname}:${pid}` */
  readonly workerId: string;
}

export interface RunningWorker {
  readonly server: ExpertWorkerServer;
  /** Bound address (`host:port` or `unix:/path`). */
  readonly address: string;
  readonly port: number;
  /** Checkpoint tensor bytes read at load: the held experts' weights only. */
  readonly bytesRead: number;
  readonly expertsSpec: string;
  close(): Promise<void>;
}

export function defaultWorkerId(): string {
  return `${os.hostname()}:${process.pid}`;
}

export async function startWorker(opts: WorkerOptions, log: Logger): Promise<RunningWorker> {
  const { cfg, checkpoint, fingerprint } = openModelDir(opts.modelDir);
  let bytesRead = 0;
  let shard: ExpertShard;
  const experts = parseExpertsSpec(opts.experts, cfg);
  // A worker's pool does not spin: between requests it waits on the gateway, whose core it would hold.
  const runtime = { ...opts.runtime, poolSpinning: false };
  try {
    shard = await ExpertShard.load(cfg, checkpoint, experts, runtime);
    bytesRead = checkpoint.bytesRead;
  } finally {
    // Sessions own copies of the weights; the files are not needed any more.
    checkpoint.close();
  }
  const spec = formatExpertsSpec(experts, moeLayers(cfg));
  if (opts.listen.startsWith('unix:')) {
    // A socket file left by a worker that was killed would make bind fail with EADDRINUSE.
    const p = opts.listen.slice('unix:'.length).replace(/^\/\/(?=\/)/, '');
    if (fs.existsSync(p) && fs.statSync(p).isSocket()) fs.unlinkSync(p);
  }
  // Rebalancing (Load) reads the newly placed experts from the checkpoint, opened per load.
  const loader: ShardLoader = async (wanted: ShardExperts) => {
    const ckpt = Checkpoint.open(opts.modelDir);
    try {
      const s = await ExpertShard.load(cfg, ckpt, wanted, runtime);
      return { shard: s, bytesRead: ckpt.bytesRead };
    } finally {
      ckpt.close();
    }
  };
  const server = await ExpertWorkerServer.start(cfg, new LiveShard(cfg, shard, loader), {
    listen: opts.listen,
    maxMessageBytes: opts.maxMessageBytes,
    tls: opts.tls,
    workerId: opts.workerId,
    configSha256: fingerprint,
    requestedDevice: opts.requestedDevice,
    checkpointBytesRead: bytesRead,
    log,
  });
  log.info({ address: server.address, experts: spec, device: shard.sessionDevice, bytesRead, tls: opts.tls ? (opts.tls.ca ? 'mutual' : 'server') : 'off' }, 'expert worker serving');
  return {
    server,
    address: server.address,
    port: server.port,
    bytesRead,
    expertsSpec: spec,
    close: () => server.close(),
  };
}

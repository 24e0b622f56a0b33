/**
 * workers/: the expert worker — a shard of the routed experts of every MoE layer, served over
 * gRPC (proto/expert.proto).
 *
 * - src/shard.ts         ExpertShard: the held experts as one ONNX Runtime session per layer and
 *                        the per-row weighted combine (also the in-process topology)
 * - src/server.ts        ExpertWorkerServer: Forward stream, Info, Health, Stats
 * - src/main.ts          startWorker(options): load only the held experts, then serve
 * - src/spawn.ts         a worker as a child process: spawn, wait for its ready line, stop
 * `moeserve worker` (services/cli/worker.ts) is the process entry.
 */
export { ExpertShard, type ShardExperts } from './src/shard.js';
export { ExpertWorkerServer, type WorkerServerOptions } from './src/server.js';
export { startWorker, READY_PREFIX, type WorkerOptions, type RunningWorker } from './src/main.js';
export { spawnWorker, stopProcess, MOESERVE_BIN, type ReadyInfo, type WorkerProcess } from './src/spawn.js';

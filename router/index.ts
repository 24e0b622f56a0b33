/**
 * router/: from gate logits to routed-expert outputs, wherever the experts run.
 *
 * - src/gating.ts     top-k gating variants (pure; called by the gateway's DenseRunner)
 * - src/types.ts      boundary types and the data flow of one MoE layer (start here)
 * - src/placement.ts  expert -> worker replicas (contiguous, round-robin, explicit, replicas)
 * - src/dispatch.ts   planDispatch (pure) and ShardedExperts: one request per worker per layer,
 *                     failover to replicas, combine
 * - src/client.ts     one worker connection: Forward stream, deadlines, reconnect with backoff
 * - src/stats.ts      rows per expert / per worker, wire counters (metrics)
 * - src/deadline.ts   deadline and backoff helpers (pure)
 * - src/topology.ts   in-process | local child workers (restarted when they die) | remote workers -> one RoutedExperts; their health
 * - src/options.ts    the topology's CLI flags -> frozen TopologyOptions
 */
export * from './src/types.js';
export { contiguous, roundRobin, explicit, basePlacement, parseReplicate, replicate, uniformPlacement, placementFromHeld, expertsOf, describeHomes, type ExpertHomes } from './src/placement.js';
export { planDispatch, DispatchPlan, ShardedExperts } from './src/dispatch.js';
export { WorkerClient, grpcTarget, heldOf, type ModelIdentity } from './src/client.js';
export { RoutingStats, type RoutingStatsSnapshot } from './src/stats.js';
export { expertsOnWorkers, startTopology, DEFAULT_TOPOLOGY, expertsStatus, type ExpertsStatus, type Topology, type TopologyOptions, type WorkerHandle, type WorkerStatus } from './src/topology.js';
export { TOPOLOGY_FLAGS, TOPOLOGY_HELP, topologyFromFlags } from './src/options.js';

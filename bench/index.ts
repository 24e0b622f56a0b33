/**
 * bench/ — benchmarks that print ratios measured side by side in one run (never timed tests):
 * engine.ts (bench:engine), sharding.ts (bench:sharding), serve.ts (bench:serve), kv.ts
 * (bench:kv); lib/ generates and caches the perf checkpoints and holds small statistics helpers.
 */
export {};

/**
 * services/queue/ — BullMQ work that must outlive a process: experiment sweeps (`moeserve
 * experiment`), later the batch API.
 *
 * Owns: sweep files (src/sweep.ts: parse, strict validation, points), the experiment queues and
 * their Redis keys (src/experiment-queue.ts: the key and payload list is at its top), one real
 * run per point (src/run-point.ts, through the CLI as child processes: src/processes.ts; network
 * namespaces: src/netns.ts; counters: src/probe.ts; cached checkpoints: src/checkpoint-cache.ts),
 * the decode-step cost model (src/cost-model.ts, pure), and reports with plots (src/report.ts,
 * src/plots.ts).
 *
 * Data flow: sweep file -> Sweep -> Point[] -> BullMQ flow (points, then the report) -> per point:
 * checkpoint -> workers + gateway processes -> load runner (loadtest/) -> PointMeasurement ->
 * Redis hash + results.jsonl -> report.md, points.csv, SVG/PNG plots.
 */
export { validateSweep, parseSweepText, expandPoints, type Sweep, type Point } from './src/sweep.js';
export { stepCost, stepTime, projectReference, networkBoundFrom, type StepShape } from './src/cost-model.js';
export { submitSweep, startExperimentWorker, experimentStatus, type ExperimentMeta, type PointResult } from './src/experiment-queue.js';
export { writeReport } from './src/report.js';

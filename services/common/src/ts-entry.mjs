// Bootstrap for worker threads and child processes: registers tsx, then imports the TypeScript
// module given as the first argument (workerData.entry for threads, argv[2] for processes).
import { register } from 'tsx/esm/api';
import { isMainThread, workerData } from 'node:worker_threads';

register();
const entry = isMainThread ? process.argv[2] : workerData?.entry;
if (!entry) throw new Error('ts-entry: no module to run');
await import(entry);

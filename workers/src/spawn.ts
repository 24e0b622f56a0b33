/**
 * Starting `moeserve worker` as a child process and waiting for its ready line (the parent side
 * of the READY_PREFIX protocol). Used by the router's local topology, benchmarks and tests.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ServerError } from '../../services/common/src/errors.js';
import { onLines } from '../../services/common/src/proc.js';
import { READY_PREFIX } from './main.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
/** The CLI entry (registers tsx, then runs services/main.ts). */
export const MOESERVE_BIN = path.resolve(HERE, '../../bin/moeserve.mjs');

export interface ReadyInfo {
  readonly address: string;
  readonly port: number;
  readonly pid: number;
  readonly experts: string;
  readonly bytesRead: number;
}

export interface SpawnWorkerOptions {
  /** Arguments after `moeserve worker` (--exit-with-stdin is added when missing). */
  readonly args: readonly string[];
  /** Node flags before the entry (e.g. --cpu-prof). */
  readonly nodeArgs?: readonly string[];
  /** Each stderr line of the worker (its pino logs). */
  readonly onStderrLine?: (line: string) => void;
  /** @defaultValue 300000 */
  readonly startTimeoutMs?: number;
  /** Label in error messages. @defaultValue 'worker' */
  readonly name?: string;
}

export interface WorkerProcess {
  readonly child: ChildProcess;
  /** Resolves on the ready line; rejects if the worker exits or times out first (with its last stderr lines). */
  readonly ready: Promise<ReadyInfo>;
}

export function spawnWorker(opts: SpawnWorkerOptions): WorkerProcess {
  // detached: the worker leads its own process group. A signal to the parent's group (Ctrl-C,
  // `kill -TERM -PGID`, systemd's group kill) then reaches only the parent, which drains its
  // requests in flight and stops its workers afterwards (stopProcess); had the workers taken the
  // group's SIGTERM too, every stream would have failed at once. They still die with the parent:
  // --exit-with-stdin is always passed (a worker outside its parent's group would otherwise
  // outlive a parent stopped by Ctrl-C), and the stdin pipe closes whenever the parent goes, even
  // by SIGKILL. (Not unref'd: the parent keeps its handle on each child.)
  const args = opts.args.includes('--exit-with-stdin') ? opts.args : [...opts.args, '--exit-with-stdin'];
  const child = spawn(process.execPath, [...(opts.nodeArgs ?? []), MOESERVE_BIN, 'worker', ...args], { stdio: ['pipe', 'pipe', 'pipe'], detached: true });
  const name = opts.name ?? 'worker';
  const timeoutMs = opts.startTimeoutMs ?? 300_000;
  const ready = new Promise<ReadyInfo>((resolve, reject) => {
    const tail: string[] = [];
    let done = false;
    const finish = (err: ServerError | null, info?: ReadyInfo) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (err) reject(err);
      else resolve(info!);
    };
    const why = () => (tail.length ? `: ${tail.join(' / ')}` : '');
    const timer = setTimeout(() => finish(new ServerError('experts_unavailable', `${name} did not start within ${timeoutMs} ms${why()}`)), timeoutMs);
    onLines(child.stdout!, (line) => {
      if (line.startsWith(READY_PREFIX)) finish(null, JSON.parse(line.slice(READY_PREFIX.length)) as ReadyInfo);
    });
    onLines(child.stderr!, (line) => {
      tail.push(line);
      if (tail.length > 8) tail.shift();
      opts.onStderrLine?.(line);
    });
    child.on('error', (e) => finish(new ServerError('experts_unavailable', `${name} failed to start: ${e.message}`)));
    child.on('exit', (code, signal) => finish(new ServerError('experts_unavailable', `${name} exited during start (${signal ?? `code ${code}`})${why()}`)));
  });
  return { child, ready };
}


/** SIGTERM, then SIGKILL after graceMs; resolves when the process is gone. */
export function stopProcess(child: ChildProcess, graceMs = 2000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
    child.once('exit', () => {
      clearTimeout(t);
      resolve();
    });
    child.kill('SIGTERM');
  });
}

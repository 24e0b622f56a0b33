/**
 * Starting `moeserve worker` as a child process and waiting for its ready line (the parent side
 * of the READY_PREFIX protocol). Used by the router's local topology, benchmarks and tests.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ServerError } from '../../services/common/src/errors.js';
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
  /** Arguments after `moeserve worker`. */
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
  const child = spawn(process.execPath, [...(opts.nodeArgs ?? []), MOESERVE_BIN, 'worker', ...opts.args], { stdio: ['pipe', 'pipe', 'pipe'] });
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
    lines(child.stdout!, (line) => {
      if (line.startsWith(READY_PREFIX)) finish(null, JSON.parse(line.slice(READY_PREFIX.length)) as ReadyInfo);
    });
    lines(child.stderr!, (line) => {
      tail.push(line);
      if (tail.length > 8) tail.shift();
      opts.onStderrLine?.(line);
    });
    child.on('error', (e) => finish(new ServerError('experts_unavailable', `${name} failed to start: ${e.message}`)));
    child.on('exit', (code, signal) => finish(new ServerError('experts_unavailable', `${name} exited during start (${signal ?? `code ${code}`})${why()}`)));
  });
  return { child, ready };
}

function lines(stream: NodeJS.ReadableStream, onLine: (line: string) => void): void {
  let buf = '';
  stream.setEncoding('utf8');
  stream.on('data', (d: string) => {
    buf += d;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      onLine(buf.slice(0, nl));
      buf = buf.slice(nl + 1);
    }
  });
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

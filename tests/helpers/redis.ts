/**
 * A real redis-server for *.redis.test.ts suites: started on a free loopback port, no persistence,
 * stopped (or killed, and started again on the same port) by the test. CI installs redis-server
 * (.ci/run); locally it must be on PATH (or REDIS_SERVER=/path/to/redis-server).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';

export interface RedisServerOptions {
  /** Passed as --maxmemory (e.g. '64mb'), with --maxmemory-policy allkeys-lru. @defaultValue none */
  readonly maxmemory?: string;
  /** Milliseconds to wait for PONG. @defaultValue 10_000 */
  readonly startTimeoutMs?: number;
}

export interface RedisServer {
  readonly port: number;
  /** redis://127.0.0.1:PORT */
  readonly url: string;
  /** The server process now (a new one after restart). */
  readonly process: ChildProcess;
  /** SIGKILL, as a crash: resolves when the process has exited. */
  kill(): Promise<void>;
  /** A fresh, empty server on the same port (after kill or stop). */
  restart(): Promise<void>;
  /** SIGTERM and wait for exit; safe to call twice. */
  stop(): Promise<void>;
}

import { freePort } from '../../services/common/src/proc.js';

export { freePort };

/** One PING over a raw socket: true on +PONG. */
function ping(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect({ port, host: '127.0.0.1' });
    let data = '';
    const done = (ok: boolean) => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(500, () => done(false));
    sock.on('error', () => done(false));
    sock.on('connect', () => sock.write('PING\r\n'));
    sock.on('data', (d) => {
      data += d.toString();
      if (data.includes('\r\n')) done(data.startsWith('+PONG'));
    });
  });
}

function exited(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => p.once('exit', () => resolve()));
}

async function launch(port: number, opts: RedisServerOptions): Promise<ChildProcess> {
  const bin = process.env.REDIS_SERVER ?? 'redis-server';
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--daemonize', 'no', '--loglevel', 'warning'];
  if (opts.maxmemory !== undefined) args.push('--maxmemory', opts.maxmemory, '--maxmemory-policy', 'allkeys-lru');
  const child = spawn(bin, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  const spawnError = new Promise<Error>((resolve) => child.once('error', resolve));
  const deadline = Date.now() + (opts.startTimeoutMs ?? 10_000);
  for (;;) {
    const failed = await Promise.race([spawnError, new Promise<null>((r) => setTimeout(r, 25, null))]);
    if (failed) throw new Error(`cannot start ${bin} (install redis-server, or set REDIS_SERVER): ${failed.message}`);
    if (child.exitCode !== null) throw new Error(`${bin} exited with ${child.exitCode}: ${stderr}`);
    if (await ping(port)) return child;
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`${bin} on port ${port} did not answer PING: ${stderr}`);
    }
  }
}

/** Starts redis-server on a free port and waits until it answers PING. */
export async function startRedis(opts: RedisServerOptions = {}): Promise<RedisServer> {
  const port = await freePort();
  let proc = await launch(port, opts);
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    get process() {
      return proc;
    },
    async kill() {
      proc.kill('SIGKILL');
      await exited(proc);
    },
    async restart() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      await exited(proc);
      proc = await launch(port, opts);
    },
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      await exited(proc);
    },
  };
}

/**
 * The real processes of one run, started through the CLI exactly as an operator would:
 *   node bin/moeserve.mjs worker --model DIR --experts LIST --host H --port 0 --exit-with-stdin
 *       (optionally under `ip netns exec NS`, which execs in place: same pid)
 *   node bin/moeserve.mjs serve --model DIR --port P [--worker-addrs a,b] [--wire-dtype D] ...
 * plus one watchdog (`sh`) that reads our stdin pipe: if this process dies, even by SIGKILL, the
 * pipe closes and the watchdog kills the gateway and workers and deletes the run's namespaces, so
 * a crashed experiment worker leaves no server behind holding ports and cores.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, onLines } from '../../common/src/proc.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const MOESERVE_BIN = path.resolve(HERE, '../../../bin/moeserve.mjs');
/** The worker's ready line on stdout (workers/src/main.ts READY_PREFIX: the CLI's contract). */
const READY_PREFIX = 'MOESERVE_WORKER_READY ';
const TAIL_LINES = 12;

export interface Proc {
  readonly name: string;
  readonly child: ChildProcess;
  /** Last stderr / stdout lines (for failure reasons). */
  tail(): string;
}

function track(name: string, child: ChildProcess, onLine?: (line: string) => void): Proc {
  const lines: string[] = [];
  const feed = (stream: NodeJS.ReadableStream | null) => {
    if (!stream) return;
    onLines(stream, (line) => {
      onLine?.(line);
      if (line.startsWith(READY_PREFIX)) return;
      lines.push(line.length > 400 ? `${line.slice(0, 400)}...` : line);
      if (lines.length > TAIL_LINES) lines.shift();
    });
  };
  feed(child.stdout);
  feed(child.stderr);
  return { name, child, tail: () => lines.join(' / ') };
}

function exitedPromise(p: ChildProcess): Promise<string> {
  return new Promise((resolve) => {
    if (p.exitCode !== null || p.signalCode !== null) resolve(p.signalCode ?? `code ${p.exitCode}`);
    else p.once('exit', (code, sig) => resolve(sig ?? `code ${code}`));
  });
}

export interface StartedWorker extends Proc {
  /** host:port the gateway dials. */
  readonly address: string;
}

/** Starts one expert worker and waits for its ready line. */
export async function startWorker(o: { modelDir: string; experts: string; host: string; namespace: string | null; threads: number; id: string; timeoutMs: number; onSpawn?: (pid: number | undefined) => void }): Promise<StartedWorker> {
  const args = [MOESERVE_BIN, 'worker', '--model', o.modelDir, '--experts', o.experts, '--host', o.host, '--port', '0', '--threads', String(o.threads), '--id', o.id, '--log-level', 'warn', '--exit-with-stdin'];
  const child = o.namespace ? spawn('ip', ['netns', 'exec', o.namespace, process.execPath, ...args], { stdio: ['pipe', 'pipe', 'pipe'] }) : spawn(process.execPath, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let resolveReady!: (port: number) => void;
  const ready = new Promise<number>((r) => (resolveReady = r));
  const proc = track(o.id, child, (line) => {
    if (line.startsWith(READY_PREFIX)) resolveReady((JSON.parse(line.slice(READY_PREFIX.length)) as { port: number }).port);
  });
  let timer: NodeJS.Timeout | undefined;
  try {
    const port = await Promise.race([
      ready,
      exitedPromise(child).then((how) => Promise.reject(new Error(`worker ${o.id} exited during start (${how}): ${proc.tail()}`))),
      new Promise<never>((_, rej) => (timer = setTimeout(() => rej(new Error(`worker ${o.id} not ready within ${o.timeoutMs} ms: ${proc.tail()}`)), o.timeoutMs))),
      new Promise<never>((_, rej) => child.once('error', (e) => rej(new Error(`worker ${o.id} failed to start: ${e.message}`)))),
    ]);
    return { ...proc, address: `${o.host}:${port}` };
  } catch (err) {
    await stopProc(proc);
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

export interface StartedGateway extends Proc {
  readonly url: string;
}

/** Starts `moeserve serve` on a free loopback port and waits until /health answers 200. */
export async function startGateway(o: { modelDir: string; args: readonly string[]; timeoutMs: number; onSpawn?: (pid: number | undefined) => void }): Promise<StartedGateway> {
  const port = await freePort();
  const child = spawn(process.execPath, [MOESERVE_BIN, 'serve', '--model', o.modelDir, '--host', '127.0.0.1', '--port', String(port), '--log-level', 'warn', ...o.args], { stdio: ['ignore', 'pipe', 'pipe'] });
  o.onSpawn?.(child.pid);
  const proc = track('gateway', child);
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + o.timeoutMs;
  let exitedHow: string | null = null;
  void exitedPromise(child).then((how) => (exitedHow = how));
  // Bounded: one probe per 100 ms until the deadline.
  while (Date.now() < deadline) {
    if (exitedHow !== null) throw new Error(`gateway exited during start (${exitedHow}): ${proc.tail()}`);
    try {
      const res = await fetch(`${url}/health`, { signal: AbortSignal.timeout(2000) });
      await res.arrayBuffer();
      if (res.status === 200) return { ...proc, url };
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  await stopProc(proc);
  throw new Error(`gateway not healthy within ${o.timeoutMs} ms: ${proc.tail()}`);
}

/** SIGTERM, then SIGKILL after graceMs; resolves when the process has exited. */
export async function stopProc(p: Proc, graceMs = 5000): Promise<void> {
  const c = p.child;
  if (c.exitCode !== null || c.signalCode !== null) return;
  const done = exitedPromise(c);
  c.kill('SIGTERM');
  const timer = setTimeout(() => c.kill('SIGKILL'), graceMs);
  await done;
  clearTimeout(timer);
}

/**
 * A watchdog for the run's processes, started before the first of them: it reads `pid N` and
 * `ns NAME` lines as they start; at EOF (we exited, however: even SIGKILL closes the pipe) it
 * SIGKILLs the pids and deletes the namespaces. `disarm()` ends it without touching anything.
 */
export interface Watchdog {
  pid(pid: number | undefined): void;
  namespace(name: string): void;
  disarm(): void;
}

const WATCHDOG_SCRIPT = `pids=""; nss=""
while IFS= read -r line; do
  case "$line" in
    "pid "*) pids="$pids \${line#pid }" ;;
    "ns "*) nss="$nss \${line#ns }" ;;
    disarm) exit 0 ;;
  esac
done
[ -n "$pids" ] && kill -9 $pids 2>/dev/null
for n in $nss; do ip netns del "$n" 2>/dev/null; done
exit 0`;

export function startWatchdog(): Watchdog {
  const child = spawn('sh', ['-c', WATCHDOG_SCRIPT], { stdio: ['pipe', 'ignore', 'ignore'], detached: true });
  child.unref();
  child.on('error', () => undefined);
  const stdin = child.stdin!;
  stdin.on('error', () => undefined);
  (stdin as unknown as { unref?: () => void }).unref?.();
  const send = (line: string) => {
    if (!stdin.destroyed && stdin.writable) stdin.write(`${line}\n`);
  };
  return {
    pid: (pid) => {
      if (pid !== undefined && Number.isInteger(pid)) send(`pid ${pid}`);
    },
    // Names are ours (msx-<pid>-<i>), never user input.
    namespace: (name) => send(`ns ${name}`),
    disarm: () => {
      if (!stdin.destroyed) stdin.end('disarm\n');
    },
  };
}


/**
 * Network namespaces for one run: each expert worker in its own namespace, joined to the root
 * namespace (where the gateway runs) by a veth pair whose two ends are shaped with tbf, so
 * gateway <-> worker traffic crosses a real network stack at a set rate. Linux only, as root
 * (`ip netns`, `tc`); anything else falls back to loopback and says why.
 *
 * Names carry the owner's pid, so a later process can remove what a killed one left behind:
 *   namespace   msx-<pid>-<i>             (ip netns; deleting it destroys its veth pair and qdiscs)
 *   veth        mxg<pid36>-<i> (root side, the gateway's), mxw<pid36>-<i> (namespace side)
 *   addresses   10.213.<net>.<4i+1>/30 (root side), 10.213.<net>.<4i+2>/30 (worker), <net> a /24
 *               no interface of this host uses yet
 * Traffic goes only to these addresses and to loopback. Every loop here is bounded.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import { promisify } from 'node:util';

const run = promisify(execFile);
const NS_RE = /^msx-(\d+)-(\d+)$/;
/** Workers per run (a /24 of /30s). */
export const MAX_NS_WORKERS = 63;

export interface WorkerLink {
  readonly index: number;
  readonly namespace: string;
  /** Root-side veth (its counters are the worker's traffic as the gateway sees it). */
  readonly hostIf: string;
  /** Address the worker listens on (inside its namespace). */
  readonly workerAddr: string;
}

export interface NetnsSetup {
  readonly links: readonly WorkerLink[];
  /** tbf rate of each veth end, Mbit/s; 0 = unshaped. */
  readonly bandwidthMbit: number;
  teardown(): Promise<void>;
}

async function ip(args: string[]): Promise<string> {
  const { stdout } = await run('ip', args, { timeout: 10_000 });
  return stdout;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Namespaces named msx-<pid>-<i> whose owner process is gone: deleted (at most 1024 per call). */
export async function removeStaleNamespaces(): Promise<string[]> {
  let list: string;
  try {
    list = await ip(['netns', 'list']);
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const line of list.split('\n').slice(0, 1024)) {
    const name = line.trim().split(/\s+/)[0] ?? '';
    const m = NS_RE.exec(name);
    if (!m || alive(Number(m[1]))) continue;
    await ip(['netns', 'del', name]).catch(() => undefined);
    removed.push(name);
  }
  return removed;
}

/** A 10.213.<net>.0/24 that no interface of this host has an address in, or null. */
async function freeSubnet(): Promise<number | null> {
  const used = new Set<number>();
  const addrs = await ip(['-o', '-4', 'addr', 'show']);
  const routes = await ip(['-4', 'route', 'show', 'table', 'all']).catch(() => '');
  for (const m of `${addrs}\n${routes}`.matchAll(/\b10\.213\.(\d+)\./g)) used.add(Number(m[1]));
  if (/\b10\.0\.0\.0\/8\b|\b10\.213\.0\.0\/16\b/.test(routes)) return null;
  // Start from the pid so concurrent runs on one host rarely race for the same /24.
  for (let i = 0; i < 256; i++) {
    const net = (process.pid + i) % 256;
    if (!used.has(net)) return net;
  }
  return null;
}

/**
 * Creates one namespace per worker with a shaped veth pair. Throws (after removing whatever it made)
 * when the host cannot: the caller falls back to loopback with the message as the reason.
 */
export async function setupNamespaces(workers: number, bandwidthMbit: number): Promise<NetnsSetup> {
  if (process.platform !== 'linux') throw new Error(`network namespaces need Linux (this is ${process.platform})`);
  if (typeof process.getuid === 'function' && process.getuid() !== 0) throw new Error('network namespaces need root (ip netns add)');
  if (workers < 1 || workers > MAX_NS_WORKERS) throw new Error(`network namespaces: 1 to ${MAX_NS_WORKERS} workers, got ${workers}`);
  await removeStaleNamespaces();
  const net = await freeSubnet();
  if (net === null) throw new Error('network namespaces: no free 10.213.x.0/24 on this host');
  const tag = process.pid.toString(36);
  const made: string[] = [];
  const teardown = async () => {
    // Deleting a namespace destroys its veth pair (both ends) and their qdiscs.
    for (const ns of made) await ip(['netns', 'del', ns]).catch(() => undefined);
    made.length = 0;
  };
  const links: WorkerLink[] = [];
  try {
    for (let i = 0; i < workers; i++) {
      const ns = `msx-${process.pid}-${i}`;
      const hostIf = `mxg${tag}-${i}`;
      const nsIf = `mxw${tag}-${i}`;
      const hostAddr = `10.213.${net}.${4 * i + 1}`;
      const workerAddr = `10.213.${net}.${4 * i + 2}`;
      await ip(['netns', 'del', ns]).catch(() => undefined);
      await ip(['netns', 'add', ns]);
      made.push(ns);
      await ip(['link', 'add', hostIf, 'type', 'veth', 'peer', 'name', nsIf]);
      await ip(['link', 'set', nsIf, 'netns', ns]);
      await ip(['addr', 'add', `${hostAddr}/30`, 'dev', hostIf]);
      await ip(['link', 'set', hostIf, 'up']);
      await ip(['-n', ns, 'addr', 'add', `${workerAddr}/30`, 'dev', nsIf]);
      await ip(['-n', ns, 'link', 'set', nsIf, 'up']);
      await ip(['-n', ns, 'link', 'set', 'lo', 'up']);
      if (bandwidthMbit > 0) {
        const rate = `${bandwidthMbit}mbit`;
        // burst: 2 ms at the rate (at least 64 KiB: a gRPC frame must fit), latency: queue bound.
        const burst = String(Math.max(65536, Math.ceil((bandwidthMbit * 1e6) / 8 / 500)));
        await run('tc', ['qdisc', 'add', 'dev', hostIf, 'root', 'tbf', 'rate', rate, 'burst', burst, 'latency', '50ms'], { timeout: 10_000 });
        await run('ip', ['netns', 'exec', ns, 'tc', 'qdisc', 'add', 'dev', nsIf, 'root', 'tbf', 'rate', rate, 'burst', burst, 'latency', '50ms'], { timeout: 10_000 });
      }
      links.push({ index: i, namespace: ns, hostIf, workerAddr });
    }
  } catch (err) {
    await teardown();
    const e = err as Error & { stderr?: string };
    throw new Error(`network namespaces: ${(e.stderr ?? '').trim() || e.message}`);
  }
  return { links, bandwidthMbit, teardown };
}

/** Bytes through a root-side veth so far: tx = gateway -> worker, rx = worker -> gateway (IP packets, headers included). */
export function linkCounters(hostIf: string): { tx: number; rx: number } {
  const read = (f: string) => Number(fs.readFileSync(`/sys/class/net/${hostIf}/statistics/${f}`, 'utf8').trim());
  return { tx: read('tx_bytes'), rx: read('rx_bytes') };
}

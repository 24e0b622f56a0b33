/**
 * Benchmark checkpoints: generated once per (preset, seed) with make-checkpoint into the cache
 * folder ($MOESERVE_CACHE, else ~/.cache/moeserve) and reused by every benchmark.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { makeCheckpoint } from '../../services/model/src/make-checkpoint.js';
import { GraphBuilder } from '../../services/model/src/onnx/graph.js';
import { DT } from '../../services/model/src/onnx/proto.js';
import { DEFAULT_RUNTIME, f32, OrtSession } from '../../services/model/src/runtime/onnx.js';

export function cacheDir(): string {
  return process.env.MOESERVE_CACHE ?? path.join(process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'moeserve');
}

/** The folder of a generated preset checkpoint, writing it first if needed. */
export function ensurePerfModel(preset: string, seed = 0, set: Record<string, unknown> = {}): string {
  const tag = Object.keys(set).length ? `-${Object.entries(set).map(([k, v]) => `${k}=${String(v)}`).join(',')}` : '';
  const dir = path.join(cacheDir(), 'models', `${preset}-seed${seed}${tag}`);
  const marker = path.join(dir, '.complete');
  if (fs.existsSync(marker)) return dir;
  process.stderr.write(`generating ${preset} into ${dir} ...\n`);
  makeCheckpoint({ preset, outDir: dir, seed, set });
  fs.writeFileSync(marker, `${new Date().toISOString()}\n`);
  return dir;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

/**
 * Read bandwidth of the machine with `threads` cores, bytes per second: an ONNX Runtime
 * ReduceSum over a 512 MiB input (16× the L3 here), rows split over the session's threads. This
 * is the bound a bandwidth-bound decode step can reach (a one-thread memcpy understates it ~3×).
 */
export async function readBandwidth(threads: number, bytes = 512 * 2 ** 20, reps = 7): Promise<number> {
  const rows = 256;
  const cols = bytes / 4 / rows;
  const g = new GraphBuilder('read_bandwidth');
  g.output(g.op('ReduceSum', [g.input('x', DT.FLOAT, [rows, cols]), g.constI64([1])], { keepdims: 0 }), 'y');
  const s = await OrtSession.create('read_bandwidth', g.toModel(), { ...DEFAULT_RUNTIME, intraOpThreads: threads });
  const x = f32(new Float32Array(rows * cols).fill(1), [rows, cols]);
  const rates: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    s.run({ x }, ['y']);
    rates.push(bytes / ((performance.now() - t0) / 1000));
  }
  await s.release();
  return median(rates.slice(1));
}

/** Memory-copy bandwidth, bytes copied per second (median of several 256 MiB copies). */
export function memcpyBandwidth(bytes = 256 * 2 ** 20, reps = 7): number {
  const src = new Float32Array(bytes / 4).fill(1);
  const dst = new Float32Array(bytes / 4);
  const rates: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    dst.set(src);
    rates.push(bytes / ((performance.now() - t0) / 1000));
  }
  return median(rates.slice(1));
}

export function table(rows: (string | number)[][]): string {
  const cells = rows.map((r) => r.map((c) => (typeof c === 'number' ? fmt(c) : c)));
  const widths = cells[0]!.map((_, i) => Math.max(...cells.map((r) => r[i]!.length)));
  return cells.map((r) => r.map((c, i) => c.padStart(widths[i]!)).join('  ')).join('\n');
}

function fmt(x: number): string {
  if (Number.isInteger(x)) return String(x);
  return Math.abs(x) >= 100 ? x.toFixed(0) : Math.abs(x) >= 1 ? x.toFixed(2) : x.toPrecision(3);
}

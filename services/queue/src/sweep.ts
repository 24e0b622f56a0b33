/**
 * Sweep files: what a researcher writes (JSON or YAML), validated strictly once, frozen, and
 * expanded into points. Pure: no I/O beyond `parseSweepText`'s text-to-object step.
 *
 *   sweep file --parseSweepText--> unknown --validateSweep--> Sweep (frozen) --expandPoints--> Point[]
 *
 * Every validation error is a ServerError('invalid_request') whose `param` is the path of the field
 * at fault (`axes.experts[2]`, `load.concurrency`), and whose message names it too.
 *
 * A point is one real run: a checkpoint (preset + expert count + top-k), a topology (workers,
 * placement, replication, wire dtype), the load scenario, and a repeat index. Point ids are
 * stable strings built from those values (`e16-k4-w2-contiguous-r1-f32-n0`), so results keyed by
 * them are idempotent across crashes and resubmissions.
 */
import { createHash } from 'node:crypto';
import { parse as parseYaml } from 'yaml';
import { ServerError } from '../../common/src/errors.js';

export const SCENARIO_NAMES = ['throughput', 'routing-balance'] as const;
export type ScenarioKind = (typeof SCENARIO_NAMES)[number];
export const WIRE_DTYPES = ['f32', 'f16', 'bf16'] as const;
export type SweepWireDtype = (typeof WIRE_DTYPES)[number];
export const NETWORK_MODES = ['loopback', 'netns'] as const;
export type NetworkMode = (typeof NETWORK_MODES)[number];

/** The model every point derives from. */
export interface SweepModel {
  /** make-checkpoint preset (the expert count and top-k axes override it). Exactly one of preset / checkpoint. */
  readonly preset: string | null;
  /** An existing checkpoint folder (then the experts and topK axes cannot vary). */
  readonly checkpoint: string | null;
  /** Extra config.json overrides for every point (`--set key=value`). @defaultValue {} */
  readonly set: Readonly<Record<string, string | number | boolean>>;
  /** Weight seed. @defaultValue 0 */
  readonly seed: number;
  /** Tensor dtype on disk. @defaultValue 'F32' */
  readonly dtype: 'F32' | 'F16' | 'BF16';
}

/** The values one point takes on each axis. */
export interface AxisValues {
  /** Routed experts per MoE layer; null = the preset's / checkpoint's own. */
  readonly experts: number | null;
  /** Experts per token; null = the preset's / checkpoint's own. */
  readonly topK: number | null;
  /** Expert worker processes (nodes); 0 = experts in the gateway process. */
  readonly workers: number;
  /** contiguous | round-robin | explicit "0-2;3-5;6,7". */
  readonly placement: string;
  /** none | all | N | e:n,... (serve's --replicate). */
  readonly replicate: string;
  readonly wireDtype: SweepWireDtype;
}

export interface SweepLoad {
  /** @defaultValue 'throughput' */
  readonly scenario: ScenarioKind;
  /** Concurrent clients. @defaultValue 4 */
  readonly concurrency: number;
  /** Measured requests per point. @defaultValue 16 */
  readonly requests: number;
  /** Prompt length, tokens. @defaultValue 32 */
  readonly promptTokens: number;
  /** Output length, tokens (ignore_eos). @defaultValue 16 */
  readonly outputTokens: number;
  /** Prompts drawn from this many token ids (skewed routing); 0 = whole vocabulary. @defaultValue 0 */
  readonly hotTokens: number;
  /** Requests sent before measuring (sessions warm, not counted). @defaultValue 1 */
  readonly warmupRequests: number;
  /** Prompt seed. @defaultValue 0 */
  readonly seed: number;
}

export interface SweepNetwork {
  /** loopback, or each worker in its own network namespace behind a shaped veth pair. @defaultValue 'loopback' */
  readonly mode: NetworkMode;
  /** tbf rate of each veth end, Mbit/s (netns only); 0 = unshaped. @defaultValue 1000 */
  readonly bandwidthMbit: number;
}

export interface SweepRetry {
  /** Attempts per point (the first included). @defaultValue 3 */
  readonly attempts: number;
  /** First retry delay, ms; doubles each retry (BullMQ exponential backoff). @defaultValue 2000 */
  readonly backoffMs: number;
}

export interface SweepServe {
  /** ONNX Runtime intra-op threads of the gateway and of each worker. @defaultValue 1 */
  readonly threads: number;
  /** serve --max-num-seqs. @defaultValue 64 */
  readonly maxNumSeqs: number;
  /** Seconds the gateway and workers may take to become ready. @defaultValue 120 */
  readonly startTimeoutS: number;
  /** Seconds one point's load may run. @defaultValue 600 */
  readonly runTimeoutS: number;
}

export interface Sweep {
  /** Free-form name, shown in reports. */
  readonly name: string;
  readonly model: SweepModel;
  /** The points: the cartesian product of `axes`, or the explicit `points` list (each filled from the defaults). */
  readonly points: readonly AxisValues[];
  readonly load: SweepLoad;
  readonly network: SweepNetwork;
  readonly retry: SweepRetry;
  readonly serve: SweepServe;
  /** Runs of each point. @defaultValue 1 */
  readonly repeats: number;
  /** Experiment folder (results.jsonl, report); null = ~/.cache/moeserve/experiments/<id>. */
  readonly out: string | null;
}

export interface Point extends AxisValues {
  /** Position in the sweep (report order). */
  readonly index: number;
  /** Stable id: the axis values and the repeat. */
  readonly id: string;
  readonly repeat: number;
}

const AXIS_DEFAULTS: AxisValues = Object.freeze({ experts: null, topK: null, workers: 1, placement: 'contiguous', replicate: 'none', wireDtype: 'f32' });
const AXIS_KEYS = ['experts', 'topK', 'workers', 'placement', 'replicate', 'wireDtype'] as const;
type AxisKey = (typeof AXIS_KEYS)[number];

function bad(param: string, msg: string): never {
  throw new ServerError('invalid_request', `sweep: ${param}: ${msg}`, { param });
}

type Obj = Record<string, unknown>;

function obj(v: unknown, param: string, allowed: readonly string[]): Obj {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) bad(param, `must be an object, got ${describe(v)}`);
  for (const k of Object.keys(v)) if (!allowed.includes(k)) bad(param === '' ? k : `${param}.${k}`, `unknown field (allowed: ${allowed.join(', ')})`);
  return v as Obj;
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  return typeof v === 'string' ? JSON.stringify(v) : `${typeof v} ${JSON.stringify(v)}`;
}

function int(v: unknown, param: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) bad(param, `must be an integer in [${min}, ${max}], got ${describe(v)}`);
  return v;
}

function num(v: unknown, param: string, min: number): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min) bad(param, `must be a number >= ${min}, got ${describe(v)}`);
  return v;
}

function str(v: unknown, param: string): string {
  if (typeof v !== 'string' || v.trim() === '') bad(param, `must be a non-empty string, got ${describe(v)}`);
  return v.trim();
}

function oneOf<T extends string>(v: unknown, param: string, allowed: readonly T[]): T {
  if (typeof v !== 'string' || !(allowed as readonly string[]).includes(v)) bad(param, `must be one of ${allowed.join(', ')}, got ${describe(v)}`);
  return v as T;
}

const PLACEMENT_RE = /^(contiguous|round-robin|[\d,;\s-]+)$/;
const REPLICATE_RE = /^(none|all|\d+|\d+:\d+(,\d+:\d+)*)$/;

function axisValue(key: AxisKey, v: unknown, param: string): AxisValues[AxisKey] {
  switch (key) {
    case 'experts':
      return int(v, param, 1, 4096);
    case 'topK':
      return int(v, param, 1, 64);
    case 'workers':
      return int(v, param, 0, 64);
    case 'placement': {
      const s = str(v, param);
      if (!PLACEMENT_RE.test(s)) bad(param, `must be contiguous, round-robin or an explicit map like "0-2;3-5;6,7", got ${describe(v)}`);
      return s;
    }
    case 'replicate': {
      const s = typeof v === 'number' ? String(v) : str(v, param);
      if (!REPLICATE_RE.test(s)) bad(param, `must be none, all, N or expert:count pairs like 3:2,5:2, got ${describe(v)}`);
      return s;
    }
    case 'wireDtype':
      return oneOf(v, param, WIRE_DTYPES);
  }
}

/** Checks that only a valid combination of axis values is run; names the point at fault. */
function checkCombination(p: AxisValues, param: string, fixedModel: boolean): void {
  if (fixedModel && (p.experts !== null || p.topK !== null)) bad(param, 'experts / topK cannot vary with model.checkpoint (only with model.preset, through make-checkpoint --set)');
  if (p.experts !== null && p.topK !== null && p.topK > p.experts) bad(param, `topK ${p.topK} exceeds experts ${p.experts}`);
  if (p.experts !== null && p.workers > p.experts && p.replicate === 'none') bad(param, `${p.workers} workers for ${p.experts} experts: some workers would hold nothing (add replicate, or use fewer workers)`);
  if (p.workers === 0 && (p.placement !== 'contiguous' || p.replicate !== 'none' || p.wireDtype !== 'f32')) bad(param, 'workers 0 runs the experts in the gateway: placement, replicate and wireDtype do not apply');
  if (/[;]/.test(p.placement) && p.placement.split(';').length !== p.workers) bad(param, `placement "${p.placement}" lists ${p.placement.split(';').length} workers; workers is ${p.workers}`);
  if (/^\d+$/.test(p.replicate) && p.workers > 0 && Number(p.replicate) > p.workers) bad(param, `replicate ${p.replicate} exceeds workers ${p.workers}`);
}

/** Parses sweep file text (JSON when it starts with `{`, YAML otherwise). */
export function parseSweepText(text: string, source = 'sweep'): unknown {
  const t = text.trim();
  if (t === '') throw new ServerError('invalid_request', `${source}: the file is empty`, { param: 'sweep' });
  try {
    return t.startsWith('{') ? JSON.parse(t) : parseYaml(t, { uniqueKeys: true, maxAliasCount: 100 });
  } catch (err) {
    throw new ServerError('invalid_request', `${source}: not valid ${t.startsWith('{') ? 'JSON' : 'YAML'}: ${(err as Error).message.split('\n')[0]}`, { param: 'sweep', cause: err });
  }
}

/** Validates a parsed sweep file strictly (unknown fields are errors) and fills the defaults. */
export function validateSweep(raw: unknown): Sweep {
  const top = obj(raw, '', ['name', 'model', 'axes', 'points', 'load', 'network', 'retry', 'serve', 'repeats', 'out']);
  const name = top.name === undefined ? 'sweep' : str(top.name, 'name');

  if (top.model === undefined) bad('model', 'is required (model.preset or model.checkpoint)');
  const m = obj(top.model, 'model', ['preset', 'checkpoint', 'set', 'seed', 'dtype']);
  if ((m.preset === undefined) === (m.checkpoint === undefined)) bad('model', 'needs exactly one of preset, checkpoint');
  const set: Record<string, string | number | boolean> = {};
  if (m.set !== undefined) {
    const s = obj(m.set, 'model.set', Object.keys(m.set as Obj));
    for (const [k, v] of Object.entries(s)) {
      if (typeof v !== 'string' && typeof v !== 'number' && typeof v !== 'boolean') bad(`model.set.${k}`, `must be a string, number or boolean, got ${describe(v)}`);
      set[k] = v;
    }
  }
  const model: SweepModel = Object.freeze({
    preset: m.preset === undefined ? null : str(m.preset, 'model.preset'),
    checkpoint: m.checkpoint === undefined ? null : str(m.checkpoint, 'model.checkpoint'),
    set: Object.freeze(set),
    seed: m.seed === undefined ? 0 : int(m.seed, 'model.seed', 0),
    dtype: m.dtype === undefined ? 'F32' : oneOf(m.dtype, 'model.dtype', ['F32', 'F16', 'BF16'] as const),
  });
  const fixedModel = model.checkpoint !== null;

  if ((top.axes === undefined) === (top.points === undefined)) bad('axes', 'give exactly one of axes (a cartesian product) or points (an explicit list)');
  const points: AxisValues[] = [];
  if (top.axes !== undefined) {
    const a = obj(top.axes, 'axes', AXIS_KEYS);
    const lists: [AxisKey, AxisValues[AxisKey][]][] = AXIS_KEYS.map((k) => {
      const v = a[k];
      if (v === undefined) return [k, [AXIS_DEFAULTS[k]]];
      const list = Array.isArray(v) ? v : [v];
      if (list.length === 0) bad(`axes.${k}`, 'must not be an empty list');
      const vals = list.map((x, i) => axisValue(k, x, `axes.${k}[${i}]`));
      if (new Set(vals).size !== vals.length) bad(`axes.${k}`, `has duplicate values ${JSON.stringify(vals)}`);
      return [k, vals];
    });
    // Cartesian product, first axis outermost (experts, topK, workers, ...): the report's order.
    let acc: Record<string, unknown>[] = [{}];
    for (const [k, vals] of lists) acc = acc.flatMap((p) => vals.map((v) => ({ ...p, [k]: v })));
    for (const p of acc) points.push(p as unknown as AxisValues);
  } else {
    if (!Array.isArray(top.points) || top.points.length === 0) bad('points', `must be a non-empty list, got ${describe(top.points)}`);
    top.points.forEach((raw, i) => {
      const o = obj(raw, `points[${i}]`, AXIS_KEYS);
      const p: Record<string, unknown> = { ...AXIS_DEFAULTS };
      for (const k of AXIS_KEYS) if (o[k] !== undefined) p[k] = axisValue(k, o[k], `points[${i}].${k}`);
      points.push(p as unknown as AxisValues);
    });
  }
  points.forEach((p, i) => checkCombination(p, top.axes !== undefined ? `axes (point ${axisId(p)})` : `points[${i}]`, fixedModel));
  const ids = points.map(axisId);
  const dup = ids.find((id, i) => ids.indexOf(id) !== i);
  if (dup !== undefined) bad('points', `point ${dup} is listed twice (use repeats to run a point several times)`);

  const l = top.load === undefined ? {} : obj(top.load, 'load', ['scenario', 'concurrency', 'requests', 'promptTokens', 'outputTokens', 'hotTokens', 'warmupRequests', 'seed']);
  const load: SweepLoad = Object.freeze({
    scenario: l.scenario === undefined ? 'throughput' : oneOf(l.scenario, 'load.scenario', SCENARIO_NAMES),
    concurrency: l.concurrency === undefined ? 4 : int(l.concurrency, 'load.concurrency', 1, 1024),
    requests: l.requests === undefined ? 16 : int(l.requests, 'load.requests', 1, 1_000_000),
    promptTokens: l.promptTokens === undefined ? 32 : int(l.promptTokens, 'load.promptTokens', 1, 1_000_000),
    outputTokens: l.outputTokens === undefined ? 16 : int(l.outputTokens, 'load.outputTokens', 1, 1_000_000),
    hotTokens: l.hotTokens === undefined ? 0 : int(l.hotTokens, 'load.hotTokens', 0),
    warmupRequests: l.warmupRequests === undefined ? 1 : int(l.warmupRequests, 'load.warmupRequests', 0, 1000),
    seed: l.seed === undefined ? 0 : int(l.seed, 'load.seed', 0),
  });

  const n = top.network === undefined ? {} : obj(top.network, 'network', ['mode', 'bandwidthMbit']);
  const network: SweepNetwork = Object.freeze({
    mode: n.mode === undefined ? 'loopback' : oneOf(n.mode, 'network.mode', NETWORK_MODES),
    bandwidthMbit: n.bandwidthMbit === undefined ? 1000 : num(n.bandwidthMbit, 'network.bandwidthMbit', 0),
  });
  if (network.mode === 'netns' && points.some((p) => p.workers === 0)) bad('network.mode', 'netns puts workers in namespaces; a point with workers 0 has none');

  const r = top.retry === undefined ? {} : obj(top.retry, 'retry', ['attempts', 'backoffMs']);
  const retry: SweepRetry = Object.freeze({
    attempts: r.attempts === undefined ? 3 : int(r.attempts, 'retry.attempts', 1, 20),
    backoffMs: r.backoffMs === undefined ? 2000 : int(r.backoffMs, 'retry.backoffMs', 0, 3_600_000),
  });
  const s = top.serve === undefined ? {} : obj(top.serve, 'serve', ['threads', 'maxNumSeqs', 'startTimeoutS', 'runTimeoutS']);
  const serve: SweepServe = Object.freeze({
    threads: s.threads === undefined ? 1 : int(s.threads, 'serve.threads', 1, 256),
    maxNumSeqs: s.maxNumSeqs === undefined ? 64 : int(s.maxNumSeqs, 'serve.maxNumSeqs', 1, 4096),
    startTimeoutS: s.startTimeoutS === undefined ? 120 : num(s.startTimeoutS, 'serve.startTimeoutS', 1),
    runTimeoutS: s.runTimeoutS === undefined ? 600 : num(s.runTimeoutS, 'serve.runTimeoutS', 1),
  });

  return Object.freeze({
    name,
    model,
    points: Object.freeze(points.map((p) => Object.freeze(p))),
    load,
    network,
    retry,
    serve,
    repeats: top.repeats === undefined ? 1 : int(top.repeats, 'repeats', 1, 100),
    out: top.out === undefined ? null : str(top.out, 'out'),
  });
}

/** `e16-k4-w2-contiguous-rnone-f32` ("e_" / "k_" when the model's own value is used). */
function axisId(p: AxisValues): string {
  const placement = p.placement.replace(/[^0-9a-z]+/gi, '.');
  return `e${p.experts ?? '_'}-k${p.topK ?? '_'}-w${p.workers}-${placement}-r${p.replicate.replace(/[^0-9a-z]+/gi, '.')}-${p.wireDtype}`;
}

/** The runs of a sweep, in report order: every point, `repeats` times. */
export function expandPoints(s: Sweep): Point[] {
  const out: Point[] = [];
  for (const p of s.points) for (let r = 0; r < s.repeats; r++) out.push(Object.freeze({ ...p, index: out.length, repeat: r, id: `${axisId(p)}-n${r}` }));
  return out;
}

/** sha256 of the canonical JSON of a value (sorted keys): content ids for sweeps and checkpoints. */
export function contentHash(v: unknown): string {
  return createHash('sha256').update(canonicalJson(v)).digest('hex');
}

export function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (v !== null && typeof v === 'object') {
    return `{${Object.keys(v)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonicalJson((v as Obj)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}

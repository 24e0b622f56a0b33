/**
 * Checkpoints of a sweep's points, made by the CLI (`moeserve make-checkpoint --preset P --set
 * <experts key>=E --set num_experts_per_tok=K ...`) and cached by content: the folder name is the
 * sha256 of {preset, overrides, seed, dtype}, so any point (of any sweep, on any run) asking for
 * the same checkpoint reuses it. A checkpoint is written into a temporary folder and renamed into
 * place, so a crash never leaves a half-written one where a later run would read it.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { UnrecoverableError } from 'bullmq';
import { PRESETS, isPresetName } from '../../model/src/presets.js';
import { MOESERVE_BIN } from './processes.js';
import { contentHash, type Point, type SweepModel } from './sweep.js';

const run = promisify(execFile);

/** The config.json key holding the routed-expert count, per architecture family. */
const EXPERT_KEYS = ['n_routed_experts', 'num_local_experts', 'num_experts'] as const;

/** The overrides of one point: the sweep's `model.set` plus its expert count and top-k. */
export function pointOverrides(model: SweepModel, p: Pick<Point, 'experts' | 'topK'>): Record<string, string | number | boolean> {
  const set: Record<string, string | number | boolean> = { ...model.set };
  if (p.experts !== null) {
    if (!model.preset || !isPresetName(model.preset)) throw new UnrecoverableError(`unknown preset "${model.preset}"`);
    const cfg = PRESETS[model.preset].config;
    const key = EXPERT_KEYS.find((k) => k in cfg);
    if (!key) throw new UnrecoverableError(`preset ${model.preset} has none of ${EXPERT_KEYS.join(', ')}`);
    set[key] = p.experts;
  }
  if (p.topK !== null) set['num_experts_per_tok'] = p.topK;
  return set;
}

/**
 * The checkpoint folder of a point: `model.checkpoint` as is, or a cached make-checkpoint output
 * (made now if missing). Bad presets / overrides are UnrecoverableError (retrying cannot help).
 */
export async function checkpointFor(model: SweepModel, p: Pick<Point, 'experts' | 'topK'>, cacheDir: string): Promise<{ dir: string; made: boolean }> {
  if (model.checkpoint) {
    if (!fs.existsSync(path.join(model.checkpoint, 'config.json'))) throw new UnrecoverableError(`model.checkpoint ${model.checkpoint}: no config.json`);
    return { dir: path.resolve(model.checkpoint), made: false };
  }
  const set = pointOverrides(model, p);
  const hash = contentHash({ preset: model.preset, set, seed: model.seed, dtype: model.dtype }).slice(0, 16);
  const dir = path.join(cacheDir, `${model.preset}-${hash}`);
  if (fs.existsSync(path.join(dir, 'config.json'))) return { dir, made: false };
  fs.mkdirSync(cacheDir, { recursive: true });
  const tmp = fs.mkdtempSync(path.join(cacheDir, `.tmp-${hash}-`));
  try {
    const args = [MOESERVE_BIN, 'make-checkpoint', '--preset', model.preset!, '--out', tmp, '--seed', String(model.seed), '--dtype', model.dtype];
    for (const [k, v] of Object.entries(set)) args.push('--set', `${k}=${v}`);
    try {
      await run(process.execPath, args, { timeout: 600_000, maxBuffer: 16 * 2 ** 20 });
    } catch (err) {
      const e = err as Error & { stderr?: string; code?: number | string };
      const why = (e.stderr ?? '').trim().split('\n').filter((l) => !/^\s+\S+ \d+%/.test(l)).slice(-3).join(' / ') || e.message;
      // make-checkpoint exits 1 with "error [invalid_request|config_unsupported]" for bad overrides.
      if (/error \[(invalid_request|config_unsupported)\]/.test(why)) throw new UnrecoverableError(`make-checkpoint ${model.preset} ${JSON.stringify(set)}: ${why}`);
      throw new Error(`make-checkpoint ${model.preset} ${JSON.stringify(set)}: ${why}`);
    }
    try {
      fs.renameSync(tmp, dir);
    } catch (err) {
      // Another run made the same checkpoint meanwhile: keep theirs.
      if (!fs.existsSync(path.join(dir, 'config.json'))) throw err;
      return { dir, made: false };
    }
    return { dir, made: true };
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

/** The step shape of a checkpoint for the cost model, from its config.json. */
export interface ModelShape {
  readonly architecture: string;
  readonly hidden: number;
  readonly moeIntermediate: number;
  readonly experts: number;
  readonly topK: number;
  readonly layers: number;
  readonly moeLayers: number;
  readonly vocabSize: number;
}

/** Reads the fields the cost model needs (Mixtral, Qwen2/3-MoE and DeepSeek-V2/V3 names). */
export function readModelShape(dir: string): ModelShape {
  const c = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
  const n = (k: string): number | undefined => (typeof c[k] === 'number' ? (c[k] as number) : undefined);
  const layers = n('num_hidden_layers') ?? 0;
  const experts = n('n_routed_experts') ?? n('num_local_experts') ?? n('num_experts') ?? 0;
  const mlpOnly = Array.isArray(c['mlp_only_layers']) ? (c['mlp_only_layers'] as number[]) : [];
  let moeLayers = 0;
  for (let l = 0; l < layers; l++) {
    if (c['model_type'] === 'mixtral') moeLayers++;
    else if (c['n_routed_experts'] !== undefined) {
      if (l >= (n('first_k_dense_replace') ?? 0) && l % (n('moe_layer_freq') ?? 1) === 0) moeLayers++;
    } else if (!mlpOnly.includes(l) && (l + 1) % (n('decoder_sparse_step') ?? 1) === 0) moeLayers++;
  }
  return {
    architecture: Array.isArray(c['architectures']) ? String((c['architectures'] as unknown[])[0]) : String(c['model_type']),
    hidden: n('hidden_size') ?? 0,
    moeIntermediate: n('moe_intermediate_size') ?? n('intermediate_size') ?? 0,
    experts,
    topK: n('num_experts_per_tok') ?? 0,
    layers,
    moeLayers,
    vocabSize: n('vocab_size') ?? 0,
  };
}

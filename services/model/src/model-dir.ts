/**
 * Opening a model folder: the one owner, for the gateway (engine/load.ts), the worker
 * (workers/src/main.ts) and the router's in-process and identity checks.
 *
 *   config.json  -> parseModelConfig (normalized, frozen)
 *   *.safetensors -> Checkpoint (headers only; tensors read lazily), every tensor's presence and
 *                    shape validated against the weight manifest
 *   both          -> the model fingerprint (see `modelFingerprint`)
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { ServerError } from '../../common/src/errors.js';
import { Checkpoint } from './checkpoint/checkpoint.js';
import { parseModelConfig, type MoeModelConfig } from './config.js';
import { validateCheckpoint } from './weights.js';

export interface ModelDir {
  readonly dir: string;
  readonly cfg: MoeModelConfig;
  readonly checkpoint: Checkpoint;
  /** `modelFingerprint(dir, cfg)`, computed once at open. */
  readonly fingerprint: string;
}

/** Reads and normalizes config.json (config_unsupported when it cannot be read or parsed). */
export function readModelConfig(dir: string): MoeModelConfig {
  const configPath = path.join(dir, 'config.json');
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(configPath, 'utf8'));
  } catch (err) {
    throw new ServerError('config_unsupported', `cannot read ${configPath}: ${(err as Error).message}`, { cause: err });
  }
  return parseModelConfig(raw);
}

/** Reads config.json and opens the checkpoint (headers only), validating every tensor's presence and shape. */
export function openModelDir(dir: string): ModelDir {
  const cfg = readModelConfig(dir);
  const checkpoint = Checkpoint.open(dir);
  try {
    validateCheckpoint(cfg, checkpoint);
    return { dir, cfg, checkpoint, fingerprint: modelFingerprint(dir, cfg) };
  } catch (err) {
    checkpoint.close();
    throw err;
  }
}

/** Bytes of each weight file hashed into the fingerprint (its header and first tensor bytes). */
const FINGERPRINT_HEAD_BYTES = 65536;

/**
 * The model's one identity, 32 hex digits: sha256 of the normalized config and of each weight
 * file's name, size and first 64 KiB. Gateway and workers compare it (a gateway never routes to a
 * worker serving another model), and the Redis KV tier keys blocks by it (two checkpoints of one
 * config with different weights never share cached blocks).
 */
export function modelFingerprint(dir: string, cfg: MoeModelConfig): string {
  const h = createHash('sha256').update(JSON.stringify(cfg));
  const buf = Buffer.alloc(FINGERPRINT_HEAD_BYTES);
  for (const f of fs.readdirSync(dir).filter((n) => n.endsWith('.safetensors')).sort()) {
    const fd = fs.openSync(path.join(dir, f), 'r');
    try {
      const n = fs.readSync(fd, buf, 0, buf.length, 0);
      h.update(`${f}:${fs.fstatSync(fd).size}:`).update(buf.subarray(0, n));
    } finally {
      fs.closeSync(fd);
    }
  }
  return h.digest('hex').slice(0, 32);
}

/**
 * What a worker needs of a model folder: the normalized config and the lazy checkpoint reader
 * (headers only at open; the shard then reads exactly its experts' tensors), plus the config
 * fingerprint both ends compare so that a gateway never routes to a worker serving another model.
 */
import fs from 'node:fs';
import path from 'node:path';
import { ServerError } from '../../services/common/src/errors.js';
import { Checkpoint } from '../../services/model/src/checkpoint/checkpoint.js';
import { parseModelConfig, type MoeModelConfig } from '../../services/model/src/config.js';
import { validateCheckpoint } from '../../services/model/src/weights.js';

export interface WorkerModel {
  readonly cfg: MoeModelConfig;
  readonly checkpoint: Checkpoint;
}

export function readModelConfig(dir: string): MoeModelConfig {
  const p = path.join(dir, 'config.json');
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(p, 'utf8'));
  } catch (err) {
    throw new ServerError('config_unsupported', `cannot read ${p}: ${(err as Error).message}`, { cause: err });
  }
  return parseModelConfig(raw);
}

/** Opens the folder: config + checkpoint headers, every tensor's presence and shape validated. */
export function openWorkerModel(dir: string): WorkerModel {
  const cfg = readModelConfig(dir);
  const checkpoint = Checkpoint.open(dir);
  try {
    validateCheckpoint(cfg, checkpoint);
  } catch (err) {
    checkpoint.close();
    throw err;
  }
  return { cfg, checkpoint };
}

export { configFingerprint, moeLayers } from '../../services/model/src/config.js';

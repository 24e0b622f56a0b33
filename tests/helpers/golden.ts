/**
 * Golden fixtures (tests/fixtures/golden, copied as data from ../shared/fixtures) and the
 * comparisons every golden test makes, with the fixture's own tolerances.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'vitest';

export const GOLDEN_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../fixtures/golden');
export const FIXTURES = ['mixtral-tiny', 'qwen2-moe-tiny', 'deepseek-v2-tiny'] as const;
export type FixtureName = (typeof FIXTURES)[number];
export const PROMPTS = ['len1', 'len7', 'len33'] as const;

export interface ExpectedPrompt {
  input_ids: number[];
  last_logits: number[];
  top5_ids: number[][];
  greedy_ids: number[];
}

export interface Expected {
  prompts: Record<(typeof PROMPTS)[number], ExpectedPrompt>;
  routing: { prompt: string; layers: { layer: number; expert_ids: number[][]; weights: number[][] }[] };
  tolerances: { last_logits: { atol: number }; 'routing.weights': { atol: number } };
}

export function fixtureDir(name: FixtureName): string {
  return path.join(GOLDEN_DIR, name);
}

export function loadExpected(name: FixtureName): Expected {
  return JSON.parse(fs.readFileSync(path.join(fixtureDir(name), 'expected.json'), 'utf8')) as Expected;
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/** Routing compared as expected.json says: ids as a set per position, weight per id within atol. */
export function expectRouting(
  actual: { layer: number; expert_ids: number[][]; weights: number[][] }[],
  expected: Expected['routing']['layers'],
  atol: number,
): void {
  expect(actual.map((l) => l.layer)).toEqual(expected.map((l) => l.layer));
  for (let li = 0; li < expected.length; li++) {
    const a = actual[li]!;
    const e = expected[li]!;
    expect(a.expert_ids.length).toBe(e.expert_ids.length);
    for (let t = 0; t < e.expert_ids.length; t++) {
      expect([...a.expert_ids[t]!].sort((x, y) => x - y), `layer ${e.layer} position ${t} ids`).toEqual([...e.expert_ids[t]!].sort((x, y) => x - y));
      for (let k = 0; k < e.expert_ids[t]!.length; k++) {
        const id = e.expert_ids[t]![k]!;
        const w = a.weights[t]![a.expert_ids[t]!.indexOf(id)]!;
        expect(Math.abs(w - e.weights[t]![k]!), `layer ${e.layer} position ${t} expert ${id} weight`).toBeLessThanOrEqual(atol);
      }
    }
  }
}

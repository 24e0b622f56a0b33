/**
 * The CLI contract of the model core, through the real binary:
 * `moeserve generate --model DIR --prompt-ids ... --max-tokens 16 --temperature 0 --json [--routing]`
 * prints expected.json-shaped output equal to the fixture; `make-checkpoint` writes a checkpoint
 * that loads and generates; bad input is a clear error and a non-zero exit, not a crash.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { expectRouting, FIXTURES, fixtureDir, loadExpected, maxAbsDiff } from '../helpers/golden.js';
import { runCli } from '../helpers/cli.js';

const tmp = path.join(os.tmpdir(), `moeserve-cli-${randomUUID()}`);
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('moeserve generate --json', () => {
  for (const fixture of FIXTURES) {
    for (const noCache of [false, true]) {
      it(`${fixture}${noCache ? ' --no-cache' : ''}: len7 output equals expected.json (ids, top-5, last logits, routing)`, async () => {
        const exp = loadExpected(fixture);
        const p = exp.prompts.len7;
        const args = ['generate', '--model', fixtureDir(fixture), '--prompt-ids', p.input_ids.join(','), '--max-tokens', '16', '--temperature', '0', '--json', '--routing'];
        if (noCache) args.push('--no-cache');
        const r = await runCli(args);
        expect(r.code, r.stderr).toBe(0);
        const out = JSON.parse(r.stdout.trim());
        expect(out.input_ids).toEqual(p.input_ids);
        expect(out.greedy_ids).toEqual(p.greedy_ids);
        expect(out.top5_ids).toEqual(p.top5_ids);
        expect(maxAbsDiff(out.last_logits, p.last_logits)).toBeLessThanOrEqual(exp.tolerances.last_logits.atol);
        expectRouting(out.routing.layers, exp.routing.layers, exp.tolerances['routing.weights'].atol);
      });
    }
  }
});

describe('moeserve make-checkpoint', () => {
  it('writes a checkpoint that loads and generates text', async () => {
    const dir = path.join(tmp, 'tiny-dsv3');
    const w = await runCli(['make-checkpoint', '--preset', 'tiny-dsv3', '--out', dir, '--set', 'num_hidden_layers=2', '--seed', '3']);
    expect(w.code, w.stderr).toBe(0);
    expect(JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')).num_hidden_layers).toBe(2);
    const g = await runCli(['generate', '--model', dir, '--prompt', 'hello experts', '--max-tokens', '5']);
    expect(g.code, g.stderr).toBe(0);
    expect(g.stdout.startsWith('hello experts')).toBe(true);
  });
});

describe('EXPECTED FAILURE - bad CLI input is a clear error', () => {
  it('a token id outside the vocabulary', async () => {
    const r = await runCli(['generate', '--model', fixtureDir('mixtral-tiny'), '--prompt-ids', '1,99999', '--json']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/invalid_token_id.*99999.*vocabulary/);
  });
  it('a folder that is not a checkpoint', async () => {
    fs.mkdirSync(tmp, { recursive: true });
    const r = await runCli(['generate', '--model', tmp, '--prompt-ids', '1', '--json']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/config\.json/);
  });
  it('an unknown preset', async () => {
    const r = await runCli(['make-checkpoint', '--preset', 'nope', '--out', path.join(tmp, 'x')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/unknown preset "nope".*mixtral-perf/);
  });
});

/**
 * The CLI contract of the model core with expert workers, through the real binary:
 * `moeserve generate --model DIR --prompt-ids ... --json --routing --workers N` prints the
 * fixture's output (the gateway starts N local worker processes and stops them on exit).
 */
import { describe, expect, it } from 'vitest';
import { runCli } from '../helpers/cli.js';
import { expectRouting, FIXTURES, fixtureDir, loadExpected, maxAbsDiff } from '../helpers/golden.js';

const WORKERS: Record<(typeof FIXTURES)[number], string[]> = {
  'mixtral-tiny': ['--workers', '3'], // 8 experts: 3 + 3 + 2
  'qwen2-moe-tiny': ['--workers', '2', '--placement', 'round-robin', '--worker-transport', 'tcp'],
  'deepseek-v2-tiny': ['--workers', '2', '--replicate', '0:2,5:2'],
};

describe('moeserve generate --json with expert workers', () => {
  for (const fixture of FIXTURES) {
    it(`${fixture} ${WORKERS[fixture].join(' ')}: len7 output equals expected.json`, async () => {
      const exp = loadExpected(fixture);
      const p = exp.prompts.len7;
      const r = await runCli(['generate', '--model', fixtureDir(fixture), '--prompt-ids', p.input_ids.join(','), '--max-tokens', '16', '--temperature', '0', '--json', '--routing', ...WORKERS[fixture]]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stderr).toMatch(/local workers/);
      const out = JSON.parse(r.stdout.trim());
      expect(out.greedy_ids).toEqual(p.greedy_ids);
      expect(out.top5_ids).toEqual(p.top5_ids);
      expect(maxAbsDiff(out.last_logits, p.last_logits)).toBeLessThanOrEqual(exp.tolerances.last_logits.atol);
      expectRouting(out.routing.layers, exp.routing.layers, exp.tolerances['routing.weights'].atol);
    });
  }
});

describe('EXPECTED FAILURE - bad topology flags are clear errors', () => {
  const base = ['generate', '--model', fixtureDir('mixtral-tiny'), '--prompt-ids', '1,2', '--json'];
  it('more workers than experts', async () => {
    const r = await runCli([...base, '--workers', '9']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/invalid_request.*9 workers for 8 experts/);
  });
  it('an unknown placement', async () => {
    const r = await runCli([...base, '--workers', '2', '--placement', 'random']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/--placement must be contiguous, round-robin or an explicit map/);
  });
});

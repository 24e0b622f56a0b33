/**
 * `--device cuda` on a machine without a usable GPU, through the real CLI: exactly one warning
 * naming the reason, then the run is the CPU run (equal to expected.json). fp16 weights are a CUDA
 * format: refused on the CPU with a clear error, never silently widened to fp32.
 * The GPU side itself is checked by deploy/gpu-check (on a device machine).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { fixtureDir, loadExpected } from '../helpers/golden.js';
import { REPO, runCli } from '../helpers/cli.js';

const tmp = path.join(os.tmpdir(), `moeserve-gpu-${randomUUID()}`);
fs.mkdirSync(tmp, { recursive: true });
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const exp = loadExpected('mixtral-tiny');
const p = exp.prompts.len7;
const GENERATE = ['generate', '--model', fixtureDir('mixtral-tiny'), '--prompt-ids', p.input_ids.join(','), '--max-tokens', '16', '--temperature', '0', '--json'];
const warnings = (stderr: string) => stderr.split('\n').filter((l) => /warn|error/i.test(l));
/** The pair `npm run setup:cuda` installs; present on a developer machine that ran it, absent in CI. */
const PAIR = path.join(REPO, '.cache/ort-cuda');
const hasPair = fs.existsSync(path.join(PAIR, 'ort-cuda.json'));
/** No GPU here when nvidia-smi is absent: the test is about that machine. */
const noGpu = !fs.existsSync('/dev/nvidiactl');

describe.skipIf(!noGpu)('--device cuda without a GPU', () => {
  it('CUDA provider not installed: one warning naming setup:cuda, then the CPU run equal to expected.json', async () => {
    const r = await runCli([...GENERATE, '--device', 'cuda'], { MOESERVE_ORT_CUDA_DIR: tmp });
    expect(r.code, r.stderr).toBe(0);
    expect(warnings(r.stderr)).toHaveLength(1);
    expect(warnings(r.stderr)[0]).toMatch(/--device cuda requested but the CUDA provider is not installed .*npm run setup:cuda.*; running on cpu/);
    expect(JSON.parse(r.stdout).greedy_ids).toEqual(p.greedy_ids);
  });

  it.skipIf(!hasPair)('CUDA pair installed but no CUDA libraries/GPU: one warning with the loader reason, then the CPU run', async () => {
    const r = await runCli([...GENERATE, '--device', 'cuda:0'], { MOESERVE_ORT_CUDA_DIR: PAIR });
    expect(r.code, r.stderr).toBe(0);
    expect(warnings(r.stderr)).toHaveLength(1);
    expect(warnings(r.stderr)[0]).toMatch(/onnxruntime 1\.29\.0: --device cuda requested but the CUDA provider (cannot load \(lib.*\)|failed to start: .*); running on cpu/);
    const out = JSON.parse(r.stdout);
    expect(out.greedy_ids).toEqual(p.greedy_ids);
    expect(out.top5_ids).toEqual(p.top5_ids);
  });

  it('EXPECTED FAILURE - --quantization fp16 with --device cuda falling back to the CPU is refused, naming why', async () => {
    const r = await runCli([...GENERATE, '--device', 'cuda', '--quantization', 'fp16'], { MOESERVE_ORT_CUDA_DIR: tmp });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/error \[invalid_request\]: --quantization fp16 needs the CUDA provider.*CUDA is unavailable here: the CUDA provider is not installed/);
  });
});

describe('EXPECTED FAILURE - fp16 weights on the CPU', () => {
  it('--quantization fp16 with --device cpu is a usage error before any load', async () => {
    const r = await runCli([...GENERATE, '--quantization', 'fp16']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/error \[invalid_request\]: --quantization fp16 needs --device cuda/);
  });
});

#!/usr/bin/env node
/**
 * The GPU check (run.sh calls it on the device; plain JS so it needs nothing but node):
 *  1. golden fixtures on --device cuda, fp32: greedy ids and top-5 exact, last logits within 1e-3,
 *     and the log must say the CUDA provider ran (a silent CPU fallback fails the check);
 *  2. one run with two worker processes on the one GPU (mixtral-tiny len7, same comparisons);
 *  3. decode tokens/s of the perf presets at batch 1, 16, 64 in fp16 (and fp32 for the ratio);
 *  4. the fixtures through Hugging Face transformers on the device (hf_check.py).
 * Writes OUT/summary.json after every phase, so a run cut short still reports what it did.
 *   node deploy/gpu-check/check.mjs --out DIR [--skip perf,hf,...]
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

const args = process.argv.slice(2);
const OUT = args.includes('--out') ? args[args.indexOf('--out') + 1] : '/tmp/gpu-check-out';
const SKIP = new Set(args.includes('--skip') ? args[args.indexOf('--skip') + 1].split(',') : []);
const DEVICE = args.includes('--device') ? args[args.indexOf('--device') + 1] : 'cuda';
const GOLDEN = 'tests/fixtures/golden';
const FIXTURES = ['mixtral-tiny', 'qwen2-moe-tiny', 'deepseek-v2-tiny'];
const ATOL = 1e-3;
fs.mkdirSync(OUT, { recursive: true });
const summary = { started: new Date().toISOString(), device: DEVICE, fixtures: {}, workers: null, perf: [], hf: null, ok: false };
const save = () => fs.writeFileSync(path.join(OUT, 'summary.json'), `${JSON.stringify(summary, null, 2)}\n`);
const run = (cmd, argv, timeoutS) => {
  const t0 = Date.now();
  const r = spawnSync(cmd, argv, { encoding: 'utf8', timeout: timeoutS * 1000, maxBuffer: 64 * 2 ** 20 });
  return { code: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '', seconds: (Date.now() - t0) / 1000, timedOut: r.error?.code === 'ETIMEDOUT' };
};
const cli = (argv, timeoutS = 120) => run(process.execPath, ['bin/moeserve.mjs', ...argv], timeoutS);
const onDevice = (stderr) => DEVICE === 'cpu' || /execution provider cuda/.test(stderr);

function compare(out, p) {
  let maxDiff = 0;
  for (let i = 0; i < p.last_logits.length; i++) maxDiff = Math.max(maxDiff, Math.abs(out.last_logits[i] - p.last_logits[i]));
  const greedy = JSON.stringify(out.greedy_ids) === JSON.stringify(p.greedy_ids);
  const top5 = JSON.stringify(out.top5_ids) === JSON.stringify(p.top5_ids);
  return { greedy, top5, maxAbsDiffLastLogits: maxDiff, ok: greedy && top5 && maxDiff <= ATOL };
}

function generate(fixture, prompt, extra) {
  const p = JSON.parse(fs.readFileSync(path.join(GOLDEN, fixture, 'expected.json'), 'utf8')).prompts[prompt];
  const r = cli(['generate', '--model', path.join(GOLDEN, fixture), '--prompt-ids', p.input_ids.join(','), '--max-tokens', String(p.greedy_ids.length), '--temperature', '0', '--json', '--device', DEVICE, ...extra]);
  if (r.code !== 0) return { ok: false, error: r.stderr.slice(-800), seconds: r.seconds };
  const c = compare(JSON.parse(r.stdout.trim()), p);
  return { ...c, ok: c.ok && onDevice(r.stderr), provider: r.stderr.match(/onnxruntime [^\n]*/)?.[0] ?? null, seconds: r.seconds };
}

// 1. fixtures, fp32, on the device
if (!SKIP.has('fixtures')) {
  for (const f of FIXTURES) for (const prompt of ['len1', 'len7', 'len33']) {
    summary.fixtures[`${f}/${prompt}`] = generate(f, prompt, []);
    console.log(`fixture ${f}/${prompt}: ${JSON.stringify(summary.fixtures[`${f}/${prompt}`]).slice(0, 300)}`);
  }
  save();
}
// 2. two worker processes on the one GPU
if (!SKIP.has('workers')) {
  summary.workers = generate('mixtral-tiny', 'len7', ['--workers', '2']);
  console.log(`workers 2: ${JSON.stringify(summary.workers).slice(0, 300)}`);
  save();
}
// 3. decode tokens/s, fp16 (the GPU format) then fp32 for the ratio
if (!SKIP.has('perf')) {
  for (const preset of ['mixtral-perf', 'dsv2-perf']) for (const quant of DEVICE === 'cpu' ? ['none'] : ['fp16', 'none']) {
    const r = run(process.execPath, ['--import', 'tsx', 'deploy/gpu-check/decode.ts', preset, DEVICE, quant, '1,16,64', '8'], 150);
    let res;
    try {
      res = JSON.parse(r.stdout.trim().split('\n').pop());
    } catch {
      res = { preset, quant, error: (r.timedOut ? 'timed out; ' : '') + r.stderr.slice(-600) };
    }
    res.seconds = r.seconds;
    summary.perf.push(res);
    console.log(`decode ${preset} ${quant}: ${JSON.stringify(res).slice(0, 400)}`);
    save();
  }
}
// 4. Hugging Face transformers on the device, independently of moeserve
if (!SKIP.has('hf')) {
  const r = run('python3', ['deploy/gpu-check/hf_check.py', GOLDEN, path.join(OUT, 'hf.json')], 180);
  summary.hf = fs.existsSync(path.join(OUT, 'hf.json')) ? JSON.parse(fs.readFileSync(path.join(OUT, 'hf.json'), 'utf8')) : { error: r.stderr.slice(-800) };
  console.log(`hf: ${r.stdout.slice(-600)}`);
}
const fixturesOk = Object.values(summary.fixtures).every((x) => x.ok);
summary.ok = fixturesOk && (summary.workers?.ok ?? true) && summary.perf.every((x) => !x.error) && (summary.hf ? Object.values(summary.hf.fixtures ?? {}).every((x) => x.ok) && !summary.hf.error : true);
summary.finished = new Date().toISOString();
save();
console.log('\nsummary:');
for (const [k, v] of Object.entries(summary.fixtures)) console.log(`  ${k.padEnd(24)} ${v.ok ? 'ok' : 'FAIL'}  max|dlogit| ${v.maxAbsDiffLastLogits?.toExponential(2) ?? '-'}`);
if (summary.workers) console.log(`  workers 2                ${summary.workers.ok ? 'ok' : 'FAIL'}`);
for (const p of summary.perf) console.log(`  ${p.preset} ${p.quant}: ${p.decode ? Object.entries(p.decode).map(([b, d]) => `b${b} ${d.tokS.toFixed(0)} tok/s`).join(', ') : p.error?.slice(0, 120)}`);
if (summary.hf) console.log(`  hf (${summary.hf.device}): ${Object.entries(summary.hf.fixtures ?? {}).map(([k, v]) => `${k} ${v.ok ? 'ok' : 'FAIL'}`).join(', ')}`);
console.log(`  ALL ${summary.ok ? 'OK' : 'NOT OK'}`);
process.exit(summary.ok ? 0 : 1);

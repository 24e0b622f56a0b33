/**
 * `moeserve generate`: generate from a checkpoint on the command line.
 *
 * With --json it prints, per prompt, one JSON object whose fields have the names and shapes of a
 * prompt entry in a golden fixture's expected.json (input_ids, greedy_ids, top5_ids, last_logits,
 * and with --routing the prompt's routing). As in those fixtures, EOS is not special in --json
 * mode: exactly --max-tokens ids are generated unless --stop-at-eos is given.
 */
import { parseArgs } from 'node:util';
import { ServerError } from '../common/src/errors.js';
import { generateCached, generateRecompute, routingJson, type GenerateParams } from '../gateway/src/engine/generate.js';
import { loadModel } from '../gateway/src/engine/load.js';
import { readModelConfig } from '../model/src/model-dir.js';
import { expertsOnWorkers, startTopology, TOPOLOGY_FLAGS, TOPOLOGY_HELP, topologyFromFlags, type Topology } from '../../router/index.js';
import { validateSamplingParams } from '../gateway/src/sampling/params.js';
import type { RuntimeOptions } from '../model/src/runtime/onnx.js';
import { TextTokenizer } from '../gateway/src/tokenizer/tokenizer.js';
import { ensureDemoModel } from './demo-model.js';
import type { MlaImpl } from '../model/src/graphs/attention.js';
import { parseIntList, runtimeFromFlags, RUNTIME_FLAGS } from './flags.js';

const HELP = `usage: moeserve generate --model DIR (--prompt-ids 1,2,3 | --prompt TEXT)... [flags]
  --model DIR            Hugging Face checkpoint folder (config.json, safetensors, tokenizer.json)
  --demo                 use the built-in demo model (random weights, real Qwen3 tokenizer)
  --prompt-ids LIST      comma-separated token ids (repeat for a batch)
  --prompt TEXT          text, tokenized with the checkpoint's tokenizer (repeat for a batch)
  --max-tokens N         new tokens (default 16)
  --temperature T        0 = greedy (default 0)
  --top-p P --top-k K --min-p P --seed S
  --json                 print expected.json-shaped objects (one per line)
  --routing              with --json: add the prompt's routing per MoE layer
  --stop-at-eos          with --json: stop at the model's EOS (default: exactly --max-tokens)
  --no-cache             recompute the whole sequence every step (the reference path)
  --device cpu|cuda      execution provider (default cpu; cuda falls back to cpu)
  --mla auto|absorbed|naive  MLA attention form (default ${RUNTIME_FLAGS.mla.default})
  --threads N            ONNX Runtime intra-op threads, one pool per process (default ${RUNTIME_FLAGS.threads.default}: the cores)
  --quantization Q       weight format: none (fp32, exact) | int8 (weight-only, blocks of 32) (default ${RUNTIME_FLAGS.quantization.default})
expert workers (the output is the same as in one process):
${TOPOLOGY_HELP}`;

export async function generateCommand(argv: string[], env: NodeJS.ProcessEnv): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      model: { type: 'string' },
      demo: { type: 'boolean', default: false },
      'prompt-ids': { type: 'string', multiple: true },
      prompt: { type: 'string', multiple: true },
      'max-tokens': { type: 'string', default: '16' },
      temperature: { type: 'string', default: '0' },
      'top-p': { type: 'string' },
      'top-k': { type: 'string' },
      'min-p': { type: 'string' },
      seed: { type: 'string' },
      json: { type: 'boolean', default: false },
      routing: { type: 'boolean', default: false },
      'stop-at-eos': { type: 'boolean', default: false },
      'no-cache': { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
      ...RUNTIME_FLAGS,
      ...TOPOLOGY_FLAGS,
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(HELP);
    return;
  }
  let dir = values.model;
  if (values.demo) dir = await ensureDemoModel(env, (msg) => process.stderr.write(`${msg}\n`));
  if (!dir) throw new ServerError('invalid_request', `--model DIR is required (or --demo)\n${HELP}`);
  const idPrompts = (values['prompt-ids'] ?? []).map((s) => parseIntList(s, '--prompt-ids'));
  const textPrompts = values.prompt ?? [];
  if (idPrompts.length + textPrompts.length === 0) {
    if (!values.demo) throw new ServerError('invalid_request', `give --prompt-ids or --prompt\n${HELP}`);
    textPrompts.push('The expert router sends each token to');
  }
  const maxTokens = Number(values['max-tokens']);
  if (!Number.isInteger(maxTokens) || maxTokens < 1) throw new ServerError('invalid_request', `--max-tokens must be a positive integer, got ${values['max-tokens']}`);

  const log = (msg: string, level: string) => process.stderr.write(`[${level}] ${msg}\n`);
  const runtime = runtimeFromFlags(values, log);
  const topoOpts = topologyFromFlags(values, dir, runtime, log);
  let topology: Topology | null = null;
  if (expertsOnWorkers(topoOpts)) {
    topology = await startTopology(readModelConfig(dir), topoOpts);
    log(topology.description, 'info');
  }
  try {
    await runGenerate(dir, values, idPrompts, textPrompts, maxTokens, runtime, topology);
  } finally {
    await topology?.close();
  }
}

async function runGenerate(
  dir: string,
  values: { mla?: string; temperature?: string; 'top-p'?: string; 'top-k'?: string; 'min-p'?: string; seed?: string; json?: boolean; routing?: boolean; 'stop-at-eos'?: boolean; 'no-cache'?: boolean },
  idPrompts: number[][],
  textPrompts: string[],
  maxTokens: number,
  runtime: RuntimeOptions,
  topology: Topology | null,
): Promise<void> {
  const model = await loadModel(dir, { runtime, mlaImpl: (values.mla ?? RUNTIME_FLAGS.mla.default) as MlaImpl, experts: topology?.experts });
  const tokenizer = textPrompts.length > 0 || !values.json ? TextTokenizer.fromDir(dir) : null;
  const prompts = [...idPrompts, ...textPrompts.map((t) => tokenizer!.encode(t))];
  const num = (s: string | undefined) => (s === undefined ? undefined : Number(s));
  const sampling = validateSamplingParams(
    { temperature: Number(values.temperature), topP: num(values['top-p']), topK: num(values['top-k']), minP: num(values['min-p']), seed: num(values.seed) },
    model.cfg.vocabSize,
  );
  const stopAtEos = !values.json || values['stop-at-eos'];
  const params: GenerateParams = { maxTokens, sampling, stopTokenIds: stopAtEos ? model.cfg.eosTokenIds : [] };

  const results = values['no-cache']
    ? await generateRecompute(model.cfg, model.runner, model.experts, prompts, params)
    : await generateCached(model.engine, prompts, params);
  const failed = results.find((r) => r.error);
  if (failed?.error) throw new ServerError(failed.error.code, failed.error.message);

  for (let i = 0; i < results.length; i++) {
    const r = results[i]!;
    if (values.json) {
      const out: Record<string, unknown> = { input_ids: r.input_ids, greedy_ids: r.greedy_ids, top5_ids: r.top5_ids, last_logits: r.last_logits };
      if (values.routing) {
        const fwd = await model.runner.forward([{ tokens: r.input_ids, pastLen: 0, kvSeqId: -1, logits: 'none' }], null, model.experts, true);
        out.routing = routingJson(fwd.routing!, r.input_ids.length, model.cfg.moe.nActivatedExperts);
      }
      process.stdout.write(`${JSON.stringify(out)}\n`);
    } else {
      const text = tokenizer!.decode(r.greedy_ids);
      process.stdout.write(`${textPrompts[i - idPrompts.length] ?? tokenizer!.decode(r.input_ids)}${text}\n`);
    }
  }
}

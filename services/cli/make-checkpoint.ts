/**
 * `moeserve make-checkpoint --preset NAME --out DIR [--set key=value ...] [--seed N] [--dtype F32|BF16|F16]`
 */
import { parseArgs } from 'node:util';
import { ServerError } from '../common/src/errors.js';
import { makeCheckpoint, parseSetArgs, PRESET_NAMES, type GeneratedDtype } from '../model/src/make-checkpoint.js';
import { progressBar } from './flags.js';

const HELP = `usage: moeserve make-checkpoint --preset NAME --out DIR [flags]
  --preset NAME        ${PRESET_NAMES.join(' | ')}
  --out DIR            folder to write (config.json, safetensors, tokenizer files)
  --set key=value      override a config.json field (repeatable; the value is parsed as JSON when it can be)
  --seed N             weight seed (default 0)
  --dtype F32|BF16|F16 tensor dtype on disk (default F32)
  --max-shard-mb N     split the weights into shards of at most N MiB (with an index file)
`;

export async function makeCheckpointCommand(argv: string[], _env: NodeJS.ProcessEnv): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      preset: { type: 'string' },
      out: { type: 'string' },
      set: { type: 'string', multiple: true },
      seed: { type: 'string', default: '0' },
      dtype: { type: 'string', default: 'F32' },
      'max-shard-mb': { type: 'string' },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(HELP);
    return;
  }
  if (!values.preset || !values.out) throw new ServerError('invalid_request', `--preset and --out are required\n${HELP}`);
  const res = makeCheckpoint({
    preset: values.preset,
    outDir: values.out,
    set: parseSetArgs(values.set ?? []),
    seed: Number(values.seed),
    dtype: values.dtype as GeneratedDtype,
    maxShardBytes: values['max-shard-mb'] ? Number(values['max-shard-mb']) * 2 ** 20 : undefined,
    onProgress: progressBar(`  ${values.preset}`),
  });
  if (res.addedKeys.length > 0) process.stderr.write(`note: keys not in the preset's config.json were added: ${res.addedKeys.join(', ')}\n`);
  process.stdout.write(`wrote ${res.outDir}: ${res.tensorCount} tensors, ${(res.totalBytes / 2 ** 20).toFixed(1)} MiB, ${res.files.length} files\n`);
}

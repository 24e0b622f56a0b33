/**
 * moeserve command line: the only place that reads argv and the environment. Each command parses
 * its flags into a frozen options object and passes it down explicitly.
 *
 *   moeserve generate --model DIR (--prompt-ids 1,2,3 | --prompt TEXT) [--max-tokens 16] [--json] ...
 *   moeserve make-checkpoint --preset NAME --out DIR [--set key=value ...]
 *   moeserve serve --model DIR ...          (the OpenAI-compatible server)
 *   moeserve worker --model DIR --experts SPEC --port P   (an expert worker)
 *
 * Every command answers --help (exit 0). A command line parseArgs rejects (unknown flag, missing
 * value) is a usage error: exit 2. Other failures print `error [code]` and exit 1.
 */
import { toServerError } from './common/src/errors.js';

const USAGE = `usage: moeserve <command> [flags]

commands:
  generate          generate from a checkpoint (moeserve generate --help)
  make-checkpoint   write a seeded random Hugging Face checkpoint from a preset
  serve             serve the OpenAI API
  worker            run an expert worker
  experiment        sweeps over experts / top-k / workers queued on BullMQ (moeserve experiment --help)
`;

/** The errors node:util parseArgs throws for bad command lines (ERR_PARSE_ARGS_UNKNOWN_OPTION, ...). */
function isUsageError(err: unknown): err is Error {
  return err instanceof Error && typeof (err as NodeJS.ErrnoException).code === 'string' && (err as NodeJS.ErrnoException).code!.startsWith('ERR_PARSE_ARGS_');
}

export async function main(argv: string[], env: NodeJS.ProcessEnv): Promise<void> {
  const [command, ...rest] = argv;
  try {
    // Where the GPU onnxruntime pair is (default <repo>/.cache/ort-cuda, see npm run setup:cuda);
    // inherited by the engine thread and by worker processes (their own main reads the same env).
    if (env.MOESERVE_ORT_CUDA_DIR) (await import('./model/src/runtime/onnx.js')).useCudaRuntimeDir(env.MOESERVE_ORT_CUDA_DIR);
    switch (command) {
      case 'generate':
        await (await import('./cli/generate.js')).generateCommand(rest, env);
        break;
      case 'make-checkpoint':
        await (await import('./cli/make-checkpoint.js')).makeCheckpointCommand(rest, env);
        break;
      case 'serve':
        await (await import('./cli/serve.js')).serveCommand(rest, env);
        break;
      case 'worker':
        await (await import('./cli/worker.js')).workerCommand(rest, env);
        break;
      case 'experiment':
        await (await import('./cli/experiment.js')).experimentCommand(rest, env);
        break;
      case undefined:
      case '-h':
      case '--help':
        process.stdout.write(USAGE);
        break;
      default:
        process.stderr.write(`moeserve: unknown command "${command}"\n${USAGE}`);
        process.exitCode = 2;
    }
  } catch (err) {
    if (isUsageError(err)) {
      // node:util parseArgs rejects an unknown flag, a missing flag value or a stray positional.
      if ((err as NodeJS.ErrnoException).code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' && err.message.includes("'--help'")) {
        // A command without its own help text still answers --help (with the command list).
        process.stdout.write(USAGE);
        return;
      }
      process.stderr.write(`moeserve ${command}: usage error: ${err.message} (see: moeserve ${command} --help)\n`);
      process.exitCode = 2;
      return;
    }
    const e = toServerError(err);
    process.stderr.write(`moeserve ${command}: error [${e.code}]: ${e.message}\n`);
    if (e.code === 'internal' && e.stack) process.stderr.write(`${e.stack}\n`);
    process.exitCode = 1;
  }
}

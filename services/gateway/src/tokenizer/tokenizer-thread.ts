/**
 * The tokenizer thread's side (a worker_threads entry, started by PromptEncoder in thread.ts):
 * loads the checkpoint's tokenizer once, then answers encode / chat requests in arrival order.
 * Errors go back as {code, message, param} and are rebuilt as ServerError on the main thread.
 */
import os from 'node:os';
import { parentPort, workerData } from 'node:worker_threads';
import { toServerError } from '../../../common/src/errors.js';
import type { FromTokenizer, ToTokenizer } from './thread.js';
import { TextTokenizer } from './tokenizer.js';

const port = parentPort!;

// Bulk encoding yields the CPU to the HTTP loop and the engine: on Linux a nice value is per
// thread (setpriority(2), NOTES), so pid 0 from here lowers this thread only. Raising one's own
// nice value needs no privilege; elsewhere (or if refused) the thread keeps the default priority.
try {
  os.setPriority(0, 10);
} catch {
  // not fatal: only scheduling preference
}
const { modelDir } = workerData as { modelDir: string };

let tok: TextTokenizer;
try {
  tok = TextTokenizer.fromDir(modelDir);
  port.postMessage({ type: 'ready' } satisfies FromTokenizer);
} catch (err) {
  const e = toServerError(err);
  port.postMessage({ type: 'failed', code: e.code, message: e.message } satisfies FromTokenizer);
}

port.on('message', (m: ToTokenizer) => {
  try {
    let text: string;
    if (m.type === 'chat') text = tok.applyChatTemplate(m.messages, { addGenerationPrompt: m.addGenerationPrompt, continueFinalMessage: m.continueFinalMessage, kwargs: m.kwargs });
    else text = m.text;
    const ids = Int32Array.from(tok.encode(text, { addSpecialTokens: m.addSpecialTokens }));
    // The ids' buffer moves (no copy); the text is sent back only when the main thread lacks it.
    port.postMessage({ type: 'done', id: m.id, ids, text: m.type === 'chat' ? text : null } satisfies FromTokenizer, [ids.buffer]);
  } catch (err) {
    const e = toServerError(err);
    port.postMessage({ type: 'error', id: m.id, code: e.code, message: e.message, param: e.param ?? null } satisfies FromTokenizer);
  }
});

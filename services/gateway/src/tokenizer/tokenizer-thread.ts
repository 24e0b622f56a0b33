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

/** JSON.parse refusing what fastify's onProtoPoisoning / onConstructorPoisoning 'error' refuse. */
function parseJsonSafely(text: string): unknown {
  if (!text.includes('__proto__') && !text.includes('constructor')) return JSON.parse(text);
  return JSON.parse(text, (key, value: unknown) => {
    if (key === '__proto__') throw new SyntaxError('Object contains forbidden prototype property');
    if (key === 'constructor' && typeof value === 'object' && value !== null && Object.prototype.hasOwnProperty.call(value, 'prototype')) throw new SyntaxError('Object contains forbidden prototype property');
    return value;
  });
}

const UTF8 = new TextDecoder('utf-8');

port.on('message', (m: ToTokenizer) => {
  if (m.type === 'json') {
    try {
      port.postMessage({ type: 'json', id: m.id, value: parseJsonSafely(UTF8.decode(m.bytes)) } satisfies FromTokenizer);
    } catch (err) {
      // No parser detail: V8's JSON messages quote the input (prompt text).
      port.postMessage({ type: 'error', id: m.id, code: 'invalid_request', message: `the request body is not valid JSON${(err as Error).message.includes('prototype') ? ' (it holds a __proto__ / constructor.prototype key)' : ''}`, param: null } satisfies FromTokenizer);
    }
    return;
  }
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

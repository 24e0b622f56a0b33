/**
 * PromptEncoder: prompt text (or a chat conversation) -> token ids without blocking the main event
 * loop. Encoding is CPU-bound (~1 µs per byte with @huggingface/tokenizers): a 4 MB prompt held
 * the loop for 11 s, and every other request's stream with it. So texts above `inlineMaxBytes`
 * go to a tokenizer thread (one worker_threads Worker with its own TextTokenizer over the same
 * checkpoint files, answering in arrival order); small ones are encoded inline, where a thread
 * round trip would cost more than the work and a big prompt queued in the thread cannot hold them
 * up. Both paths run the same code on the same files: the ids are identical.
 *
 *   HTTP route -> encode(text) / encodeChat(conversation) -> [inline | thread] -> ids
 *
 * The caller bounds the input first (http/context.ts checks the byte length against
 * max-model-len); this module does not judge sizes. A thread that dies fails its requests with
 * 'internal' and is started again on the next request.
 *
 * The same thread decodes big JSON request bodies (`parseJson`): UTF-8 decoding of a 16 MB
 * non-ASCII body alone takes 100-250 ms; the parsed value comes back by structured clone (a copy).
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { ServerError, type ErrorCode } from '../../../common/src/errors.js';
import type { ChatMessage } from './chat-template.js';
import type { TextTokenizer } from './tokenizer.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const TS_ENTRY = path.resolve(HERE, '../../../common/src/ts-entry.mjs');
const THREAD_MAIN = path.resolve(HERE, 'tokenizer-thread.ts');

/** A conversation to render with the chat template and encode. */
export interface ChatPromptRequest {
  readonly messages: readonly ChatMessage[];
  readonly addGenerationPrompt: boolean;
  readonly continueFinalMessage: boolean;
  readonly kwargs: Readonly<Record<string, unknown>>;
  readonly addSpecialTokens: boolean;
}

export type ToTokenizer =
  | { type: 'encode'; id: number; text: string; addSpecialTokens: boolean }
  | { type: 'json'; id: number; bytes: Uint8Array }
  | ({ type: 'chat'; id: number } & ChatPromptRequest);

export type FromTokenizer =
  | { type: 'ready' }
  | { type: 'failed'; code: ErrorCode; message: string }
  | { type: 'done'; id: number; ids: Int32Array; text: string | null }
  | { type: 'json'; id: number; value: unknown }
  | { type: 'error'; id: number; code: ErrorCode; message: string; param: string | null };

export interface PromptEncoderOptions {
  /**
   * Texts up to this many UTF-8 bytes are encoded on the calling thread (≈ 8 ms of work at most);
   * longer ones in the tokenizer thread. 0 = always the thread. @defaultValue 8192
   */
  readonly inlineMaxBytes?: number;
}

interface Pending {
  resolve(r: { ids: number[]; text: string | null; value?: unknown }): void;
  reject(e: ServerError): void;
}

export class PromptEncoder {
  private worker: Worker | null = null;
  private ready: Promise<void> | null = null;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private closed = false;
  private readonly inlineMaxBytes: number;

  /** Starts the thread and waits until its tokenizer is loaded. */
  static async start(modelDir: string, inline: TextTokenizer, opts: PromptEncoderOptions = {}): Promise<PromptEncoder> {
    const enc = new PromptEncoder(modelDir, inline, opts);
    await enc.spawn();
    return enc;
  }

  private constructor(
    private readonly modelDir: string,
    private readonly inline: TextTokenizer,
    opts: PromptEncoderOptions,
  ) {
    this.inlineMaxBytes = opts.inlineMaxBytes ?? 8192;
  }

  /** Requests waiting for the thread. */
  get queued(): number {
    return this.pending.size;
  }

  async encode(text: string, addSpecialTokens: boolean): Promise<number[]> {
    if (this.isSmall(text)) return this.inline.encode(text, { addSpecialTokens });
    return (await this.call({ type: 'encode', id: 0, text, addSpecialTokens })).ids;
  }

  /** The conversation rendered with the chat template (its text) and encoded. */
  async encodeChat(req: ChatPromptRequest): Promise<{ text: string; ids: number[] }> {
    let bytes = 0;
    for (const m of req.messages) bytes += m.content.length; // UTF-16 units: a byte-count bound from below is all this needs
    if (bytes * 3 <= this.inlineMaxBytes) {
      const text = this.inline.applyChatTemplate(req.messages, { addGenerationPrompt: req.addGenerationPrompt, continueFinalMessage: req.continueFinalMessage, kwargs: req.kwargs });
      return { text, ids: this.inline.encode(text, { addSpecialTokens: req.addSpecialTokens }) };
    }
    const r = await this.call({ type: 'chat', id: 0, ...req });
    return { text: r.text!, ids: r.ids };
  }

  /**
   * A JSON request body (UTF-8 bytes) -> its value, decoded and parsed in the thread, refusing
   * `__proto__` keys and `constructor.prototype` as fastify does (onProtoPoisoning: 'error').
   * @throws ServerError 'invalid_request' when it is not JSON.
   */
  async parseJson(bytes: Uint8Array): Promise<unknown> {
    // The bytes move to the thread when they own their buffer (fastify's concatenated body does).
    const own = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength && bytes.buffer instanceof ArrayBuffer;
    const msg = { type: 'json' as const, id: 0, bytes: own ? bytes : bytes.slice() };
    return (await this.call(msg, [msg.bytes.buffer as ArrayBuffer])).value;
  }

  async close(): Promise<void> {
    this.closed = true;
    const w = this.worker;
    this.worker = null;
    this.failAll(new ServerError('internal', 'the tokenizer thread is shut down'));
    if (w) await w.terminate();
  }

  /** A UTF-16 string of n units holds at most 3n UTF-8 bytes: no byte count needed to say "small". */
  private isSmall(text: string): boolean {
    return text.length * 3 <= this.inlineMaxBytes || Buffer.byteLength(text, 'utf8') <= this.inlineMaxBytes;
  }

  private async call(msg: ToTokenizer, transfer: ArrayBuffer[] = []): Promise<{ ids: number[]; text: string | null; value?: unknown }> {
    if (this.closed) throw new ServerError('internal', 'the tokenizer thread is shut down');
    if (!this.worker) await this.spawn();
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker!.postMessage({ ...msg, id }, transfer);
    });
  }

  private spawn(): Promise<void> {
    if (this.ready && this.worker) return this.ready;
    const w = new Worker(TS_ENTRY, { workerData: { entry: THREAD_MAIN, modelDir: this.modelDir } });
    this.worker = w;
    this.ready = new Promise<void>((resolve, reject) => {
      let started = false;
      w.on('message', (m: FromTokenizer) => {
        switch (m.type) {
          case 'ready':
            started = true;
            resolve();
            return;
          case 'failed':
            reject(new ServerError(m.code, m.message));
            return;
          case 'done': {
            const p = this.pending.get(m.id);
            this.pending.delete(m.id);
            p?.resolve({ ids: Array.from(m.ids), text: m.text });
            return;
          }
          case 'json': {
            const p = this.pending.get(m.id);
            this.pending.delete(m.id);
            p?.resolve({ ids: [], text: null, value: m.value });
            return;
          }
          case 'error': {
            const p = this.pending.get(m.id);
            this.pending.delete(m.id);
            p?.reject(new ServerError(m.code, m.message, m.param !== null ? { param: m.param } : {}));
            return;
          }
        }
      });
      const gone = (why: string) => {
        if (this.worker === w) {
          this.worker = null;
          this.ready = null;
        }
        const err = new ServerError('internal', `the tokenizer thread ${why}`);
        if (!started) reject(err);
        this.failAll(err);
      };
      w.on('error', (e) => gone(`crashed: ${e.message}`));
      w.on('exit', (code) => {
        if (!this.closed) gone(`exited (code ${code})`);
      });
    });
    return this.ready;
  }

  private failAll(err: ServerError): void {
    const all = [...this.pending.values()];
    this.pending.clear();
    for (const p of all) p.reject(err);
  }
}

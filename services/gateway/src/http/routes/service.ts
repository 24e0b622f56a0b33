/**
 * The service routes: GET /health, GET /metrics, GET /v1/models (and /v1/models/:model),
 * GET /version, POST /tokenize and POST /detokenize (vLLM's shapes).
 */
import type { FastifyInstance } from 'fastify';
import { ServerError } from '../../../../common/src/errors.js';
import { checkModel, checkPromptBytes, logUnknownFields, type AppContext } from '../context.js';
import { asBody, checkIds, invalid, optBool, optString } from '../fields.js';
import { toJson } from '../json.js';
import { parseChat } from '../requests.js';
import { encodeChat } from './chat.js';

export const VERSION = '0.1.0';

const TOKENIZE_FIELDS: ReadonlySet<string> = new Set(['model', 'prompt', 'messages', 'add_special_tokens', 'add_generation_prompt', 'continue_final_message', 'chat_template_kwargs', 'tools', 'return_token_strs']);
const DETOKENIZE_FIELDS: ReadonlySet<string> = new Set(['model', 'tokens']);

export function registerServiceRoutes(app: FastifyInstance, ctx: AppContext): void {
  app.get('/health', async (_req, reply) => {
    if (!ctx.engine.healthy) throw new ServerError('internal', 'the engine is down');
    return reply.code(200).send('');
  });

  app.get('/metrics', async (_req, reply) => {
    const text = await ctx.metrics.render();
    return reply.header('content-type', ctx.metrics.contentType).send(text);
  });

  const modelCard = () => ({
    id: ctx.opts.servedModelName,
    object: 'model',
    created: ctx.model.created,
    owned_by: 'moeserve',
    root: ctx.opts.servedModelName,
    parent: null,
    max_model_len: ctx.model.maxModelLen,
  });
  app.get('/v1/models', async () => ({ object: 'list', data: [modelCard()] }));
  app.get<{ Params: { model: string } }>('/v1/models/:model', async (req) => {
    checkModel(ctx, req.params.model);
    return modelCard();
  });

  app.get('/version', async () => ({ version: VERSION }));

  app.post('/tokenize', async (req, reply) => {
    const body = asBody(req.body);
    logUnknownFields(req, body, TOKENIZE_FIELDS);
    checkModel(ctx, optString(body, 'model') ?? null);
    let ids: number[];
    if (body['messages'] !== undefined && body['messages'] !== null) {
      const chat = parseChat(body, ctx.model.vocabSize);
      ids = (await encodeChat(ctx, chat, optBool(body, 'add_special_tokens') ?? false)).ids;
    } else {
      const prompt = optString(body, 'prompt');
      if (prompt === undefined) throw invalid('prompt', 'is required (or messages)');
      // A text that could not fit in max-model-len is refused by its byte length, before tokenizing.
      checkPromptBytes(ctx, Buffer.byteLength(prompt, 'utf8'), 'prompt');
      ids = await ctx.prompts.encode(prompt, optBool(body, 'add_special_tokens') ?? true);
    }
    const strs = optBool(body, 'return_token_strs') ?? false;
    return reply.type('application/json; charset=utf-8').send(
      toJson({ count: ids.length, max_model_len: ctx.model.maxModelLen, tokens: ids, token_strs: strs ? ids.map((i) => ctx.tokenizer.idToToken(i) ?? '') : null }),
    );
  });

  app.post('/detokenize', async (req) => {
    const body = asBody(req.body);
    logUnknownFields(req, body, DETOKENIZE_FIELDS);
    checkModel(ctx, optString(body, 'model') ?? null);
    const tokens = body['tokens'];
    if (!Array.isArray(tokens) || !tokens.every((t) => typeof t === 'number' && Number.isInteger(t))) throw invalid('tokens', 'must be an array of integer token ids');
    checkIds(tokens as number[], 'tokens', ctx.model.vocabSize);
    return { prompt: ctx.tokenizer.decode(tokens as number[]) };
  });
}

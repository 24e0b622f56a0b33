/**
 * The service routes: GET /health, GET /metrics, GET /v1/models (and /v1/models/:model),
 * GET /version, POST /tokenize and POST /detokenize (vLLM's shapes).
 */
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { ExpertsStatus } from '../../../../../router/src/topology.js';
import { ServerError } from '../../../../common/src/errors.js';
import { checkModel, checkPromptBytes, logUnknownFields, type AppContext } from '../context.js';
import { asBody, checkIds, invalid, optBool, optString } from '../fields.js';
import { errorBody, errorStatus } from '../errors.js';
import { toJson } from '../json.js';
import { parseChat } from '../requests.js';
import { encodeChat } from './chat.js';

export const VERSION = '0.1.0';

/** [4, 5, 6, 7, 9] -> "4-7, 9". */
export function formatRanges(ids: readonly number[]): string {
  const out: string[] = [];
  for (let i = 0; i < ids.length; ) {
    let j = i;
    while (j + 1 < ids.length && ids[j + 1] === ids[j]! + 1) j++;
    out.push(j > i ? `${ids[i]}-${ids[j]}` : `${ids[i]}`);
    i = j + 1;
  }
  return out.join(', ');
}

/**
 * /health when an expert worker is down. degraded (every expert still has a live replica, so
 * every request can be served): 200 with a JSON body saying which workers are down. unavailable
 * (some experts have no live worker: requests routed to them fail) or down (no worker up): 503
 * with OpenAI's error object (experts_unavailable) and the same details. A load balancer's probe
 * takes an unavailable gateway out of rotation; a local worker is restarted meanwhile.
 */
function sendExpertsHealth(reply: FastifyReply, ex: ExpertsStatus): FastifyReply {
  const downWorkers = ex.workers.filter((w) => !w.up).map((w) => w.name);
  // Layers with the same missing experts are named together ("experts 4-7 of MoE layers 1, 2").
  const groups = new Map<string, number[]>();
  for (const u of ex.unavailable) {
    const key = formatRanges(u.experts);
    groups.set(key, [...(groups.get(key) ?? []), u.layer]);
  }
  const missing = [...groups].map(([experts, layers]) => `experts ${experts} of MoE layer${layers.length > 1 ? 's' : ''} ${layers.join(', ')}`).join('; ');
  const details = {
    status: ex.state,
    unavailable_experts: ex.unavailable.map((u) => ({ layer: u.layer, experts: u.experts })),
    workers: ex.workers.map((w) => ({ name: w.name, address: w.address, up: w.up, last_seen: w.lastSeenMs > 0 ? w.lastSeenMs / 1000 : null, restarts: w.restarts })),
  };
  const type = 'application/json; charset=utf-8';
  if (ex.state === 'degraded') return reply.code(200).type(type).send(toJson({ ...details, message: `workers ${downWorkers.join(', ')} down; every expert still has a live replica` }));
  const message = ex.state === 'down' ? `no expert worker is up (${downWorkers.join(', ')} down)` : `${missing} have no live worker (${downWorkers.join(', ')} down)`;
  const e = new ServerError('experts_unavailable', message);
  return reply.code(errorStatus(e)).type(type).send(toJson({ ...errorBody(e), ...details }));
}

const TOKENIZE_FIELDS: ReadonlySet<string> = new Set(['model', 'prompt', 'messages', 'add_special_tokens', 'add_generation_prompt', 'continue_final_message', 'chat_template_kwargs', 'tools', 'return_token_strs']);
const DETOKENIZE_FIELDS: ReadonlySet<string> = new Set(['model', 'tokens']);

export function registerServiceRoutes(app: FastifyInstance, ctx: AppContext): void {
  app.get('/health', async (_req, reply) => {
    if (!ctx.engine.healthy) throw new ServerError('internal', 'the engine is down');
    const ex = ctx.engine.experts;
    if (ex === null || ex.state === 'ok') return reply.code(200).send('');
    return sendExpertsHealth(reply, ex);
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

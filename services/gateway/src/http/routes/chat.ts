/**
 * POST /v1/chat/completions: messages -> the checkpoint's chat template (@huggingface/jinja,
 * add_generation_prompt) -> token ids -> choices, as JSON or SSE (`chat.completion.chunk`: a
 * role delta first, then content deltas, then the finish).
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import { buildSpecs, checkAccepting, checkPromptBytes, checkModel, logFinished, logUnknownFields, startRun, usageOf, type AppContext, type Prompt } from '../context.js';
import { asBody } from '../fields.js';
import type { ChoiceRun } from '../generation.js';
import { toJson, type JsonValue } from '../json.js';
import { chatTokenLogprob, TokenLabels, type ChatTokenLogprob } from '../logprobs.js';
import { CHAT_FIELDS, parseChat, type ChatParams } from '../requests.js';
import { streamRun } from '../sse.js';

/** The conversation's prompt bytes (message contents), checked before the template renders it. */
export function chatPromptBytes(p: Pick<ChatParams, 'messages'>): number {
  let bytes = 0;
  for (const m of p.messages) bytes += Buffer.byteLength(m.content, 'utf8');
  return bytes;
}

/** Bound, render (the chat template) and encode a conversation, off the event loop when it is big. */
export function encodeChat(ctx: AppContext, p: Pick<ChatParams, 'messages' | 'addGenerationPrompt' | 'continueFinalMessage' | 'templateKwargs'>, addSpecialTokens: boolean): Promise<{ text: string; ids: number[] }> {
  checkPromptBytes(ctx, chatPromptBytes(p), 'messages');
  return ctx.prompts.encodeChat({ messages: p.messages, addGenerationPrompt: p.addGenerationPrompt, continueFinalMessage: p.continueFinalMessage, kwargs: p.templateKwargs, addSpecialTokens });
}

export function chatHandler(ctx: AppContext) {
  return async function chat(req: FastifyRequest, reply: FastifyReply): Promise<unknown> {
    const startedAt = performance.now();
    const created = Math.floor(Date.now() / 1000);
    checkAccepting(ctx);
    const body = asBody(req.body);
    logUnknownFields(req, body, CHAT_FIELDS);
    const p = parseChat(body, ctx.model.vocabSize);
    checkModel(ctx, p.model);
    const { text, ids } = await encodeChat(ctx, p, p.addSpecialTokens);
    if (reply.raw.destroyed) return reply; // the client left while its prompt was encoded
    if (ctx.opts.logPrompts) req.log.info({ prompt: text }, 'prompt (chat template applied)');
    const prompts: Prompt[] = [{ ids, text }];
    const specs = buildSpecs(ctx, p, prompts, null, 'messages');
    const run = startRun(ctx, req, reply, specs, p, startedAt);

    const id = `chatcmpl-${req.id}`;
    const model = ctx.opts.servedModelName;
    const labels = new TokenLabels(ctx.tokenizer, p.returnTokensAsTokenIds);
    const logprobsOf = (c: ChoiceRun, from: number, to: number): ChatTokenLogprob[] => {
      const out: ChatTokenLogprob[] = [];
      for (let t = from; t < to; t++) {
        const lp = c.tokenLogprobs[t];
        if (lp) out.push(chatTokenLogprob(labels, c.tokenIds[t]!, lp));
      }
      return out;
    };

    if (p.stream) {
      const started = new Uint8Array(run.choices.length);
      const chunk = (choices: JsonValue[]) => ({ id, object: 'chat.completion.chunk', created, model, choices });
      await streamRun(
        reply,
        run,
        (c, d) => {
          const out: JsonValue[] = [];
          if (started[c.index] === 0) {
            started[c.index] = 1;
            out.push(chunk([{ index: c.index, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }]));
          }
          const lp = p.logprobs !== null ? logprobsOf(c, d.from, d.to) : null;
          if (d.text === '' && (lp === null || lp.length === 0) && d.finishReason === null) return out;
          out.push(
            chunk([
              {
                index: c.index,
                delta: d.text !== '' || d.finishReason === null ? { content: d.text } : {},
                logprobs: lp !== null ? { content: lp } : null,
                finish_reason: d.finishReason,
                stop_reason: d.finishReason ? c.stopReason : null,
              },
            ]),
          );
          return out;
        },
        () => (p.includeUsage ? [{ ...chunk([]), usage: usageOf(prompts, run) }] : []),
      );
      logFinished(req, run, usageOf(prompts, run), startedAt);
      return reply;
    }

    await run.done;
    const usage = usageOf(prompts, run);
    logFinished(req, run, usage, startedAt);
    const choices = run.choices.map((c) => ({
      index: c.index,
      message: { role: 'assistant', content: c.text },
      logprobs: p.logprobs !== null ? { content: logprobsOf(c, 0, c.tokenIds.length) } : null,
      finish_reason: c.finishReason,
      stop_reason: c.stopReason,
    }));
    return reply.type('application/json; charset=utf-8').send(toJson({ id, object: 'chat.completion', created, model, choices, usage }));
  };
}

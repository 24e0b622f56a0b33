/**
 * POST /v1/chat/completions: messages -> the checkpoint's chat template (@huggingface/jinja,
 * add_generation_prompt) -> token ids -> choices, as JSON or SSE (`chat.completion.chunk`: a
 * role delta first, then content deltas, then the finish).
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import { buildSpecs, checkAccepting, checkModel, logFinished, logUnknownFields, startRun, usageOf, type AppContext, type Prompt } from '../context.js';
import { asBody } from '../fields.js';
import type { ChoiceRun } from '../generation.js';
import { toJson, type JsonValue } from '../json.js';
import { chatTokenLogprob, TokenLabels, type ChatTokenLogprob } from '../logprobs.js';
import { CHAT_FIELDS, parseChat, type ChatParams } from '../requests.js';
import { streamRun } from '../sse.js';

/** The prompt text of a conversation (continue_final_message: cut after the last message's content, as vLLM). */
export function renderChat(ctx: AppContext, p: Pick<ChatParams, 'messages' | 'addGenerationPrompt' | 'continueFinalMessage' | 'templateKwargs'>): string {
  let text = ctx.tokenizer.applyChatTemplate(p.messages, { addGenerationPrompt: p.addGenerationPrompt, kwargs: p.templateKwargs });
  if (p.continueFinalMessage) {
    const last = p.messages[p.messages.length - 1]!.content;
    const at = last.length > 0 ? text.lastIndexOf(last) : -1;
    if (at >= 0) text = text.slice(0, at + last.length);
  }
  return text;
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
    const text = renderChat(ctx, p);
    if (ctx.opts.logPrompts) req.log.info({ prompt: text }, 'prompt (chat template applied)');
    const prompts: Prompt[] = [{ ids: ctx.tokenizer.encode(text, { addSpecialTokens: p.addSpecialTokens }), text }];
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

/**
 * POST /v1/completions: prompt(s) as text or token ids -> choices (prompt × n), as JSON or SSE.
 * Echo returns the prompt before the output; with logprobs the prompt's tokens come first
 * (the first one without a logprob), in vLLM's format (see logprobs.ts).
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import { IncrementalDetokenizer } from '../../tokenizer/detokenizer.js';
import type { TextTokenizer } from '../../tokenizer/tokenizer.js';
import { buildSpecs, checkAccepting, checkPromptBytes, checkModel, logFinished, logUnknownFields, startRun, usageOf, type AppContext, type Prompt } from '../context.js';
import { asBody } from '../fields.js';
import type { ChoiceRun } from '../generation.js';
import { toJson } from '../json.js';
import { appendCompletionToken, appendPromptTokens, emptyCompletionLogprobs, TokenLabels, type CompletionLogprobs } from '../logprobs.js';
import { COMPLETION_FIELDS, parseCompletion } from '../requests.js';
import { streamRun } from '../sse.js';

/** The echoed prompt: its text and each prompt token's character offset in it. */
interface Echo {
  readonly text: string;
  readonly offsets: readonly number[];
}

function echoOf(tok: TextTokenizer, p: Prompt): Echo {
  // Special tokens (BOS) stay in an echoed prompt, as in vLLM.
  const d = new IncrementalDetokenizer(tok, [], { skipSpecialTokens: false });
  for (const id of p.ids) d.push(id);
  d.flush();
  return { text: p.text ?? d.text, offsets: d.textOffsets };
}

export function completionsHandler(ctx: AppContext) {
  return async function completions(req: FastifyRequest, reply: FastifyReply): Promise<unknown> {
    const startedAt = performance.now();
    const created = Math.floor(Date.now() / 1000);
    checkAccepting(ctx);
    const body = asBody(req.body);
    logUnknownFields(req, body, COMPLETION_FIELDS);
    const p = parseCompletion(body, ctx.model.vocabSize);
    checkModel(ctx, p.model);
    let prompts: Prompt[];
    if (p.prompt.kind === 'ids') prompts = p.prompt.ids.map((ids) => ({ ids, text: null }));
    else {
      const texts = p.prompt.texts;
      // Bounded by byte length before any tokenizer work; then encoded off the event loop.
      for (const text of texts) checkPromptBytes(ctx, Buffer.byteLength(text, 'utf8'), 'prompt');
      const ids = await Promise.all(texts.map((text) => ctx.prompts.encode(text, p.addSpecialTokens)));
      prompts = texts.map((text, i) => ({ ids: ids[i]!, text }));
      if (reply.raw.destroyed) return reply; // the client left while its prompt was encoded
    }
    if (ctx.opts.logPrompts) req.log.info({ prompts: prompts.map((x) => x.text ?? x.ids) }, 'prompts');
    const specs = buildSpecs(ctx, p, prompts, p.echo && p.logprobs !== null ? p.logprobs : null, 'prompt');
    const run = startRun(ctx, req, reply, specs, p, startedAt);

    const id = `cmpl-${req.id}`;
    const model = ctx.opts.servedModelName;
    const labels = new TokenLabels(ctx.tokenizer, p.returnTokensAsTokenIds);
    const echoes = p.echo ? prompts.map((x) => echoOf(ctx.tokenizer, x)) : null;
    const echoLen = (c: ChoiceRun) => (echoes ? echoes[c.spec.promptIndex]!.text.length : 0);
    /** Logprobs of tokens [from, to), with the echoed prompt's first when `withPrompt`. */
    const logprobsOf = (c: ChoiceRun, from: number, to: number, withPrompt: boolean): CompletionLogprobs => {
      const out = emptyCompletionLogprobs();
      if (withPrompt && echoes) appendPromptTokens(out, labels, c.promptIds, c.promptLogprobs, echoes[c.spec.promptIndex]!.offsets);
      const base = echoLen(c);
      for (let t = from; t < to; t++) appendCompletionToken(out, labels, c.tokenIds[t]!, c.tokenLogprobs[t] ?? null, base + c.offsets[t]!);
      return out;
    };

    if (p.stream) {
      const echoed = new Uint8Array(run.choices.length);
      await streamRun(
        reply,
        run,
        (c, d) => {
          let text = d.text;
          const withPrompt = echoes !== null && echoed[c.index] === 0;
          if (withPrompt) {
            text = echoes[c.spec.promptIndex]!.text + text;
            echoed[c.index] = 1;
          }
          const lp = p.logprobs !== null ? logprobsOf(c, d.from, d.to, withPrompt) : null;
          if (text === '' && (lp === null || lp.tokens.length === 0) && d.finishReason === null) return [];
          const choice = { index: c.index, text, logprobs: lp, finish_reason: d.finishReason, stop_reason: d.finishReason ? c.stopReason : null };
          return [{ id, object: 'text_completion', created, model, choices: [choice] }];
        },
        () => (p.includeUsage ? [{ id, object: 'text_completion', created, model, choices: [], usage: usageOf(prompts, run) }] : []),
      );
      logFinished(req, run, usageOf(prompts, run), startedAt);
      return reply;
    }

    await run.done;
    const usage = usageOf(prompts, run);
    logFinished(req, run, usage, startedAt);
    const choices = run.choices.map((c) => ({
      index: c.index,
      text: (echoes ? echoes[c.spec.promptIndex]!.text : '') + c.text,
      logprobs: p.logprobs !== null ? logprobsOf(c, 0, c.tokenIds.length, true) : null,
      finish_reason: c.finishReason,
      stop_reason: c.stopReason,
    }));
    return reply.type('application/json; charset=utf-8').send(toJson({ id, object: 'text_completion', created, model, choices, usage }));
  };
}

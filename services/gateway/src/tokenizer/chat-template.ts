/**
 * Chat templates: tokenizer_config.json `chat_template` (Jinja) rendered with @huggingface/jinja,
 * with the variables transformers' `apply_chat_template` passes: `messages`,
 * `add_generation_prompt`, the special-token strings (`bos_token`, `eos_token`, `unk_token`,
 * `pad_token`, ... as strings) and any extra keyword arguments (`tools`, `enable_thinking`, ...).
 * @huggingface/jinja parses with trim_blocks and lstrip_blocks, as transformers' environment does.
 */
import { Template } from '@huggingface/jinja';
import { ServerError } from '../../../common/src/errors.js';

/** One chat message as the template sees it; extra fields (name, tool_calls, ...) pass through. */
export interface ChatMessage {
  readonly role: string;
  readonly content: string;
  readonly [field: string]: unknown;
}

export interface ChatTemplateOptions {
  /** Append the assistant turn's opening (the template's `add_generation_prompt` branch). */
  readonly addGenerationPrompt: boolean;
  /**
   * Leave the last message open for the model to continue: the rendered text is cut right after
   * that message's content (vLLM's `continue_final_message`). @defaultValue false
   */
  readonly continueFinalMessage?: boolean;
  /** Extra template variables, e.g. `{ enable_thinking: false }` or `{ tools: [...] }`. */
  readonly kwargs?: Readonly<Record<string, unknown>>;
}

/**
 * `chat_template` may be a string, or (older tokenizer_config.json files) a list of
 * `{name, template}` where the one named "default" applies to plain chat.
 */
export function pickChatTemplate(value: unknown): string | null {
  if (typeof value === 'string') return value;
  if (Array.isArray(value)) {
    const named = value.filter(
      (t): t is { name: string; template: string } =>
        typeof t === 'object' && t !== null && typeof (t as { template?: unknown }).template === 'string',
    );
    return (named.find((t) => t.name === 'default') ?? named[0])?.template ?? null;
  }
  if (typeof value === 'object' && value !== null) {
    const rec = value as Record<string, unknown>;
    if (typeof rec['default'] === 'string') return rec['default'];
  }
  return null;
}

export class ChatTemplate {
  private readonly template: Template;

  /** @throws ServerError 'checkpoint_invalid' if the template does not parse. */
  constructor(
    readonly source: string,
    private readonly specialTokens: Readonly<Record<string, unknown>>,
  ) {
    try {
      this.template = new Template(source);
    } catch (err) {
      throw new ServerError('checkpoint_invalid', `chat_template does not parse: ${(err as Error).message}`, { cause: err });
    }
  }

  /**
   * @throws ServerError 'invalid_request' (param 'messages') when the template rejects the
   *   conversation (its `raise_exception(...)`, e.g. "Conversation roles must alternate") or fails.
   */
  render(messages: readonly ChatMessage[], opts: ChatTemplateOptions): string {
    try {
      return this.template.render({
        ...this.specialTokens,
        ...opts.kwargs,
        messages,
        add_generation_prompt: opts.addGenerationPrompt,
      });
    } catch (err) {
      throw new ServerError('invalid_request', `chat template: ${(err as Error).message}`, { param: 'messages', cause: err });
    }
  }
}

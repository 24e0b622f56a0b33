/**
 * tokenizer/ owns the text side of a checkpoint: text <-> token ids (TextTokenizer, over
 * @huggingface/tokenizers plus a byte-level decode table), the chat template, streaming
 * detokenization of generated ids (IncrementalDetokenizer) and stop strings (StopChecker).
 * Flow: messages -> applyChatTemplate -> encode -> [engine] -> push(id) -> stop check -> client.
 */
export { TextTokenizer } from './tokenizer.js';
export type { DecodeOptions, EncodeOptions, TokenizerExtras } from './tokenizer.js';
export type { ChatMessage, ChatTemplateOptions } from './chat-template.js';
export { IncrementalDetokenizer } from './detokenizer.js';
export type { DetokenizerOptions } from './detokenizer.js';
export { StopChecker, findEarliestStop } from './stop.js';
export type { StopCheckerOptions } from './stop.js';

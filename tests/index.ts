/**
 * tests/ — vitest. unit/: pure modules with exact expectations (KV pool ids, sampler, tokenizer,
 * checkpoint validation, placement); integration/: real parts (ONNX Runtime sessions, worker child
 * processes on gRPC, HTTP servers with the official openai client, redis-server in
 * *.redis.test.ts); fixtures/golden/: the Hugging Face reference fixtures, copied as data (never
 * edited); helpers/: shared assertions and process helpers.
 */
export {};

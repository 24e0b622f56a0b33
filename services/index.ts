/**
 * services/ — the long-running parts of moeserve and what they share:
 * - model/    checkpoint reading/writing, config normalization, ONNX graph building, the one
 *             ONNX Runtime module (shared by the gateway and the expert workers);
 * - gateway/  HTTP (OpenAI API, metrics), the engine (dense runner, scheduler, engine thread),
 *             sampler and tokenizer;
 * - kvcache/  the central paged KV-cache manager (layouts, pool, prefix cache, Redis tier);
 * - common/   the one error type and the TypeScript entry for threads and child processes;
 * - cli/ and main.ts: the `moeserve` commands (the only code that reads argv and env).
 * Data flows one way: gateway -> router/ -> workers/; the KV manager is called by the attention
 * path only.
 */
export {};

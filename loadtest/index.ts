/**
 * loadtest/ — load scenarios for a running server: k6 scripts (k6/, type-checked against
 * @types/k6 by loadtest/tsconfig.json) and a Node runner (runner.ts) sending the same requests
 * (lib/scenarios.ts), reporting vLLM bench-serve metrics and per-expert / per-worker balance.
 */
export {};

/**
 * services/common — what every process shares: the one error type and its closed set of codes
 * with their HTTP / gRPC / retry mappings (src/errors.ts), half-precision float conversions shared
 * by the checkpoint reader and the wire codec (src/half.ts), a free port and a child's output as
 * lines for every launcher (src/proc.ts), and the bootstrap that runs a
 * TypeScript module in a worker thread or child process (src/ts-entry.mjs).
 */
export * from './src/errors.js';
export * from './src/half.js';
export * from './src/proc.js';

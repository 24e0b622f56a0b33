import { defineConfig } from 'vitest/config';

// Tests spawn real processes (workers, redis-server) and run real ONNX Runtime sessions:
// generous timeouts, and files run in forks so a native crash stays in its file.
export default defineConfig({
  test: {
    include: ['tests/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    pool: 'forks',
    reporters: ['default', 'json'],
    outputFile: { json: '.cache/vitest-results.json' },
  },
});

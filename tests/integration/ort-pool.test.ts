/**
 * One ONNX Runtime thread pool per process (runtime/onnx.ts, native/ort_env.c): sessions with the
 * process's thread count share it, so making sessions adds no threads; a session asking for
 * another count gets a pool of its own. Checked by counting the threads of a real child process.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ORT_ENV_ADDON } from '../../services/model/src/runtime/onnx.js';
import { REPO } from '../helpers/cli.js';

const ENTRY = path.join(REPO, 'services/common/src/ts-entry.mjs');
const CHILD = path.join(REPO, 'tests/integration/ort-pool.child.ts');

describe('ONNX Runtime thread pool', () => {
  it('npm install built the ort_env addon (scripts/build-native.mjs)', () => {
    expect(fs.existsSync(ORT_ENV_ADDON), `${ORT_ENV_ADDON} is missing: npm run build:native says why`).toBe(true);
  });

  it('12 sessions share one pool of 3 threads; a session with 2 threads gets its own; outputs are right', () => {
    const r = JSON.parse(execFileSync(process.execPath, [ENTRY, CHILD], { cwd: REPO, encoding: 'utf8', timeout: 60_000 })) as {
      before: number;
      afterFirst: number;
      afterTwelve: number;
      afterOther: number;
      logs: string[];
      maxErr: number;
    };
    expect(r.logs).toEqual(['onnxruntime 1.30.0: execution provider cpu, one pool of 3 threads for the process, spinning between runs']);
    // The pool's 2 threads (the caller is the third) come with the first session...
    expect(r.afterFirst - r.before).toBeGreaterThanOrEqual(2);
    // ...and the other 11 sessions add none (a pool each would add 22).
    expect(r.afterTwelve).toBe(r.afterFirst);
    // A session of 2 threads owns a pool: one thread more.
    expect(r.afterOther - r.afterTwelve).toBe(1);
    expect(r.maxErr).toBeLessThan(1e-5);
  });
});

/**
 * The CLI's usage contract: every subcommand answers --help on stdout with exit 0, and a command
 * line node:util parseArgs rejects (an unknown flag, a flag without its value) is a usage error,
 * exit 2, one line naming the flag — never `error [internal]` with a stack trace. A corrupt
 * checkpoint is the same one-line `[checkpoint_invalid]` error in `serve` (loaded on the engine
 * thread) as in `generate`.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { runCli } from '../helpers/cli.js';
import { fixtureDir } from '../helpers/golden.js';

const COMMANDS = ['generate', 'make-checkpoint', 'serve', 'worker'] as const;

describe('moeserve <command> --help', () => {
  it.each(COMMANDS)('%s --help prints its usage and exits 0', async (command) => {
    const r = await runCli([command, '--help']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^usage: moeserve /);
    expect(r.stderr).not.toMatch(/internal/);
  });
});

describe('EXPECTED FAILURE - a bad command line is a usage error (exit 2)', () => {
  it.each(COMMANDS)('%s --no-such-flag', async (command) => {
    const r = await runCli([command, '--no-such-flag']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(new RegExp(`^moeserve ${command}: usage error: Unknown option '--no-such-flag'`));
    expect(r.stderr).not.toMatch(/internal|\n\s+at /);
  });
  it('a flag without its value', async () => {
    const r = await runCli(['make-checkpoint', '--preset']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/usage error: Option '--preset <value>' argument missing/);
  });
});

describe('EXPECTED FAILURE - a corrupt checkpoint is the same one-line error in serve and generate', () => {
  it('a truncated model.safetensors: checkpoint_invalid, exit 1, no stack trace', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moeserve-corrupt-'));
    try {
      const src = fixtureDir('mixtral-tiny');
      for (const f of fs.readdirSync(src)) fs.copyFileSync(path.join(src, f), path.join(dir, f));
      const st = path.join(dir, 'model.safetensors');
      fs.truncateSync(st, Math.floor(fs.statSync(st).size / 2)); // the header promises twice the bytes
      for (const args of [
        ['generate', '--model', dir, '--prompt-ids', '1,2', '--json'],
        ['serve', '--model', dir, '--port', '0'],
      ]) {
        const r = await runCli(args);
        expect(r.code, r.stderr).toBe(1);
        const errorLines = r.stderr.split('\n').filter((l) => l.startsWith('moeserve '));
        expect(errorLines, r.stderr).toHaveLength(1);
        expect(errorLines[0]).toMatch(new RegExp(`^moeserve ${args[0]}: error \\[checkpoint_invalid\\]: .*model\\.safetensors`));
        expect(r.stderr).not.toMatch(/\n\s+at /);
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

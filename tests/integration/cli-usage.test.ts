/**
 * The CLI's usage contract: every subcommand answers --help on stdout with exit 0, and a command
 * line node:util parseArgs rejects (an unknown flag, a flag without its value) is a usage error,
 * exit 2, one line naming the flag — never `error [internal]` with a stack trace.
 */
import { describe, expect, it } from 'vitest';
import { runCli } from '../helpers/cli.js';

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

/** Assertions on the one error type (ServerError): its class, code, message and param. */
import { expect } from 'vitest';
import { ServerError, type ErrorCode } from '../../services/common/src/errors.js';

/** Runs fn, expects it to throw a ServerError with this code and messages matching every pattern; returns it. */
export function expectServerError(fn: () => unknown, code: ErrorCode, ...patterns: RegExp[]): ServerError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(ServerError);
  const err = caught as ServerError;
  expect(err.code).toBe(code);
  for (const p of patterns) expect(err.message).toMatch(p);
  return err;
}

/** As expectServerError, and the error names the request parameter `param` (OpenAI `error.param`). */
export function expectParamError(fn: () => unknown, code: ErrorCode, param: string | undefined, message: RegExp): ServerError {
  const err = expectServerError(fn, code, message);
  expect(err.param).toBe(param);
  return err;
}

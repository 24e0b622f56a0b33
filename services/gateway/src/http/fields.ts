/**
 * Readers for the fields of a JSON request body. Each names the field in its error (OpenAI
 * `error.param`), and treats `null` as "not given" (OpenAI clients send explicit nulls).
 */
import { ServerError } from '../../../common/src/errors.js';

export type Body = Readonly<Record<string, unknown>>;

export function invalid(param: string, message: string): ServerError {
  return new ServerError('invalid_request', `${param} ${message}`, { param });
}

export function asBody(raw: unknown): Body {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new ServerError('invalid_request', 'the request body must be a JSON object');
  return raw as Body;
}

/** Names of the body's fields the endpoint does not know (logged by name, then ignored). */
export function unknownFields(body: Body, known: ReadonlySet<string>): string[] {
  const out: string[] = [];
  for (const k of Object.keys(body)) if (!known.has(k)) out.push(k);
  return out;
}

function given(body: Body, name: string): unknown {
  const v = body[name];
  return v === null ? undefined : v;
}

export function optInt(body: Body, name: string, min: number, max = Number.MAX_SAFE_INTEGER): number | undefined {
  const v = given(body, name);
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v)) throw invalid(name, `must be an integer, got ${JSON.stringify(v)}`);
  if (v < min || v > max) throw invalid(name, max === Number.MAX_SAFE_INTEGER ? `must be >= ${min}, got ${v}` : `must be in [${min}, ${max}], got ${v}`);
  return v;
}

export function optBool(body: Body, name: string): boolean | undefined {
  const v = given(body, name);
  if (v === undefined) return undefined;
  if (typeof v !== 'boolean') throw invalid(name, `must be a boolean, got ${JSON.stringify(v)}`);
  return v;
}

export function optString(body: Body, name: string): string | undefined {
  const v = given(body, name);
  if (v === undefined) return undefined;
  if (typeof v !== 'string') throw invalid(name, `must be a string, got ${JSON.stringify(v)}`);
  return v;
}

export function optObject(body: Body, name: string): Body | undefined {
  const v = given(body, name);
  if (v === undefined) return undefined;
  if (typeof v !== 'object' || Array.isArray(v)) throw invalid(name, 'must be an object');
  return v as Body;
}

/** A string or a list of strings (OpenAI `stop`). */
export function optStrings(body: Body, name: string): string[] | undefined {
  const v = given(body, name);
  if (v === undefined) return undefined;
  if (typeof v === 'string') return [v];
  if (Array.isArray(v) && v.every((s) => typeof s === 'string')) return v as string[];
  throw invalid(name, 'must be a string or an array of strings');
}

/** A list of token ids, each in [0, vocabSize) ('invalid_token_id' otherwise). */
export function optTokenIds(body: Body, name: string, vocabSize: number): number[] | undefined {
  const v = given(body, name);
  if (v === undefined) return undefined;
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'number' && Number.isInteger(x))) throw invalid(name, 'must be an array of integer token ids');
  checkIds(v as number[], name, vocabSize);
  return v as number[];
}

export function checkIds(ids: readonly number[], param: string, vocabSize: number): void {
  for (const id of ids) {
    if (id < 0 || id >= vocabSize) throw new ServerError('invalid_token_id', `token id ${id} is outside the vocabulary [0, ${vocabSize})`, { param });
  }
}

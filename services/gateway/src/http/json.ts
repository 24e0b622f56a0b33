/**
 * JSON for responses, with one addition JSON.stringify lacks: `OrderedObject`, an object whose
 * keys are written in the given order. OpenAI's completions `top_logprobs` are dicts ordered by
 * logprob; a JS object would move integer-like keys ("1", "42": digit tokens) to the front.
 */
export class OrderedObject {
  constructor(readonly entries: readonly (readonly [string, JsonValue])[]) {}
}

export type JsonValue = null | boolean | number | string | OrderedObject | readonly JsonValue[] | { readonly [key: string]: JsonValue | undefined };

/** JSON.stringify semantics (non-finite numbers -> null, undefined fields dropped), plus OrderedObject. */
export function toJson(v: JsonValue): string {
  if (v === null) return 'null';
  switch (typeof v) {
    case 'string':
      return JSON.stringify(v);
    case 'number':
      return Number.isFinite(v) ? String(v) : 'null';
    case 'boolean':
      return v ? 'true' : 'false';
  }
  if (v instanceof OrderedObject) {
    let s = '{';
    for (let i = 0; i < v.entries.length; i++) {
      const [k, x] = v.entries[i]!;
      s += `${i > 0 ? ',' : ''}${JSON.stringify(k)}:${toJson(x)}`;
    }
    return `${s}}`;
  }
  if (Array.isArray(v)) {
    let s = '[';
    for (let i = 0; i < v.length; i++) s += `${i > 0 ? ',' : ''}${toJson(v[i] as JsonValue)}`;
    return `${s}]`;
  }
  let s = '{';
  let first = true;
  for (const [k, x] of Object.entries(v as Record<string, JsonValue | undefined>)) {
    if (x === undefined) continue;
    s += `${first ? '' : ','}${JSON.stringify(k)}:${toJson(x)}`;
    first = false;
  }
  return `${s}}`;
}

/**
 * Plots for experiment reports: Vega-Lite specs compiled and rendered to SVG by Vega in Node
 * (renderer 'none' + toSVG: no browser, no canvas), and to PNG by resvg when its prebuilt binary
 * loads (optional: a missing binary means SVG only).
 */
import fs from 'node:fs';
import path from 'node:path';
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';

export type Row = Record<string, string | number | null>;

export interface LineSpec {
  readonly title: string;
  readonly x: { readonly field: string; readonly title: string; readonly log?: boolean };
  readonly y: { readonly field: string; readonly title: string; readonly log?: boolean; readonly zero?: boolean };
  /** Series: one line per value. */
  readonly color?: { readonly field: string; readonly title: string };
  /** Small multiples: one panel per value. */
  readonly column?: { readonly field: string; readonly title: string };
  /** Dashed series (e.g. "model" vs "measured"). */
  readonly dash?: { readonly field: string; readonly title: string };
}

/** A line chart with points (ordinal x when the values are few and categorical). */
export function lineChart(rows: readonly Row[], s: LineSpec): TopLevelSpec {
  // Ticks at the values run (8, 16, 32 workers or experts), not at a log scale's round numbers.
  const xs = [...new Set(rows.map((r) => r[s.x.field]).filter((v): v is number => typeof v === 'number'))].sort((a, b) => a - b);
  const enc: Record<string, unknown> = {
    x: { field: s.x.field, type: 'quantitative', title: s.x.title, scale: s.x.log ? { type: 'log', base: 2 } : { zero: false }, axis: xs.length <= 12 ? { values: xs } : { tickMinStep: 1 } },
    y: { field: s.y.field, type: 'quantitative', title: s.y.title, scale: s.y.log ? { type: 'log' } : { zero: s.y.zero ?? true } },
  };
  if (s.color) enc['color'] = { field: s.color.field, type: 'nominal', title: s.color.title };
  if (s.dash) enc['strokeDash'] = { field: s.dash.field, type: 'nominal', title: s.dash.title };
  const unit = { mark: { type: 'line', point: true }, encoding: enc };
  const base = { $schema: 'https://vega.github.io/schema/vega-lite/v6.json', title: s.title, data: { values: rows as Row[] }, config: { font: 'DejaVu Sans, sans-serif' } };
  if (s.column) return { ...base, facet: { column: { field: s.column.field, type: 'ordinal', title: s.column.title } }, spec: { width: 220, height: 180, ...unit } } as unknown as TopLevelSpec;
  return { ...base, width: 420, height: 260, ...unit } as unknown as TopLevelSpec;
}

export async function renderSvg(spec: TopLevelSpec): Promise<string> {
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

type PngRenderer = (svg: string) => Buffer;
let png: PngRenderer | null | undefined;

async function pngRenderer(): Promise<PngRenderer | null> {
  if (png !== undefined) return png;
  try {
    const { Resvg } = await import('@resvg/resvg-js');
    png = (svg) => new Resvg(svg, { fitTo: { mode: 'zoom', value: 2 }, background: 'white', font: { loadSystemFonts: true } }).render().asPng();
  } catch {
    png = null;
  }
  return png;
}

/** Writes `<name>.svg` (and `<name>.png` when resvg loads) into dir; returns the file names written. */
export async function writePlot(dir: string, name: string, spec: TopLevelSpec): Promise<string[]> {
  const svg = await renderSvg(spec);
  fs.writeFileSync(path.join(dir, `${name}.svg`), svg);
  const out = [`${name}.svg`];
  const render = await pngRenderer();
  if (render) {
    fs.writeFileSync(path.join(dir, `${name}.png`), render(svg));
    out.push(`${name}.png`);
  }
  return out;
}

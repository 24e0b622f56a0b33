#!/usr/bin/env node
// moeserve CLI entry: runs the TypeScript sources through tsx (no build step).
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../services/main.ts');
await main(process.argv.slice(2), process.env);

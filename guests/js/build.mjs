// Builds a JavaScript recipe step into a wrun component.
//
//     node build.mjs <entry.js> <out.wasm> [--all-imports]
//
// It componentizes the entry module with componentize-js against the
// `wrun:recipe/step` world in ../../wit, trimmed to what the step uses:
//
// - `wasi:http/outgoing-handler` (and the engine's `fetch`) only if the step
//   uses `fetch` (the `net` grant);
// - `wrun:recipe/secrets` only if it uses `secrets` or `auth` (the
//   `secrets` grant);
// - `wrun:recipe/properties` only if it uses `properties` (the `env` grant);
// - `wrun:recipe/log` and `wrun:recipe/mask` always (they need no grant).
//
// The use is found by reading the step's own modules (everything the entry
// reaches through relative imports, except the SDK or an unchanged copy of
// it, as `wrun new` puts next to a step): the names it imports from the
// SDK, and any mention of the global `fetch`. `--all-imports`
// skips this and imports the whole world. The step's modules and the SDK
// are copied to a temporary directory, where `sdk/imports.js` is replaced by
// one that imports only the kept interfaces; the sources are not modified.
//
// componentize-js's `fetch-event` feature (an exported
// `wasi:http/incoming-handler`) is always off: a step exports only
// `wrun:recipe/actions`.
//
// Fresh instances are cheap when the snapshot componentize-js takes (after
// evaluating the module) already holds what every call uses. SpiderMonkey
// sets up a standard class (Promise, Uint8Array, String, the async function
// machinery, ...) in a global on its first use there, and the bindings
// componentize-js generates run in a global of their own, which nothing
// touches before the first call. So the build appends a warm-up to the
// bindings script (`BINDINGS_WARM_UP`) and the SDK's `step()` warms the
// step's global: without them every fresh instance redid that set-up, about
// half of a no-op step's time (BENCHMARKS.md).

import { componentize } from '@bytecodealliance/componentize-js';
import fsPromises, { cp, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { syncBuiltinESMExports } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const witDir = resolve(here, '../../wit');
const sdkDir = resolve(here, 'sdk');
const sdkEntry = join(sdkDir, 'wrun.js');

/**
 * Appended to the bindings script: uses, once, what the generated export
 * wrappers use on every call (typed arrays, `DataView`, the text codecs,
 * string methods, `JSON`, promises and awaits), so that the snapshot holds
 * them set up. It calls nothing of the host and no action. It names two
 * constants of the generated script; if a later componentize-js renames
 * them, the warm-up stops early and the build still succeeds, only slower
 * instances follow.
 */
const BINDINGS_WARM_UP = `
;(() => {
  try {
    const bytes = new Uint8Array(16);
    const view = new DataView(bytes.buffer);
    view.setUint32(0, view.getUint32(4, true), true);
    view.setInt8(8, 0, true);
    'warm\\u00e9'.charCodeAt(0);
    TEXT_ENCODER_UTF8.encodeInto('warm', new Uint8Array(bytes.buffer, 0, 8));
    TEXT_DECODER_UTF8.decode(new Uint8Array(bytes.buffer, 0, 4));
    JSON.stringify({ tag: 'ok', val: 'warm' });
    void globalThis?.process?.env?.JCO_DEBUG;
    (async () => {
      await null;
      await Promise.resolve(1);
    })();
  } catch {}
})();
`;

/**
 * Runs `build` while componentize-js's writes of its bindings script
 * (`initializer.js`) get `BINDINGS_WARM_UP` appended; returns what `build`
 * returned and whether the script was seen. componentize-js has no option
 * for code in the bindings' global; it writes the script with
 * `fs/promises`' `writeFile`, whose ES module binding follows the CommonJS
 * object after `syncBuiltinESMExports()` (a documented Node API).
 */
async function withBindingsWarmUp(build) {
  const original = fsPromises.writeFile;
  let seen = false;
  fsPromises.writeFile = (path, data, ...rest) => {
    if (String(path).endsWith(`${sep}initializer.js`) && typeof data === 'string') {
      seen = true;
      return original(path, data + BINDINGS_WARM_UP, ...rest);
    }
    return original(path, data, ...rest);
  };
  syncBuiltinESMExports();
  try {
    return { result: await build(), seen };
  } finally {
    fsPromises.writeFile = original;
    syncBuiltinESMExports();
  }
}

/** The SDK's own sources: a step may carry an unchanged copy of them. */
const SDK_SOURCES = {
  'wrun.js': await readFile(sdkEntry, 'utf8'),
  'imports.js': await readFile(join(sdkDir, 'imports.js'), 'utf8'),
};

/**
 * `wrun.js` or `imports.js` when `file` is the SDK's module of that name or
 * an unchanged copy of it in a directory named `sdk` (as `wrun new`
 * writes next to a step); otherwise null. A changed copy is the step's own
 * code, read like any other.
 */
function sdkModule(file, source) {
  if (file === sdkEntry) {
    return 'wrun.js';
  }
  if (file === join(sdkDir, 'imports.js')) {
    return 'imports.js';
  }
  const name = file.slice(file.lastIndexOf(sep) + 1);
  const inSdkDir = dirname(file).endsWith(`${sep}sdk`);
  return inSdkDir && SDK_SOURCES[name] === source ? name : null;
}

/** Names exported by the SDK, and the interface each one needs. */
const SDK_NEEDS = {
  fetch: 'net',
  auth: 'secrets',
  secrets: 'secrets',
  properties: 'env',
};

function usage(message) {
  console.error(`${message}\nusage: node build.mjs <entry.js> <out.wasm> [--all-imports]`);
  process.exit(2);
}

/** Removes comments and the contents of string and template literals. */
function stripCommentsAndStrings(source) {
  return source
    .replace(/\/\*[\s\S]*?\*\//g, ' ')
    .replace(/(^|[^:\\])\/\/.*$/gm, '$1')
    .replace(/'(?:\\.|[^'\\\n])*'|"(?:\\.|[^"\\\n])*"/g, '""')
    .replace(/`(?:\\[\s\S]|[^`\\])*`/g, (template) =>
      // Keep the code inside `${...}`, drop the literal text.
      (template.match(/\$\{[^}]*\}/g) ?? []).join(' '),
    );
}

/** The specifiers of a module's static imports and re-exports. */
function importSpecifiers(source) {
  const found = [];
  const pattern = /(?:^|[;\s])(?:import|export)\s*(?:[\w*${}\s,]+?\s*from\s*)?(['"])([^'"]+)\1/g;
  for (const match of source.matchAll(pattern)) {
    found.push(match[2]);
  }
  return found;
}

/**
 * Walks the module graph from the entry through relative imports. Returns
 * the step's own modules (SDK excluded) and every local file to copy.
 */
async function moduleGraph(entry) {
  const own = new Map();
  const files = new Set();
  const sdkEntries = new Set([sdkEntry]);
  const sdkImports = new Set([join(sdkDir, 'imports.js')]);
  const queue = [entry];
  while (queue.length > 0) {
    const file = queue.pop();
    if (files.has(file)) {
      continue;
    }
    files.add(file);
    const source = await readFile(file, 'utf8');
    const sdk = sdkModule(file, source);
    if (sdk === 'wrun.js') {
      sdkEntries.add(file);
    } else if (sdk === 'imports.js') {
      sdkImports.add(file);
    } else {
      own.set(file, source);
    }
    for (const specifier of importSpecifiers(source)) {
      if (specifier.startsWith('./') || specifier.startsWith('../')) {
        queue.push(resolve(dirname(file), specifier));
      } else if (specifier.startsWith('/') || specifier.startsWith('file:')) {
        throw new Error(`${relative(process.cwd(), file)}: import "${specifier}" by a relative path (./ or ../)`);
      }
    }
  }
  // The SDK is always copied whole (it imports ./imports.js).
  files.add(sdkEntry);
  files.add(join(sdkDir, 'imports.js'));
  return { own, files, sdkEntries, sdkImports };
}

/** What the step's own modules use: a set of `net`, `secrets`, `env`. */
function detectNeeds(own, sdkEntries) {
  const needs = new Set();
  for (const [file, source] of own) {
    const code = stripCommentsAndStrings(source);
    const sdkImport = /import\s*([\s\S]*?)\s*from\s*(['"])([^'"]+)\2/g;
    for (const match of source.matchAll(sdkImport)) {
      const target = resolve(dirname(file), match[3]);
      if (!sdkEntries.has(target)) {
        continue;
      }
      const clause = match[1];
      const named = clause.match(/\{([\s\S]*)\}/);
      if (clause.includes('*') || !named) {
        // A namespace or default import: anything may be used.
        needs.add('net').add('secrets').add('env');
        continue;
      }
      for (const item of named[1].split(',')) {
        const name = item.trim().split(/\s+as\s+/)[0];
        if (SDK_NEEDS[name]) {
          needs.add(SDK_NEEDS[name]);
        }
      }
    }
    if (/(?<![\w$])fetch(?![\w$])/.test(code.replace(/import\s*\{[^}]*\}\s*from\s*""/g, ''))) {
      needs.add('net');
    }
  }
  return needs;
}

/** The grant each import of the `step` world needs; other imports need none. */
const IMPORT_NEEDS = [
  ['wasi:http/outgoing-handler', 'net'],
  ['secrets;', 'secrets'],
  ['properties;', 'env'],
];

/**
 * A copy of the WIT package with a world `step-js`: the package's `step`
 * world less the imports whose grant `needs` lacks, so the trimmed world
 * follows the package's world when it changes.
 */
async function trimmedWit(dir, needs) {
  const out = join(dir, 'wit');
  await cp(witDir, out, { recursive: true });
  const recipe = join(out, 'recipe.wit');
  const text = await readFile(recipe, 'utf8');
  const body = /\nworld step \{\n([\s\S]*?)\n\}/.exec(text);
  if (!body) throw new Error(`${recipe} has no \`world step\``);
  const granted = (line) => {
    const item = line.trim();
    const rule = IMPORT_NEEDS.find(([prefix]) => item.startsWith(`import ${prefix}`));
    return !rule || needs.has(rule[1]);
  };
  const lines = body[1].split('\n').filter(granted);
  const world = `\n/// The \`step\` world trimmed to what one JavaScript step uses.\nworld step-js {\n${lines.join('\n')}\n}\n`;
  await writeFile(recipe, text + world);
  return out;
}

/** `sdk/imports.js` for the trimmed world. */
function importsModule(needs) {
  const missing = (iface, grant) =>
    `() => {\n  throw new Error('this component was built without ${iface} (no use of it was found in the step; build with --all-imports, and give the step a ${grant} grant)');\n}`;
  return [
    '// Generated by build.mjs for one step.',
    needs.has('net')
      ? [
          "export { Fields, OutgoingRequest, OutgoingBody, IncomingBody, httpErrorCode } from 'wasi:http/types@0.2.12';",
          "export { handle as sendRequest } from 'wasi:http/outgoing-handler@0.2.12';",
        ].join('\n')
      : [
          'export const Fields = undefined;',
          'export const OutgoingRequest = undefined;',
          'export const OutgoingBody = undefined;',
          'export const IncomingBody = undefined;',
          'export const httpErrorCode = undefined;',
          `export const sendRequest = ${missing('wasi:http', 'net')};`,
        ].join('\n'),
    needs.has('secrets')
      ? "export { get as getSecret } from 'wrun:recipe/secrets@0.1.0';"
      : `export const getSecret = ${missing('wrun:recipe/secrets', 'secrets')};`,
    "export { log as writeLog } from 'wrun:recipe/log@0.1.0';",
    "export { mark as markValue } from 'wrun:recipe/mask@0.1.0';",
    needs.has('env')
      ? "export { get as getProperty } from 'wrun:recipe/properties@0.1.0';"
      : `export const getProperty = ${missing('wrun:recipe/properties', 'env')};`,
    '',
  ].join('\n');
}

/** The deepest directory holding every file. */
function commonRoot(files) {
  let root = dirname(files[0]);
  for (const file of files) {
    while (relative(root, file).startsWith('..')) {
      root = dirname(root);
    }
  }
  return root;
}

async function main() {
  const args = process.argv.slice(2);
  const allImports = args.includes('--all-imports');
  const [entryArg, outArg, ...extra] = args.filter((arg) => arg !== '--all-imports');
  if (!entryArg || !outArg || extra.length > 0) {
    usage('expected an entry module and an output path');
  }
  const entry = resolve(entryArg);
  const outPath = resolve(outArg);
  await stat(entry).catch(() => usage(`no such file: ${entryArg}`));

  const { own, files, sdkEntries, sdkImports } = await moduleGraph(entry);
  const needs = allImports ? new Set(['net', 'secrets', 'env']) : detectNeeds(own, sdkEntries);

  const work = await mkdtemp(join(tmpdir(), 'wrun-js-'));
  try {
    const root = commonRoot([...files]);
    const copy = join(work, 'src');
    for (const file of files) {
      const target = join(copy, relative(root, file));
      await mkdir(dirname(target), { recursive: true });
      await cp(file, target);
    }
    for (const imports of sdkImports) {
      await writeFile(join(copy, relative(root, imports)), importsModule(needs));
    }
    const wit = await trimmedWit(work, needs);

    // componentize-js maps the current directory into the engine when the
    // source is inside it; relative imports then resolve within the copy.
    const previous = process.cwd();
    process.chdir(copy);
    const started = Date.now();
    let component;
    try {
      const { result, seen } = await withBindingsWarmUp(() =>
        componentize({
          sourcePath: join(copy, relative(root, entry)),
          witPath: wit,
          worldName: 'step-js',
          disableFeatures: needs.has('net') ? ['fetch-event'] : ['fetch-event', 'http'],
        }),
      );
      ({ component } = result);
      if (!seen) {
        console.warn(
          'build.mjs: componentize-js did not write its bindings script as expected; ' +
            'the component works but its instances start slower',
        );
      }
    } finally {
      process.chdir(previous);
    }
    await mkdir(dirname(outPath), { recursive: true });
    await writeFile(outPath, component);
    const kept = ['net', 'secrets', 'env'].filter((need) => needs.has(need));
    console.log(
      `${relative(previous, outPath)}: ${component.length} bytes in ${Date.now() - started} ms; ` +
        `grants used: ${kept.length > 0 ? kept.join(', ') : 'none'}`,
    );
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

main().catch((error) => {
  console.error(`build.mjs: ${error?.message ?? error}`);
  process.exit(1);
});

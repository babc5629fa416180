// The JavaScript SDK for wrun recipe steps.
//
// A step is a WebAssembly component of the `wrun:recipe/step` world that
// exports one or more actions: JSON in, JSON out. In JavaScript an action is
// a function (sync or async) from the parsed input to a JSON-serialisable
// output, and `step` turns a map of them into the component's `actions`
// export:
//
//     import { step, fetch, auth, secrets, properties, log, errorForStatus } from '../sdk/wrun.js';
//
//     export const actions = step({
//       'get-issue': async ({ owner, repo, number }) => {
//         const base = properties.require('github_api');      // `env` grant
//         const github = secrets.get('github');                // `secrets` grant
//         log.info(`fetching ${owner}/${repo}#${number}`);
//         const response = await fetch(                        // `net` grant; HTTPS only
//           `${base}/repos/${owner}/${repo}/issues/${number}`,
//           auth({ headers: { accept: 'application/vnd.github+json' } }, github),
//         );
//         const issue = await (await errorForStatus(response)).json();
//         return { title: issue.title };
//       },
//     });
//
// Build it with `node build.mjs step.js step.wasm`, which also trims the
// component's imports to what the step uses.
//
// What the SDK maps, as the Rust SDK does:
// - input that is not JSON, or an `InvalidInput` thrown by the action,
//   becomes `invalid-input`; any other exception becomes `failed(message)`;
//   an unknown action name becomes `unknown-action`;
// - the step never sees a secret value, only a placeholder that `auth` puts
//   where the connection's placement says; the host swaps in the value at
//   send time, after checking the request;
// - a credential the step obtains itself goes through `mask.mark`;
// - `log.*`, `console.log` and `console.error` go to the job log, masked.

import {
  Fields,
  IncomingBody,
  OutgoingBody,
  OutgoingRequest,
  getProperty,
  getSecret,
  httpErrorCode,
  markValue,
  sendRequest,
  writeLog,
} from './imports.js';

/** How many characters of an error response's body `errorForStatus` quotes. */
const EXCERPT_CHARS = 200;

/** The most a response body may hold; a longer one fails the request. */
export const MAX_RESPONSE_BYTES = 64 * 1024 * 1024;

/** The most `blocking-write-and-flush` accepts in one call. */
const WRITE_CHUNK = 4096;

/** How much to ask for per read of the response body. */
const READ_CHUNK = 65536n;

/** Where `auth` leaves a query placement for `fetch` to apply to the URL. */
const PENDING_QUERY = Symbol('wrun.pendingQuery');

/**
 * Thrown by an action to report input of the wrong shape: the step fails
 * with `invalid-input(message)` rather than `failed(message)`.
 */
export class InvalidInput extends Error {
  constructor(message) {
    super(message);
    this.name = 'InvalidInput';
  }
}

/**
 * Thrown by `errorForStatus` for a response with status 400 or above; the
 * status is in `status`.
 */
export class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.name = 'HttpError';
    this.status = status;
  }
}

/**
 * Makes the component's `actions` export from a map of action names to
 * functions. Use it once, as `export const actions = step({...})`.
 *
 * Each function gets the parsed input and returns (or resolves to) the
 * output, which is serialised with `JSON.stringify` (`undefined` becomes
 * `null`).
 */
export function step(handlers) {
  if (handlers === null || typeof handlers !== 'object') {
    throw new TypeError('step() takes an object mapping action names to functions');
  }
  const names = Object.keys(handlers);
  for (const name of names) {
    if (typeof handlers[name] !== 'function') {
      throw new TypeError(`step(): action "${name}" is not a function`);
    }
  }
  if (names.length === 0) {
    throw new TypeError('step() needs at least one action');
  }
  warmUp();
  return {
    names() {
      return names;
    },
    async call(action, input) {
      if (!Object.hasOwn(handlers, action)) {
        return failure('unknown-action', action);
      }
      let value;
      try {
        value = JSON.parse(input);
      } catch (error) {
        return failure('invalid-input', describe(error));
      }
      let output;
      try {
        output = await handlers[action](value);
      } catch (error) {
        const kind = error instanceof InvalidInput ? 'invalid-input' : 'failed';
        return failure(kind, describe(error));
      }
      let text;
      try {
        text = JSON.stringify(output === undefined ? null : output);
      } catch (error) {
        return failure('failed', `the action's output cannot be serialised: ${describe(error)}`);
      }
      return { tag: 'ok', val: text === undefined ? 'null' : text };
    },
  };
}

/**
 * Uses, once, what `call` uses on every call in the step's own global
 * (promises and awaits, the text codecs, `JSON`, `Object.hasOwn`). `step()`
 * runs at the module's top level, which the build evaluates before it
 * snapshots the engine, so this set-up is in the snapshot instead of being
 * redone in each fresh instance (SpiderMonkey sets up a standard class on
 * its first use). No action runs and nothing of the host is called.
 */
function warmUp() {
  const text = new TextDecoder().decode(
    new TextEncoder().encode('{"warm":[1,"\u00e9",true,null,{"x":1.5}]}'),
  );
  const run = async (json) => {
    const value = await JSON.parse(json);
    return JSON.stringify(Object.hasOwn(value, 'warm') ? value : null);
  };
  run(text).catch(() => {});
}

/** An `action-error` result. */
function failure(tag, message) {
  return { tag: 'err', val: { tag, val: message } };
}

/** The message of anything thrown, never throwing itself. */
function describe(error) {
  try {
    if (error instanceof Error) {
      return error.message;
    }
    return String(error);
  } catch {
    return 'an exception that cannot be described';
  }
}

/** Secret handles: the step gets a placeholder, never a value. */
export const secrets = {
  /**
   * Gets the handle for a step-local alias: `{alias, placeholder,
   * placement}`. The placement is one of `header:NAME=TEMPLATE` (the
   * template holds `{}` where the credential goes), `basic`, `query:PARAM`
   * or `body:FIELD`. Throws if the step has no `secrets` grant for the
   * alias or no connection is bound to it.
   */
  get(alias) {
    let handle;
    try {
      handle = getSecret(String(alias));
    } catch (error) {
      const payload = error?.payload;
      if (payload?.tag === 'not-granted') {
        throw new Error(`secret not granted: ${payload.val}`);
      }
      if (payload?.tag === 'unavailable') {
        throw new Error(`secret unavailable: ${payload.val}`);
      }
      throw error;
    }
    const secret = Object.freeze({
      alias: handle.alias(),
      placeholder: handle.placeholder(),
      placement: handle.placement(),
    });
    // The handle is no longer needed: release it now rather than at
    // garbage collection.
    dispose(handle);
    return secret;
  },
};

/**
 * Returns a copy of a `fetch` init with the secret's placeholder where its
 * placement says:
 * - `header:NAME=TEMPLATE`: header NAME set to TEMPLATE with `{}` replaced
 *   (a bare `header:NAME` sets the placeholder alone);
 * - `basic`: `Authorization: Basic <placeholder>`;
 * - `query:PARAM`: `PARAM=<placeholder>` appended to the URL by this
 *   module's `fetch` (the global `fetch` does not know about it);
 * - `body:FIELD`: member FIELD of `init.json` (an object) or field FIELD of
 *   `init.form` (an object, pairs or `URLSearchParams`).
 */
export function auth(init, secret) {
  const out = { ...(init ?? {}) };
  const placement = parsePlacement(String(secret?.placement));
  const placeholder = String(secret?.placeholder);
  switch (placement.kind) {
    case 'header': {
      const headers = new Headers(out.headers ?? {});
      headers.set(placement.name, placement.template.replaceAll('{}', placeholder));
      out.headers = headers;
      break;
    }
    case 'basic': {
      const headers = new Headers(out.headers ?? {});
      headers.set('authorization', `Basic ${placeholder}`);
      out.headers = headers;
      break;
    }
    case 'query':
      out[PENDING_QUERY] = [...(init?.[PENDING_QUERY] ?? []), [placement.name, placeholder]];
      break;
    case 'body':
      if (out.json !== undefined) {
        if (out.json === null || typeof out.json !== 'object' || Array.isArray(out.json)) {
          throw new Error(`secret placement \`${secret.placement}\` needs a JSON object body`);
        }
        out.json = { ...out.json, [placement.name]: placeholder };
      } else if (out.form !== undefined) {
        const form = new URLSearchParams(out.form);
        form.set(placement.name, placeholder);
        out.form = form;
      } else {
        throw new Error(`secret placement \`${secret.placement}\` needs a json or form body`);
      }
      break;
  }
  return out;
}

/** Parses a placement string, as the Rust SDK does. */
function parsePlacement(placement) {
  const invalid = () => new Error(`unsupported secret placement \`${placement}\``);
  if (placement === 'basic') {
    return { kind: 'basic' };
  }
  const colon = placement.indexOf(':');
  if (colon < 0 || colon === placement.length - 1) {
    throw invalid();
  }
  const kind = placement.slice(0, colon);
  const rest = placement.slice(colon + 1);
  switch (kind) {
    case 'header': {
      const equals = rest.indexOf('=');
      if (equals < 0) {
        return { kind, name: rest, template: '{}' };
      }
      const name = rest.slice(0, equals);
      const template = rest.slice(equals + 1);
      if (name === '' || !template.includes('{}')) {
        throw invalid();
      }
      return { kind, name, template };
    }
    case 'query':
    case 'body':
      return { kind, name: rest };
    default:
      throw invalid();
  }
}

/**
 * `fetch` for steps: the standard `(url, init)` call, resolving to a standard
 * `Response`, sent through `wasi:http/outgoing-handler` directly so that a
 * refused request fails with the host's reason. Additions to the init:
 * `json` (a value sent as a JSON body), `form` (an object, pairs or
 * `URLSearchParams` sent URL-encoded) and the query placement left by
 * `auth`. The method defaults to POST when there is a body. A refused or
 * failed request rejects with `request to URL failed: reason`, for example
 * `... failed: wrun egress refused: ...`. Redirects are not followed; the
 * response body is read whole (at most `MAX_RESPONSE_BYTES`).
 *
 * The engine's own global `fetch` also works, but reports every failure as
 * `NetworkError when attempting to fetch resource`.
 */
export async function fetch(url, init = {}) {
  if (typeof OutgoingRequest !== 'function') {
    throw new Error('this component was built without wasi:http (no use of `fetch` was found in the step when it was built)');
  }
  const { json, form, [PENDING_QUERY]: query, ...rest } = init ?? {};
  let target = String(url);
  for (const [name, value] of query ?? []) {
    target = appendQuery(target, name, value);
  }
  const shown = target.split(/[?#]/, 1)[0];
  const fail = (reason) => new Error(`request to ${shown} failed: ${reason}`);

  const headers = new Headers(rest.headers ?? {});
  let body = rest.body ?? null;
  if (json !== undefined) {
    body = JSON.stringify(json);
    if (!headers.has('content-type')) {
      headers.set('content-type', 'application/json');
    }
  } else if (form !== undefined) {
    body = new URLSearchParams(form).toString();
    if (!headers.has('content-type')) {
      headers.set('content-type', 'application/x-www-form-urlencoded');
    }
  }
  let bytes = null;
  if (body !== null) {
    // Let the platform encode any BodyInit (string, bytes, Blob, FormData,
    // URLSearchParams, stream), content type included.
    const encoded = new Response(body);
    bytes = new Uint8Array(await encoded.arrayBuffer());
    const type = encoded.headers.get('content-type');
    if (type !== null && !headers.has('content-type')) {
      headers.set('content-type', type);
    }
    headers.set('content-length', String(bytes.length));
  }
  const method = String(rest.method ?? (bytes === null ? 'GET' : 'POST'));

  let parsed;
  try {
    parsed = new URL(target);
  } catch {
    throw fail('not an absolute URL');
  }
  if (parsed.username !== '' || parsed.password !== '') {
    throw fail('credentials in the URL are not supported; use a secret and `auth`');
  }

  const encoder = new TextEncoder();
  const entries = [];
  for (const [name, value] of headers) {
    entries.push([name, encoder.encode(value)]);
  }
  let request;
  try {
    request = new OutgoingRequest(Fields.fromList(entries));
  } catch (error) {
    throw fail(`invalid headers: ${error?.payload?.tag ?? describe(error)}`);
  }
  try {
    request.setMethod(toMethod(method));
    request.setScheme(toScheme(parsed.protocol.slice(0, -1)));
    request.setAuthority(parsed.host);
    request.setPathWithQuery(`${parsed.pathname}${parsed.search}`);
  } catch {
    throw fail('the host refused the request line');
  }
  const outgoing = request.body();
  let future;
  try {
    future = sendRequest(request, undefined);
  } catch (error) {
    throw fail(describePayload(error));
  }
  // The host reads the body while it sends, so write it after `handle`.
  let written;
  try {
    writeBody(outgoing, bytes);
  } catch (error) {
    written = error;
  }
  let incoming;
  for (;;) {
    const ready = future.get();
    if (ready === undefined) {
      const pollable = future.subscribe();
      pollable.block();
      dispose(pollable);
      continue;
    }
    if (ready.tag === 'err') {
      throw fail('the response was already taken');
    }
    if (ready.val.tag === 'err') {
      throw fail(describeErrorCode(ready.val.val));
    }
    incoming = ready.val.val;
    break;
  }
  dispose(future);
  if (written !== undefined) {
    throw fail(`writing the body: ${describePayload(written)}`);
  }
  const response = readResponse(incoming, fail);
  Object.defineProperty(response, 'url', { value: target });
  return response;
}

/** Writes a request body in chunks the host accepts, then finishes it. */
function writeBody(outgoing, bytes) {
  const stream = outgoing.write();
  if (bytes !== null) {
    for (let offset = 0; offset < bytes.length; offset += WRITE_CHUNK) {
      stream.blockingWriteAndFlush(bytes.subarray(offset, offset + WRITE_CHUNK));
    }
  }
  dispose(stream);
  OutgoingBody.finish(outgoing, undefined);
}

/** Reads a whole `incoming-response` into a standard `Response`. */
function readResponse(incoming, fail) {
  const status = incoming.status();
  const headers = new Headers();
  const decoder = new TextDecoder();
  const fields = incoming.headers();
  for (const [name, value] of fields.entries()) {
    headers.append(name, decoder.decode(value));
  }
  dispose(fields);
  const body = incoming.consume();
  const stream = body.stream();
  const chunks = [];
  let total = 0;
  for (;;) {
    let chunk;
    try {
      chunk = stream.blockingRead(READ_CHUNK);
    } catch (error) {
      if (error?.payload?.tag === 'closed') {
        break;
      }
      throw fail(`reading the response: ${describePayload(error)}`);
    }
    total += chunk.length;
    if (total > MAX_RESPONSE_BYTES) {
      throw fail(`the response body is larger than ${MAX_RESPONSE_BYTES} bytes`);
    }
    chunks.push(chunk);
  }
  dispose(stream);
  dispose(IncomingBody.finish(body));
  dispose(incoming);
  const bytes = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.length;
  }
  const nullBody = [101, 103, 204, 205, 304].includes(status);
  return new Response(nullBody ? null : bytes, { status, headers });
}

/** The `wasi:http` method variant for a method name. */
function toMethod(method) {
  const known = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH'];
  const upper = method.toUpperCase();
  return known.includes(upper) ? { tag: upper.toLowerCase() } : { tag: 'other', val: method };
}

/** The `wasi:http` scheme variant for a URL scheme. */
function toScheme(scheme) {
  if (scheme === 'https') {
    return { tag: 'HTTPS' };
  }
  if (scheme === 'http') {
    return { tag: 'HTTP' };
  }
  return { tag: 'other', val: scheme };
}

/** Describes a `wasi:http` error code, the host's reason verbatim if given. */
function describeErrorCode(code) {
  if (code?.tag === 'internal-error' && typeof code.val === 'string') {
    return code.val;
  }
  const detail = code?.val === undefined ? '' : `(${safeJson(code.val)})`;
  return `ErrorCode::${code?.tag}${detail}`;
}

/**
 * Describes what a `wasi:http` or `wasi:io` import threw: an error code, or
 * a stream error (with the HTTP error code inside it, if there is one).
 */
function describePayload(error) {
  const payload = error?.payload;
  if (payload === null || typeof payload !== 'object') {
    return describe(error);
  }
  if (payload.tag === 'closed') {
    return 'the stream was closed';
  }
  if (payload.tag === 'last-operation-failed') {
    try {
      const code = httpErrorCode(payload.val);
      if (code !== undefined) {
        return describeErrorCode(code);
      }
      return payload.val.toDebugString();
    } catch {
      return 'the last operation failed';
    }
  }
  return describeErrorCode(payload);
}

/** `JSON.stringify` that never throws. */
function safeJson(value) {
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

/** Releases a resource handle now rather than at garbage collection. */
function dispose(resource) {
  const release = resource?.[Symbol.dispose ?? Symbol.for('dispose')];
  if (typeof release === 'function') {
    release.call(resource);
  }
}

/** Appends `name=value` to a URL's query, before any fragment. */
function appendQuery(url, name, value) {
  const hash = url.indexOf('#');
  const base = hash < 0 ? url : url.slice(0, hash);
  const separator = base.includes('?') ? '&' : '?';
  return `${base}${separator}${encodeURIComponent(name)}=${encodeURIComponent(value)}`;
}

/**
 * Resolves to the response if its status is below 400; otherwise throws an
 * `HttpError` quoting the start of the body.
 */
export async function errorForStatus(response) {
  if (response.status < 400) {
    return response;
  }
  let body = '';
  try {
    body = (await response.text()).trim();
  } catch {
    // The status alone still describes the failure.
  }
  if (body.length > EXCERPT_CHARS) {
    body = `${body.slice(0, EXCERPT_CHARS)}...`;
  }
  const where = response.url ? ` from ${response.url.split(/[?#]/, 1)[0]}` : '';
  throw new HttpError(response.status, `HTTP ${response.status}${where}: ${body}`);
}

/** Formats log arguments as `console.log` would, roughly. */
function format(args) {
  return args
    .map((arg) => {
      if (typeof arg === 'string') {
        return arg;
      }
      if (arg instanceof Error) {
        return `${arg.name}: ${arg.message}`;
      }
      try {
        return JSON.stringify(arg) ?? String(arg);
      } catch {
        return String(arg);
      }
    })
    .join(' ');
}

/** The job log; every line is masked by the host before it is stored. */
export const log = {
  trace: (...args) => writeLog('trace', format(args)),
  debug: (...args) => writeLog('debug', format(args)),
  info: (...args) => writeLog('info', format(args)),
  warn: (...args) => writeLog('warn', format(args)),
  error: (...args) => writeLog('error', format(args)),
};

/** Values the step computed that must be treated like secrets. */
export const mask = {
  /**
   * Marks a value (say, an access token the step just received) as
   * sensitive: the host masks it in logs, outputs, errors and history for
   * the rest of the job. Values shorter than four bytes are ignored.
   */
  mark(value) {
    markValue(String(value));
  },
};

/** Non-secret properties of the environment the job runs in. */
export const properties = {
  /** A property named in the step's `env` grant, or `undefined`. */
  get(name) {
    return getProperty(String(name)) ?? undefined;
  },
  /** Like `get`, but throws if the property is not set. */
  require(name) {
    const value = properties.get(name);
    if (value === undefined) {
      throw new Error(
        `property \`${name}\` is not set (is it in the step's \`env\` grant and defined for this environment?)`,
      );
    }
    return value;
  },
};

/**
 * Write Warren message handlers in JavaScript.
 *
 * A Warren plugin is a WebAssembly component that exports the `warren:plugin/handler` world
 * (`wit/handler.wit`). componentize-js turns an ES module into such a component; this module
 * hides the generated bindings, so a plugin is one function and one export line:
 *
 * ```js
 * // app.js
 * import { jsonHandler, BadRequest } from "warren-guest";
 *
 * export const handle = jsonHandler((input) => {
 *   if (typeof input?.name !== "string") throw new BadRequest("name must be a string");
 *   return { greeting: `Hello, ${input.name}!` };
 * });
 * ```
 *
 * `jsonHandler(fn)` gets the body parsed as JSON (a body that is not JSON is a `bad-request`:
 * the host rejects it and never retries it) and answers with its return value as JSON.
 * `handler(fn)` gets the whole {@link Message} and returns a `Uint8Array`, a string or a
 * {@link Response}. Throw `BadRequest`, `Retry` or `Failed` to refuse a message; any other
 * exception traps: the host discards the instance and rejects the message.
 *
 * The host's imports — `publishEvent`, `sendRequest`, `sendToQueue`, `publishResponse`, `log`
 * — are granted per plugin in the host's config; a refused or unconfirmed send throws
 * {@link SendError}, which, left uncaught, refuses the message (`denied` → `failed`,
 * otherwise `retry`).
 *
 * Outbound HTTP is plain `fetch` (componentize-js implements it over wasi:http): set
 * `"warren": {"http": true}` in the plugin's package.json, and grant the origin in the host's
 * config (`[plugin.<name>] http = ["https://api.example.com"]`). A handler may be `async`:
 *
 * ```js
 * export const handle = jsonHandler(async ({ sku }) => {
 *   const response = await fetch(`https://prices.example.com/price/${sku}`).catch((e) => { throw httpError(e); });
 *   if (!response.ok) throw httpError(new Error(`prices answered ${response.status}`), response.status);
 *   return { sku, price: (await response.json()).price };
 * });
 * ```
 *
 * `httpError(e, status)` turns a failed request into the refusal that fits: an origin the
 * host does not grant (`HTTP-request-denied`), an answer over the host's cap, a 4xx →
 * `Failed`; anything else (unreachable, timed out, 5xx, 429) → `Retry`.
 *
 * Config values (`[plugin.<name>.config]`, and `config_files` for secrets) come from
 * `configGet(key)` / `configRequire(key)` (the standard `wasi:config/store`). Buckets of keys
 * and values that outlive a message (`[plugin.<name>] keyvalue = ["counters"]`) are
 * {@link Bucket}s: `Bucket.open("counters").increment("hits")`; a failure throws
 * {@link KeyValueError}, which, left uncaught, refuses the message (not granted → `failed`,
 * otherwise `retry`).
 *
 * Postgres databases the host grants (`[plugin.<name>] databases = ["orders"]`) are opened by
 * name with {@link Database}`.open("orders")`: `execute(sql, params)` gives the rows affected,
 * `query(sql, params)` gives `{ columns, rows }`. A failure throws {@link DatabaseError}
 * (`sqlstate` is Postgres's code), which, left uncaught, refuses the message (`retry` when the
 * database is unreachable or the failure may pass, else `failed`).
 *
 * `warren build` bundles `plugins/<name>/package.json`'s `main` with rolldown and turns it
 * into a component with componentize-js (both installed by `npm install` in the plugin).
 */

import * as host from "warren:plugin/host@0.1.0";
import * as configStore from "wasi:config/store@0.2.0-draft";
import * as kvStore from "wasi:keyvalue/store@0.2.0-draft";
import * as kvAtomics from "wasi:keyvalue/atomics@0.2.0-draft";
import * as kvCas from "warren:plugin/keyvalue-cas@0.1.0";
import * as postgres from "spin:postgres/postgres@4.0.0";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Why a handler did not answer. Throw one of the subclasses. */
export class HandlerError extends Error {}
/** The message can never be handled (bad JSON, a missing field): rejected, not retried. */
export class BadRequest extends HandlerError {}
/** A passing failure: requeued and retried a bounded number of times. */
export class Retry extends HandlerError {}
/** The handler failed for good: rejected, not retried. */
export class Failed extends HandlerError {}

/** A send the host did not do: `denied` (not granted, permanent) or the broker did not take it. */
export class SendError extends Error {
  constructor(message, denied) {
    super(message);
    this.denied = denied;
  }
}

/** A handler's answer: body and headers to add (the host sets `service` itself). */
export class Response {
  constructor(body, headers = {}) {
    this.body = typeof body === "string" ? encoder.encode(body) : body;
    this.headers = headers;
  }

  /** A response whose body is `value` as JSON. */
  static json(value, headers = {}) {
    return new Response(JSON.stringify(value), headers);
  }
}

/**
 * One delivery: `routingKey`, `body` (Uint8Array), `contentType` and `headers` (AMQP types
 * kept: string, number or BigInt, boolean, Uint8Array, object, array, Date, null).
 */
export class Message {
  constructor(routingKey, body, contentType, headers) {
    this.routingKey = routingKey;
    this.body = body;
    this.contentType = contentType;
    this.headers = headers;
  }

  /** The body as text. */
  text() {
    return decoder.decode(this.body);
  }

  /** The body parsed as JSON; throws {@link BadRequest} when it is not JSON. */
  json() {
    try {
      return JSON.parse(this.text());
    } catch (e) {
      throw new BadRequest(`the body is not JSON: ${e.message}`);
    }
  }
}

function fromWitValue({ tag, val }) {
  switch (tag) {
    case "integer":
      return val >= BigInt(Number.MIN_SAFE_INTEGER) && val <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(val) : val;
    case "table":
    case "array":
      return JSON.parse(val);
    case "timestamp":
      return new Date(Number(val) * 1000);
    case "void":
      return null;
    case "bytes":
      // The bindings may hand over another typed view: give handlers a plain Uint8Array.
      return Uint8Array.from(val);
    default:
      return val;
  }
}

function toWitValue(value) {
  if (value === null || value === undefined) return { tag: "void" };
  if (typeof value === "boolean") return { tag: "boolean", val: value };
  if (typeof value === "bigint") return { tag: "integer", val: value };
  if (typeof value === "number") {
    return Number.isInteger(value) ? { tag: "integer", val: BigInt(value) } : { tag: "float", val: value };
  }
  if (typeof value === "string") return { tag: "text", val: value };
  if (ArrayBuffer.isView(value)) {
    return { tag: "bytes", val: new Uint8Array(value.buffer, value.byteOffset, value.byteLength) };
  }
  if (value instanceof Date) return { tag: "timestamp", val: BigInt(Math.floor(value.getTime() / 1000)) };
  if (Array.isArray(value)) return { tag: "array", val: JSON.stringify(value) };
  if (typeof value === "object") return { tag: "table", val: JSON.stringify(value) };
  throw new TypeError(`a header value cannot be a ${typeof value}`);
}

function toWitHeaders(headers) {
  return Object.entries(headers ?? {}).map(([name, value]) => ({ name, value: toWitValue(value) }));
}

function toResponse(result) {
  if (result instanceof Response) return result;
  if (typeof result === "string" || result instanceof Uint8Array) return new Response(result);
  throw new TypeError("a handler returns a Uint8Array, a string or a Response");
}

/** The WIT `handler-error` a refusal becomes, or undefined for an exception that should trap. */
function refusal(e) {
  if (e instanceof BadRequest) return { tag: "bad-request", val: e.message };
  if (e instanceof Retry) return { tag: "retry", val: e.message };
  if (e instanceof Failed) return { tag: "failed", val: e.message };
  if (e instanceof SendError) return { tag: e.denied ? "failed" : "retry", val: e.message };
  if (e instanceof KeyValueError) return { tag: e.denied ? "failed" : "retry", val: e.message };
  if (e instanceof ConfigError) return { tag: "retry", val: e.message };
  if (e instanceof DatabaseError) return { tag: e.retryable ? "retry" : "failed", val: e.message };
  return undefined;
}

/**
 * Makes `fn(message)` the plugin's `handle` export: `export const handle = handler(fn)`.
 * `fn` returns (or, `async`, resolves to) a Uint8Array, a string or a {@link Response};
 * componentize-js runs the event loop until a returned promise settles.
 */
export function handler(fn) {
  const answer = (result) => {
    const response = toResponse(result);
    return { body: response.body, headers: toWitHeaders(response.headers) };
  };
  const refuse = (e) => {
    const error = refusal(e);
    if (error === undefined) throw e;
    return { tag: "err", val: error };
  };
  return (request, headers) => {
    const message = new Message(
      request.routingKey,
      request.body,
      request.contentType,
      Object.fromEntries(headers.map((h) => [h.name, fromWitValue(h.value)])),
    );
    try {
      const result = fn(message);
      if (typeof result?.then === "function") return result.then(answer, refuse);
      return answer(result);
    } catch (e) {
      return refuse(e);
    }
  };
}

/**
 * Makes `fn(value)` the plugin's `handle` export, `value` being the body parsed as JSON; its
 * return value (or a {@link Response}) is the JSON answer.
 */
export function jsonHandler(fn) {
  const toJson = (result) => (result instanceof Response ? result : Response.json(result));
  return handler((message) => {
    const result = fn(message.json(), message);
    return typeof result?.then === "function" ? result.then(toJson) : toJson(result);
  });
}

/**
 * The refusal a failed HTTP request becomes: `Failed` when it can never pass (the host does
 * not grant the origin, the answer is over the host's cap, a 4xx `status`), else `Retry`.
 * `e` is what `fetch` or `response.json()` threw (or an Error of your own with `status`).
 */
export function httpError(e, status) {
  const text = `${e?.message ?? e}${e?.cause ? ` (${e.cause?.message ?? e.cause})` : ""}`;
  const permanent =
    /denied|body-size|too large|over the host/i.test(text) ||
    (status !== undefined && status >= 400 && status < 500 && status !== 429) ||
    e instanceof SyntaxError;
  const message = `HTTP request failed: ${text}`;
  return permanent ? new Failed(message) : new Retry(message);
}

function send(call, ...args) {
  try {
    call(...args);
  } catch (e) {
    if (e?.payload?.tag === undefined) throw e;
    throw new SendError(e.payload.val, e.payload.tag === "denied");
  }
}

const bytes = (body) => (typeof body === "string" ? encoder.encode(body) : body);

/** Publishes an event to `<stream>.topic.exchange`, confirmed by the broker. */
export function publishEvent(stream, routingKey, body, headers = {}) {
  send(host.publishEvent, stream, routingKey, bytes(body), toWitHeaders(headers));
}

/** Publishes `value` as a JSON event. */
export function publishJson(stream, routingKey, value, headers = {}) {
  publishEvent(stream, routingKey, JSON.stringify(value), headers);
}

/** Sends a request to `service`; its answer arrives at a `[[response]]` handler. */
export function sendRequest(service, routingKey, body, headers = {}) {
  send(host.sendRequest, service, routingKey, bytes(body), toWitHeaders(headers));
}

/** Sends `value` as a JSON request to `service`. */
export function sendRequestJson(service, routingKey, value, headers = {}) {
  sendRequest(service, routingKey, JSON.stringify(value), headers);
}

/** Publishes to queue `queue` through the default exchange, as goamqp's queue publisher. */
export function sendToQueue(queue, routingKey, body, headers = {}) {
  send(host.sendToQueue, queue, routingKey, bytes(body), toWitHeaders(headers));
}

/**
 * Answers `service` later, as goamqp's `PublishServiceResponse`: this service's own
 * `<S>.headers.exchange.response`, header `service` = `service` (grant `respond`).
 */
export function publishResponse(service, routingKey, body, headers = {}) {
  send(host.publishResponse, service, routingKey, bytes(body), toWitHeaders(headers));
}

/** Answers `service` later with `value` as JSON. */
export function publishResponseJson(service, routingKey, value, headers = {}) {
  publishResponse(service, routingKey, JSON.stringify(value), headers);
}

/** Writes a line to the host's log: `level` is trace, debug, info, warn or error. */
export function log(level, message) {
  host.log(level, message);
}

export const debug = (message) => log("debug", message);
export const info = (message) => log("info", message);
export const warn = (message) => log("warn", message);
export const error = (message) => log("error", message);

/** The host could not give a config value (never for the values of its own config). */
export class ConfigError extends Error {}

/** The value of `key` in `[plugin.<name>.config]` (or `config_files`), or `undefined`. */
export function configGet(key) {
  try {
    return configStore.get(key) ?? undefined;
  } catch (e) {
    if (e?.payload?.tag === undefined) throw e;
    throw new ConfigError(`config value '${key}': ${e.payload.val}`);
  }
}

/** Every config key of this plugin with its value, as an object. */
export function configGetAll() {
  try {
    return Object.fromEntries(configStore.getAll());
  } catch (e) {
    if (e?.payload?.tag === undefined) throw e;
    throw new ConfigError(`config values: ${e.payload.val}`);
  }
}

/** The value of `key`; a missing key throws {@link Failed} naming where to set it. */
export function configRequire(key) {
  const value = configGet(key);
  if (value === undefined) {
    throw new Failed(`no config value '${key}': set it under [plugin.<name>.config] in the host's config`);
  }
  return value;
}

/**
 * A key-value operation the host did not do: `denied` (the bucket is not granted, or the host
 * has no store; permanent), or the store failed or the deadline is near (may pass).
 */
export class KeyValueError extends Error {
  constructor(message, denied) {
    super(message);
    this.denied = denied;
  }
}

function kv(what, call) {
  try {
    return call();
  } catch (e) {
    const tag = e?.payload?.tag;
    if (tag === undefined) throw e;
    if (tag === "access-denied") throw new KeyValueError(`${what}: the bucket is not granted to this plugin`, true);
    if (tag === "no-such-store") throw new KeyValueError(`${what}: this host has no key-value store`, true);
    throw new KeyValueError(`${what}: ${e.payload.val}`, false);
  }
}

/**
 * An open bucket of keys and values (`wasi:keyvalue/store`), granted in the host's config.
 * Values are `Uint8Array`s (a string is stored as UTF-8); a counter is decimal text.
 */
export class Bucket {
  constructor(name, inner) {
    this.name = name;
    this.inner = inner;
  }

  /** Opens bucket `name`; throws {@link KeyValueError} when it is not granted. */
  static open(name) {
    return new Bucket(name, kv(`open bucket '${name}'`, () => kvStore.open(name)));
  }

  /** The value of `key`, or `undefined` when it does not exist. */
  get(key) {
    return kv(`get '${key}'`, () => this.inner.get(key)) ?? undefined;
  }

  /** The value of `key` as text, or `undefined`. */
  getText(key) {
    const value = this.get(key);
    return value === undefined ? undefined : decoder.decode(value);
  }

  /** Sets `key` to `value` (a Uint8Array or a string). */
  set(key, value) {
    kv(`set '${key}'`, () => this.inner.set(key, bytes(value)));
  }

  /** Deletes `key` (nothing happens when it does not exist). */
  delete(key) {
    kv(`delete '${key}'`, () => this.inner.delete(key));
  }

  /** Whether `key` exists. */
  exists(key) {
    return kv(`exists '${key}'`, () => this.inner.exists(key));
  }

  /** Every key of the bucket (read page by page). */
  keys() {
    const keys = [];
    let cursor;
    do {
      const page = kv("list keys", () => this.inner.listKeys(cursor));
      keys.push(...page.keys);
      cursor = page.cursor;
    } while (cursor !== undefined && cursor !== null);
    return keys;
  }

  /**
   * Adds `delta` (default 1) to the counter `key` (a missing key counts from 0) and returns
   * the new value as a Number; atomic, also across hosts sharing a Redis.
   */
  increment(key, delta = 1) {
    return Number(kv(`increment '${key}'`, () => kvAtomics.increment(this.inner, key, BigInt(delta))));
  }

  /**
   * Sets `key` to `value` only if its value is `expected` (`undefined`: only if it does not
   * exist); whether it did. Atomic.
   */
  compareAndSwap(key, expected, value) {
    const old = expected === undefined || expected === null ? undefined : bytes(expected);
    return kv(`compare-and-swap '${key}'`, () => kvCas.compareAndSwap(this.inner, key, old, bytes(value)));
  }

  /** The value of `key` parsed as JSON, or `undefined`. */
  getJson(key) {
    const text = this.getText(key);
    if (text === undefined) return undefined;
    try {
      return JSON.parse(text);
    } catch (e) {
      throw new Failed(`the value of '${key}' is not JSON: ${e.message}`);
    }
  }

  /** Sets `key` to `value` as JSON. */
  setJson(key, value) {
    this.set(key, JSON.stringify(value));
  }
}

// --- Postgres (spin:postgres/postgres@4.0.0) -------------------------------------------------

/** SQLSTATE classes of failures that may pass: 08 connection, 40 rollback (serialization,
 * deadlock), 53 resources, 57 operator intervention (shutdown, cancel); and 55P03 (lock). */
const PASSING_SQLSTATES = ["08", "40", "53", "57", "55P03"];

/**
 * A database call that did not succeed. `kind` is the interface's case (`connection-failed`,
 * `bad-parameter`, `query-failed`, `value-conversion-failed`, `other`); `sqlstate` is
 * Postgres's code (`"23505"` for a unique violation) when the server sent an error.
 */
export class DatabaseError extends Error {
  constructor(message, kind, sqlstate) {
    super(message);
    this.kind = kind;
    this.sqlstate = sqlstate;
  }

  /** Whether the same call may pass later (what an uncaught one becomes: `retry`). */
  get retryable() {
    if (this.kind === "connection-failed") return !this.message.includes("may not open database");
    if (this.sqlstate !== undefined) return PASSING_SQLSTATES.some((c) => this.sqlstate.startsWith(c));
    if (this.kind === "query-failed") return this.message.includes("deadline");
    return this.kind === "other";
  }
}

function pg(what, call) {
  try {
    return call();
  } catch (e) {
    const error = e?.payload;
    if (error?.tag === undefined) throw e;
    if (error.tag === "query-failed" && error.val.tag === "db-error") {
      const { message, code } = error.val.val;
      throw new DatabaseError(`${what}: ${message} (SQLSTATE ${code})`, error.tag, code);
    }
    throw new DatabaseError(`${what}: ${error.val?.val ?? error.val}`, error.tag);
  }
}

const isInteger = (v) => typeof v === "bigint" || Number.isInteger(v);

/** A plain value as the interface's parameter. */
function toParameter(value) {
  if (value === null || value === undefined) return { tag: "db-null" };
  if (typeof value === "boolean") return { tag: "boolean", val: value };
  if (typeof value === "bigint") return { tag: "int64", val: value };
  if (typeof value === "number") {
    return Number.isSafeInteger(value) ? { tag: "int64", val: BigInt(value) } : { tag: "floating64", val: value };
  }
  if (typeof value === "string") return { tag: "str", val: value };
  if (ArrayBuffer.isView(value)) {
    return { tag: "binary", val: new Uint8Array(value.buffer, value.byteOffset, value.byteLength) };
  }
  if (value instanceof Date) {
    const d = value;
    const fields = [d.getUTCFullYear(), d.getUTCMonth() + 1, d.getUTCDate(), d.getUTCHours(), d.getUTCMinutes()];
    return { tag: "datetime", val: [...fields, d.getUTCSeconds(), d.getUTCMilliseconds() * 1e6] };
  }
  if (Array.isArray(value)) {
    const present = value.filter((v) => v !== null && v !== undefined);
    if (present.length > 0 && present.every(isInteger)) {
      return { tag: "array-int64", val: value.map((v) => (isInteger(v) ? BigInt(v) : undefined)) };
    }
    if (present.every((v) => typeof v === "string")) {
      return { tag: "array-str", val: value.map((v) => v ?? undefined) };
    }
    throw new DatabaseError(
      "an array parameter holds integers or strings (and null): pass other arrays as JSON text (JSON.stringify(value))",
      "bad-parameter",
    );
  }
  if (typeof value === "object") return { tag: "jsonb", val: encoder.encode(JSON.stringify(value)) };
  throw new DatabaseError(`a parameter cannot be a ${typeof value}`, "bad-parameter");
}

/** An int64 as a Number when it is exact, else a BigInt. */
const int64 = (v) => (v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v);
const pad = (n, width = 2) => String(n).padStart(width, "0");

/** The interface's value as a plain one. */
function fromDbValue({ tag, val }) {
  switch (tag) {
    case "db-null":
      return null;
    case "int64":
      return int64(val);
    case "binary":
    case "unsupported":
      return Uint8Array.from(val);
    case "date":
      return new Date(Date.UTC(val[0], val[1] - 1, val[2]));
    case "datetime":
      return new Date(Date.UTC(val[0], val[1] - 1, val[2], val[3], val[4], val[5], Math.floor(val[6] / 1e6)));
    case "timestamp":
      return new Date(Number(val) * 1000);
    case "time":
      return `${pad(val[0])}:${pad(val[1])}:${pad(val[2])}.${pad(Math.floor(val[3] / 1000), 6)}`;
    case "jsonb":
      return JSON.parse(decoder.decode(val));
    case "array-int32":
    case "array-int64":
    case "array-decimal":
    case "array-str":
      return val.map((v) => (v === undefined ? null : typeof v === "bigint" ? int64(v) : v));
    case "interval":
      return { months: val.months, days: val.days, micros: int64(val.micros) };
    default:
      // boolean, int8/16/32, floats, str, uuid, decimal (as text: no precision lost), ranges.
      return val;
  }
}

/**
 * A connection to a Postgres database the host grants this plugin (by name, never a URL).
 * Parameters are bound (`$1`, `$2`, …), never spliced into the statement; each is a plain
 * value: null, boolean, number or BigInt, string (also for numeric, uuid and json columns),
 * Uint8Array, Date, an array of integers or of strings, or an object (JSON). Values read back
 * the same way: integers as numbers (BigInt past 2^53), `numeric` and `uuid` as strings,
 * json parsed, dates and timestamps as `Date` (UTC), `time` as "HH:MM:SS.ffffff", an interval
 * as `{ months, days, micros }`, a type the interface lacks as its raw bytes.
 */
export class Database {
  constructor(name, inner) {
    this.name = name;
    this.inner = inner;
  }

  /** Opens the granted database `name`; throws {@link DatabaseError} when it cannot. */
  static open(name) {
    return new Database(name, pg(`open database '${name}'`, () => postgres.Connection.open(name)));
  }

  /** Runs a statement that returns no rows; the number of rows it affected. */
  execute(statement, params = []) {
    const bound = params.map(toParameter);
    return Number(pg(`database '${this.name}'`, () => this.inner.execute(statement, bound)));
  }

  /** Runs a query: `{ columns, rows }`, column names and each row an array of values. */
  query(statement, params = []) {
    const bound = params.map(toParameter);
    const result = pg(`database '${this.name}'`, () => this.inner.query(statement, bound));
    return { columns: result.columns.map((c) => c.name), rows: result.rows.map((row) => row.map(fromDbValue)) };
  }
}

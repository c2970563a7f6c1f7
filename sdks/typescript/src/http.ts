/**
 * Durable HTTP (`CallHttp`) on top of `@microsoft/durabletask-js`.
 *
 * Duro runs durable HTTP requests as the built-in activity `BuiltIn::HttpActivity`: the
 * sidecar sends the request, follows the asynchronous 202 + `Location` pattern itself and
 * returns the final response, so the orchestration never sees a 202 while
 * `asynchronousPatternEnabled` is true (the default).
 */
import type { OrchestrationContext, Task, TaskOptions } from "@microsoft/durabletask-js";

/** Name of the built-in activity that performs durable HTTP requests in the sidecar. */
export const HTTP_ACTIVITY_NAME = "BuiltIn::HttpActivity";

/** Header name to a value or several values. */
export type HttpHeaders = Record<string, string | string[]>;

/** A bearer token the sidecar acquires from a managed identity at execution time (never stored in history). */
export interface ManagedIdentityTokenSource {
  kind: "AzureManagedIdentity";
  /** Resource or v2 scope, e.g. `https://management.core.windows.net/.default`. */
  resource: string;
  options?: { tenantid?: string; authorityhost?: string };
}

const SCOPE_REWRITES: Record<string, string> = {
  "https://management.core.windows.net": "https://management.core.windows.net/.default",
  "https://management.core.windows.net/": "https://management.core.windows.net/.default",
  "https://graph.microsoft.com": "https://graph.microsoft.com/.default",
  "https://graph.microsoft.com/": "https://graph.microsoft.com/.default",
};

/** Builds a managed-identity token source (bare management/Graph resources become `/.default` scopes). */
export function managedIdentityTokenSource(
  resource: string,
  opts: { tenantId?: string; authorityHost?: string } = {},
): ManagedIdentityTokenSource {
  const out: ManagedIdentityTokenSource = { kind: "AzureManagedIdentity", resource: SCOPE_REWRITES[resource] ?? resource };
  const options: { tenantid?: string; authorityhost?: string } = {};
  if (opts.tenantId !== undefined) options.tenantid = opts.tenantId;
  if (opts.authorityHost !== undefined) options.authorityhost = opts.authorityHost;
  if (Object.keys(options).length > 0) out.options = options;
  return out;
}

/** A durable HTTP request as the caller writes it. */
export interface DurableHttpRequest {
  /** HTTP method; default `GET`. */
  method?: string;
  /** Absolute http(s) URL. */
  uri: string;
  headers?: HttpHeaders;
  /** Request body text. */
  content?: string | null;
  tokenSource?: ManagedIdentityTokenSource | null;
  /** Follow 202 + `Location` polling in the sidecar; default true. */
  asynchronousPatternEnabled?: boolean;
  /** Timeout of each HTTP attempt: milliseconds, or a .NET TimeSpan string (`hh:mm:ss`). */
  timeout?: number | string | null;
}

/** The final response of a durable HTTP request. */
export interface DurableHttpResponse {
  statusCode: number;
  /** Header names as sent by the sidecar (lower-case). */
  headers: HttpHeaders;
  /** Body text, or null for an empty body. */
  content: string | null;
}

/** Formats milliseconds as a .NET TimeSpan string (`[d.]hh:mm:ss[.fffffff]`). */
export function toTimeSpan(ms: number): string {
  if (!(ms > 0)) throw new RangeError("timeout must be greater than zero");
  let rest = Math.round(ms * 10_000); // ticks (100 ns)
  const days = Math.floor(rest / 864_000_000_000);
  rest -= days * 864_000_000_000;
  const hours = Math.floor(rest / 36_000_000_000);
  rest -= hours * 36_000_000_000;
  const minutes = Math.floor(rest / 600_000_000);
  rest -= minutes * 600_000_000;
  const seconds = Math.floor(rest / 10_000_000);
  const ticks = rest - seconds * 10_000_000;
  const p2 = (n: number) => String(n).padStart(2, "0");
  let text = `${p2(hours)}:${p2(minutes)}:${p2(seconds)}`;
  if (days) text = `${days}.${text}`;
  if (ticks) text += `.${String(ticks).padStart(7, "0")}`;
  return text;
}

/** The camelCase JSON object the sidecar's `BuiltIn::HttpActivity` parses. */
export function toRequestJson(req: DurableHttpRequest): Record<string, unknown> {
  return {
    method: (req.method ?? "GET").toUpperCase(),
    uri: req.uri,
    headers: req.headers ?? {},
    content: req.content ?? null,
    tokenSource: req.tokenSource ?? null,
    asynchronousPatternEnabled: req.asynchronousPatternEnabled ?? true,
    timeout: req.timeout == null ? null : typeof req.timeout === "number" ? toTimeSpan(req.timeout) : req.timeout,
  };
}

/** Normalizes the activity output (object or JSON text) to a {@link DurableHttpResponse}. */
export function toHttpResponse(value: unknown): DurableHttpResponse {
  const obj = (typeof value === "string" ? JSON.parse(value) : value) as Record<string, unknown> | null;
  if (!obj || typeof obj !== "object") throw new TypeError("expected a DurableHttpResponse object");
  const get = (k: string) => Object.entries(obj).find(([key]) => key.toLowerCase() === k.toLowerCase())?.[1];
  return {
    statusCode: Number(get("statusCode") ?? 0),
    headers: (get("headers") as HttpHeaders | undefined) ?? {},
    content: (get("content") as string | null | undefined) ?? null,
  };
}

/** First value of a response header (case-insensitive). */
export function getHeader(resp: DurableHttpResponse, name: string): string | undefined {
  const hit = Object.entries(resp.headers).find(([k]) => k.toLowerCase() === name.toLowerCase())?.[1];
  return Array.isArray(hit) ? hit[0] : hit;
}

/**
 * Schedules the durable HTTP activity and returns the raw task (its result is the response JSON).
 * Use with `whenAll`/`whenAny`, then convert each result with {@link toHttpResponse}.
 */
export function callHttpTask(ctx: OrchestrationContext, request: DurableHttpRequest, options?: TaskOptions): Task<unknown> {
  return ctx.callActivity<Record<string, unknown>, unknown>(HTTP_ACTIVITY_NAME, toRequestJson(request), options);
}

/**
 * Makes a durable HTTP request from an (async) generator orchestrator; delegate with `yield*`:
 *
 * ```ts
 * // durabletask-js runs async generator orchestrators
 * const orchestrator = async function* (ctx: OrchestrationContext) {
 *   const resp = yield* callHttp(ctx, { method: "GET", uri: "https://example.org" });
 *   return resp.statusCode;
 * };
 * ```
 *
 * Failures (invalid request, blocked address, timeout, ...) throw a `TaskFailedError` whose
 * details carry one of Duro's `DuroHttp*` error types.
 */
export function* callHttp(
  ctx: OrchestrationContext,
  request: DurableHttpRequest,
  options?: TaskOptions,
): Generator<Task<unknown>, DurableHttpResponse, unknown> {
  const result = yield callHttpTask(ctx, request, options);
  return toHttpResponse(result);
}

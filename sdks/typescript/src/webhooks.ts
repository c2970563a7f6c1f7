/** A client for Duro's HTTP management API (`/runtime/webhooks/durabletask`), using `fetch`. */

/** Path of the management API below the server's root URL. */
export const BASE_PATH = "/runtime/webhooks/durabletask";

/** A non-success answer of the management API. */
export class WebhookError extends Error {
  constructor(
    readonly status: number,
    readonly body: string,
    readonly url: string,
  ) {
    super(`HTTP ${status} from ${url}: ${body.slice(0, 500)}`);
    this.name = "WebhookError";
  }
}

/** The status object of an instance (Durable Functions' shape). */
export interface InstanceStatus {
  name: string;
  instanceId: string;
  runtimeStatus: string;
  input: unknown;
  customStatus: unknown;
  output: unknown;
  createdTime: string;
  lastUpdatedTime: string;
  historyEvents?: Record<string, unknown>[];
}

/** Management links returned on start (`CreateCheckStatusResponse` body). */
export interface CheckStatusPayload {
  id: string;
  statusQueryGetUri: string;
  sendEventPostUri: string;
  terminatePostUri: string;
  purgeHistoryDeleteUri: string;
  restartPostUri: string;
  suspendPostUri: string;
  resumePostUri: string;
}

/** Signed per-instance links (Duro extension): no management key, safe for end clients. */
export interface SignedLinksPayload {
  id: string;
  statusQueryGetUri: string;
  sendEventPostUri?: string;
  expiresAt: string;
}

const TERMINAL = new Set(["Completed", "Failed", "Terminated", "Canceled"]);

/** True when the status is Completed, Failed, Terminated or Canceled. */
export function isTerminal(status: InstanceStatus): boolean {
  return TERMINAL.has(status.runtimeStatus);
}

export interface WebhookClientOptions {
  /** System key (`--http-system-key`), sent as `x-functions-key`. */
  systemKey?: string;
}

type Query = Record<string, string | number | boolean | undefined | null>;

/** Client for Duro's HTTP management API. */
export class DuroWebhookClient {
  readonly baseUrl: string;
  readonly systemKey?: string;

  /** @param baseUrl Root URL of Duro's HTTP listener, e.g. `http://127.0.0.1:7071`. */
  constructor(baseUrl: string, options: WebhookClientOptions = {}) {
    let base = baseUrl.replace(/\/+$/, "");
    if (!base.endsWith(BASE_PATH)) base += BASE_PATH;
    this.baseUrl = base;
    this.systemKey = options.systemKey;
  }

  /** Sends one request; throws {@link WebhookError} unless the status is in `ok`. */
  async request(
    method: string,
    path: string,
    opts: { query?: Query; body?: unknown; hasBody?: boolean; headers?: Record<string, string>; ok?: number[] } = {},
  ): Promise<{ status: number; headers: Headers; text: string }> {
    let url = this.baseUrl + path;
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(opts.query ?? {})) if (v !== undefined && v !== null) q.set(k, String(v));
    if ([...q.keys()].length) url += `?${q.toString()}`;
    const headers: Record<string, string> = { Accept: "application/json", ...(opts.headers ?? {}) };
    if (this.systemKey) headers["x-functions-key"] = this.systemKey;
    let body: string | undefined;
    if (opts.body !== undefined || opts.hasBody) {
      body = JSON.stringify(opts.body ?? null);
      headers["Content-Type"] = "application/json";
    }
    const resp = await fetch(url, { method, headers, body });
    const text = await resp.text();
    if (!(opts.ok ?? [200, 201, 202]).includes(resp.status)) throw new WebhookError(resp.status, text, url);
    return { status: resp.status, headers: resp.headers, text };
  }

  /** Starts an orchestration; returns the check-status payload (or signed links with `signedLinks`). */
  async start(
    orchestrator: string,
    input?: unknown,
    opts: { instanceId?: string; signedLinks?: boolean; signedLinkOps?: string; signedLinkTtl?: number } = {},
  ): Promise<CheckStatusPayload & Partial<SignedLinksPayload>> {
    let path = `/orchestrators/${encodeURIComponent(orchestrator)}`;
    if (opts.instanceId !== undefined) path += `/${encodeURIComponent(opts.instanceId)}`;
    const r = await this.request("POST", path, {
      query: {
        signedLinks: opts.signedLinks ? true : undefined,
        signedLinkOps: opts.signedLinkOps,
        signedLinkTtl: opts.signedLinkTtl,
      },
      body: input,
      ok: [202],
    });
    return JSON.parse(r.text);
  }

  /** Returns the instance status, or undefined when it does not exist. */
  async getStatus(
    instanceId: string,
    opts: { showHistory?: boolean; showHistoryOutput?: boolean; showInput?: boolean } = {},
  ): Promise<InstanceStatus | undefined> {
    const r = await this.request("GET", `/instances/${encodeURIComponent(instanceId)}`, {
      query: {
        showHistory: opts.showHistory || undefined,
        showHistoryOutput: opts.showHistoryOutput || undefined,
        showInput: opts.showInput === false ? false : undefined,
      },
      ok: [200, 202, 404],
    });
    return r.status === 404 ? undefined : JSON.parse(r.text);
  }

  /** Lists instances matching the filters, following continuation tokens. */
  async listInstances(
    filter: { runtimeStatus?: string[]; instanceIdPrefix?: string; createdTimeFrom?: string; createdTimeTo?: string; top?: number } = {},
  ): Promise<InstanceStatus[]> {
    const out: InstanceStatus[] = [];
    let token: string | null = null;
    for (;;) {
      const r = await this.request("GET", "/instances", {
        query: {
          runtimeStatus: filter.runtimeStatus?.join(","),
          instanceIdPrefix: filter.instanceIdPrefix,
          createdTimeFrom: filter.createdTimeFrom,
          createdTimeTo: filter.createdTimeTo,
          top: filter.top,
        },
        headers: token ? { "x-ms-continuation-token": token } : undefined,
        ok: [200],
      });
      out.push(...(JSON.parse(r.text || "[]") as InstanceStatus[]));
      token = r.headers.get("x-ms-continuation-token");
      if (!token) return out;
    }
  }

  /** Polls until the instance is terminal; rejects after `timeoutMs`. */
  async waitForCompletion(instanceId: string, timeoutMs = 60_000, intervalMs = 200): Promise<InstanceStatus> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const st = await this.getStatus(instanceId);
      if (st && isTerminal(st)) return st;
      if (Date.now() >= deadline) throw new Error(`instance ${instanceId} not finished after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, intervalMs));
    }
  }

  /** Raises an external event with JSON `data`. */
  async raiseEvent(instanceId: string, eventName: string, data: unknown = null): Promise<void> {
    await this.request("POST", `/instances/${encodeURIComponent(instanceId)}/raiseEvent/${encodeURIComponent(eventName)}`, {
      body: data,
      hasBody: true,
      ok: [202],
    });
  }

  /** Terminates an instance; `reason` becomes its output. */
  async terminate(instanceId: string, reason?: string): Promise<void> {
    await this.request("POST", `/instances/${encodeURIComponent(instanceId)}/terminate`, { query: { reason }, ok: [202] });
  }

  /** Suspends an instance. */
  async suspend(instanceId: string, reason?: string): Promise<void> {
    await this.request("POST", `/instances/${encodeURIComponent(instanceId)}/suspend`, { query: { reason }, ok: [202] });
  }

  /** Resumes a suspended instance. */
  async resume(instanceId: string, reason?: string): Promise<void> {
    await this.request("POST", `/instances/${encodeURIComponent(instanceId)}/resume`, { query: { reason }, ok: [202] });
  }

  /** Purges a terminal instance; returns the number deleted (0 when not found). */
  async purge(instanceId: string): Promise<number> {
    const r = await this.request("DELETE", `/instances/${encodeURIComponent(instanceId)}`, { ok: [200, 404] });
    return r.status === 404 ? 0 : Number(JSON.parse(r.text).instancesDeleted ?? 0);
  }

  /** Issues signed per-instance links; `ops` is `status` (always) and optionally `raiseEvent`. */
  async signedLinks(instanceId: string, opts: { ops?: string; ttlSeconds?: number } = {}): Promise<SignedLinksPayload> {
    const r = await this.request("POST", `/instances/${encodeURIComponent(instanceId)}/signedLinks`, {
      query: { signedLinkOps: opts.ops ?? "status", signedLinkTtl: opts.ttlSeconds },
      ok: [200],
    });
    return JSON.parse(r.text);
  }
}

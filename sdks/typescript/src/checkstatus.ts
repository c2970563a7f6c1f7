/** Check-status responses for web frameworks (Durable Functions' `CreateCheckStatusResponse`). */
import { BASE_PATH, type CheckStatusPayload, type DuroWebhookClient, type SignedLinksPayload } from "./webhooks.js";

/** A framework-neutral 202 response: adapt to Express/Fastify/..., or call {@link toFetchResponse}. */
export interface CheckStatusResponse<B> {
  status: 202;
  headers: Record<string, string>;
  body: B;
}

/**
 * Builds the management links of an instance, in the shape Duro answers on start.
 * With `systemKey` every link carries `code=<key>`: only give such links to trusted callers.
 */
export function createHttpManagementPayload(
  baseUrl: string,
  instanceId: string,
  opts: { systemKey?: string; returnInternalServerErrorOnFailure?: boolean } = {},
): CheckStatusPayload {
  let base = baseUrl.replace(/\/+$/, "");
  if (!base.endsWith(BASE_PATH)) base += BASE_PATH;
  const inst = `${base}/instances/${encodeURIComponent(instanceId)}`;
  const code = opts.systemKey ? `code=${encodeURIComponent(opts.systemKey)}` : undefined;
  const q = (...parts: (string | undefined)[]) => {
    const p = parts.filter((x): x is string => !!x);
    return p.length ? `?${p.join("&")}` : "";
  };
  const fail = opts.returnInternalServerErrorOnFailure ? "returnInternalServerErrorOnFailure=true" : undefined;
  const reason = "reason={text}";
  return {
    id: instanceId,
    statusQueryGetUri: `${inst}${q(code, fail)}`,
    sendEventPostUri: `${inst}/raiseEvent/{eventName}${q(code)}`,
    terminatePostUri: `${inst}/terminate${q(reason, code)}`,
    purgeHistoryDeleteUri: `${inst}${q(code)}`,
    restartPostUri: `${inst}/restart${q(code)}`,
    suspendPostUri: `${inst}/suspend${q(reason, code)}`,
    resumePostUri: `${inst}/resume${q(reason, code)}`,
  };
}

function accepted<B extends { statusQueryGetUri: string }>(body: B): CheckStatusResponse<B> {
  return {
    status: 202,
    headers: {
      Location: body.statusQueryGetUri,
      "Retry-After": "10",
      "Content-Type": "application/json; charset=utf-8",
    },
    body,
  };
}

/** 202 check-status response with the management links (`Retry-After: 10`). */
export function createCheckStatusResponse(
  baseUrl: string,
  instanceId: string,
  opts: { systemKey?: string; returnInternalServerErrorOnFailure?: boolean } = {},
): CheckStatusResponse<CheckStatusPayload> {
  return accepted(createHttpManagementPayload(baseUrl, instanceId, opts));
}

/** Asks Duro for signed per-instance links and wraps them in a 202 response (safe for end clients). */
export async function createSignedLinkResponse(
  client: DuroWebhookClient,
  instanceId: string,
  opts: { ops?: string; ttlSeconds?: number } = {},
): Promise<CheckStatusResponse<SignedLinksPayload>> {
  return accepted(await client.signedLinks(instanceId, opts));
}

/** Converts a check-status response to a WHATWG `Response` (for fetch-style frameworks). */
export function toFetchResponse<B>(r: CheckStatusResponse<B>): Response {
  return new Response(JSON.stringify(r.body), { status: r.status, headers: r.headers });
}

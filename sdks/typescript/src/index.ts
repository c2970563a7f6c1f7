/**
 * `@duro/sdk`: Duro extensions for `@microsoft/durabletask-js` — durable HTTP (`callHttp`),
 * a client for Duro's HTTP management API, check-status helpers and connection helpers.
 * Replay and everything else come from the official SDK unchanged.
 */
export * from "./http.js";
export * from "./webhooks.js";
export * from "./checkstatus.js";
export * from "./connect.js";

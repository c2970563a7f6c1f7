/**
 * Connection helpers returning the official SDK's gRPC client and worker, with Duro's API
 * token (`authorization: Bearer …` on every call) and TLS trust when they are configured.
 */
import { readFileSync } from "node:fs";
import * as grpc from "@grpc/grpc-js";
import {
  TaskHubGrpcClient,
  TaskHubGrpcWorker,
  type TaskHubGrpcClientOptions,
  type TaskHubGrpcWorkerOptions,
} from "@microsoft/durabletask-js";

/** Duro's default gRPC address. */
export const DEFAULT_ADDRESS = "localhost:4001";

/** How to reach a Duro that requires a token (`--api-token`) or serves TLS (`--tls-cert`). */
export interface DuroSecurity {
  /** Duro's API token; default `$DURO_API_TOKEN`; none needed on loopback without one. */
  apiToken?: string;
  /** PEM file of the CA that issued Duro's TLS certificate; default `$DURO_TLS_CA_FILE`. */
  caFile?: string;
}

function address(a?: string): string {
  return a ?? process.env.DURO_ADDRESS ?? DEFAULT_ADDRESS;
}

/** The official SDK's `credentials` and `metadataGenerator` options for `security`. */
export function securityOptions(security: DuroSecurity = {}): Pick<
  TaskHubGrpcClientOptions,
  "credentials" | "metadataGenerator"
> {
  const token = security.apiToken ?? process.env.DURO_API_TOKEN;
  const caFile = security.caFile ?? process.env.DURO_TLS_CA_FILE;
  const out: Pick<TaskHubGrpcClientOptions, "credentials" | "metadataGenerator"> = {};
  if (caFile) {
    let ca: Buffer;
    try {
      ca = readFileSync(caFile);
    } catch (e) {
      throw new Error(`cannot read the CA file ${caFile} (caFile / DURO_TLS_CA_FILE): ${(e as Error).message}`);
    }
    out.credentials = grpc.credentials.createSsl(ca);
  }
  if (token) {
    out.metadataGenerator = async () => {
      const m = new grpc.Metadata();
      m.set("authorization", `Bearer ${token}`);
      return m;
    };
  }
  return out;
}

/** A `TaskHubGrpcClient` for Duro (address default `$DURO_ADDRESS` or `localhost:4001`). */
export function connectClient(
  addr?: string,
  options: Omit<TaskHubGrpcClientOptions, "hostAddress"> & DuroSecurity = {},
): TaskHubGrpcClient {
  const { apiToken, caFile, ...rest } = options;
  return new TaskHubGrpcClient({ ...securityOptions({ apiToken, caFile }), ...rest, hostAddress: address(addr) });
}

/**
 * A `TaskHubGrpcWorker` for Duro. Pass `workItemFilters: "auto"` to receive only what this
 * worker registered (useful with several workers, in several languages, on one Duro).
 */
export function newWorker(
  addr?: string,
  options: Omit<TaskHubGrpcWorkerOptions, "hostAddress"> & DuroSecurity = {},
): TaskHubGrpcWorker {
  const { apiToken, caFile, ...rest } = options;
  return new TaskHubGrpcWorker({ ...securityOptions({ apiToken, caFile }), ...rest, hostAddress: address(addr) });
}

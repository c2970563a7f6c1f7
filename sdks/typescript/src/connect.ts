/** Connection helpers returning the official SDK's gRPC client and worker. */
import {
  TaskHubGrpcClient,
  TaskHubGrpcWorker,
  type TaskHubGrpcClientOptions,
  type TaskHubGrpcWorkerOptions,
} from "@microsoft/durabletask-js";

/** Duro's default gRPC address. */
export const DEFAULT_ADDRESS = "localhost:4001";

function address(a?: string): string {
  return a ?? process.env.DURO_ADDRESS ?? DEFAULT_ADDRESS;
}

/** A `TaskHubGrpcClient` for Duro (address default `$DURO_ADDRESS` or `localhost:4001`). */
export function connectClient(addr?: string, options: Omit<TaskHubGrpcClientOptions, "hostAddress"> = {}): TaskHubGrpcClient {
  return new TaskHubGrpcClient({ ...options, hostAddress: address(addr) });
}

/**
 * A `TaskHubGrpcWorker` for Duro. Pass `workItemFilters: "auto"` to receive only what this
 * worker registered (useful with several workers, in several languages, on one Duro).
 */
export function newWorker(addr?: string, options: Omit<TaskHubGrpcWorkerOptions, "hostAddress"> = {}): TaskHubGrpcWorker {
  return new TaskHubGrpcWorker({ ...options, hostAddress: address(addr) });
}

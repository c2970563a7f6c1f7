// The TypeScript side of the polyglot sample: a worker that registers one activity,
// `greet_ts`, and asks Duro (work-item filters) for that activity only.
import { ActivityContext, NoOpLogger, TaskHubGrpcWorker } from "@microsoft/durabletask-js";

const address = process.env.DURO_ADDRESS ?? "localhost:4001";

function greetTs(_ctx: ActivityContext, input: { name: string }): { greeting: string; runtime: string } {
  return { greeting: `Hello, ${input.name}, from TypeScript!`, runtime: `node ${process.version}` };
}

const worker = new TaskHubGrpcWorker({ hostAddress: address, workItemFilters: "auto", logger: new NoOpLogger() });
worker.addNamedActivity("greet_ts", greetTs);
await worker.start();
console.log(`ts-worker: listening on ${address} for activity greet_ts`);

const stop = async () => {
  await worker.stop();
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);

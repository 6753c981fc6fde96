// Enqueue N no-op jobs into Graphile Worker, drain them with one worker process, print one JSON line.
//
//   node graphile_drain.js --dsn postgresql://root@127.0.0.1:5432/peer_graphile --jobs 20500 \
//     [--concurrency 24] [--local-queue 500] [--batch-delay 0] [--enqueue-chunk 1000]
//
// Run from a directory whose node_modules holds graphile-worker (run.sh sets NODE_PATH).
//
// Enqueue rate: wall-clock time of the addJobs() calls (one call per chunk).
// Drain rate: from the database clock read just before run() to the database clock at the first poll that finds
// the jobs table empty. Graphile Worker deletes a job when it completes and keeps no completion timestamp, so
// the end is observed by polling (every --poll-ms, default 20 ms) over a separate connection.

// Per-job "Completed task" info lines would dominate a no-op workload; this is the package's own switch.
process.env.NO_LOG_SUCCESS ??= "1";

const { run, makeWorkerUtils, Logger } = require("graphile-worker");
const { parseArgs } = require("node:util");

const { values: opts } = parseArgs({
  options: {
    dsn: { type: "string" },
    jobs: { type: "string", default: "20500" },
    concurrency: { type: "string", default: "24" },
    "local-queue": { type: "string", default: "500" },
    "batch-delay": { type: "string", default: "0" },
    "enqueue-chunk": { type: "string", default: "1000" },
    "poll-ms": { type: "string", default: "20" },
  },
});
const dsn = opts.dsn;
const jobs = Number(opts.jobs);
const concurrency = Number(opts.concurrency);
const localQueueSize = Number(opts["local-queue"]);
const batchDelay = Number(opts["batch-delay"]);
const chunk = Number(opts["enqueue-chunk"]);
const pollMs = Number(opts["poll-ms"]);
if (!dsn) throw new Error("--dsn is required");

// Only warnings and errors reach stderr; stdout carries the JSON result alone.
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") console.error(`[graphile-worker ${level}] ${message}`);
});

const TASK = "noop";

async function scalar(utils, sql) {
  return utils.withPgClient(async (client) => (await client.query(sql)).rows[0].v);
}

async function main() {
  const utils = await makeWorkerUtils({ connectionString: dsn, logger });
  try {
    await utils.migrate();

    const specs = Array.from({ length: chunk }, () => ({ identifier: TASK, payload: {} }));
    const started = process.hrtime.bigint();
    for (let offset = 0; offset < jobs; offset += chunk) {
      await utils.addJobs(specs.slice(0, Math.min(chunk, jobs - offset)));
    }
    const enqueueS = Number(process.hrtime.bigint() - started) / 1e9;

    const countSql = "SELECT count(*)::int AS v FROM graphile_worker.jobs";
    const queued = await scalar(utils, countSql);
    if (queued !== jobs) throw new Error(`expected ${jobs} queued jobs, found ${queued}`);

    const t0 = await scalar(utils, "SELECT extract(epoch FROM clock_timestamp())::float8 AS v");
    const runner = await run({
      connectionString: dsn,
      concurrency,
      maxPoolSize: concurrency + 2,
      noHandleSignals: true,
      logger,
      taskList: { [TASK]: async () => {} },
      preset: {
        worker: {
          // Batched fetch into a local queue, batched completion and failure statements.
          localQueue: { size: localQueueSize },
          completeJobBatchDelay: batchDelay,
          failJobBatchDelay: batchDelay,
        },
      },
    });

    let t1;
    for (;;) {
      const row = await utils.withPgClient(
        async (client) =>
          (
            await client.query(
              "SELECT count(*)::int AS n, extract(epoch FROM clock_timestamp())::float8 AS t FROM graphile_worker.jobs",
            )
          ).rows[0],
      );
      if (row.n === 0) {
        t1 = row.t;
        break;
      }
      await new Promise((resolve) => setTimeout(resolve, pollMs));
    }
    await runner.stop();

    const seconds = t1 - t0;
    const result = {
      peer: "graphile-worker",
      batch: localQueueSize, // jobs fetched and locked per query (localQueue.size)
      concurrency,
      batch_delay_ms: batchDelay,
      jobs,
      enqueue_per_s: Math.round((jobs / enqueueS) * 10) / 10,
      drain_per_s: Math.round((jobs / seconds) * 10) / 10,
      seconds: Math.round(seconds * 1000) / 1000,
    };
    console.log(JSON.stringify(result));
  } finally {
    await utils.release();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});

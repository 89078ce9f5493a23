#!/usr/bin/env node
// Runs the pods of a `helm template` render as local processes of the real deltaserve binary, to
// prove what no schema can: that every container's command line is accepted, that the stage and
// expert entry scripts pick their share of the topology ConfigMap by ordinal, that the processes
// find each other through the ConfigMap's addresses, that the probes' gRPC service names answer
// SERVING, that every metrics port serves /metrics, that a generation and a session turn work,
// and that the router's preStop drain and SIGTERM end every process within its grace period.
//
// Each pod's addresses are rewritten to 127.0.0.1 with free ports (pods of one StatefulSet share
// a port in Kubernetes, not on one host), /etc/deltaserve/topology and the store's --data-dir to
// a temporary folder; nothing else of the command lines changes. Needs /bin/sh, and a render whose model is random:.
// Usage: node tests/deploy/run_rendered_cluster.mjs DELTASERVE_BINARY RENDERED.yaml
import { createRequire } from "node:module";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const toolsDir = process.env.DEPLOY_TOOLS || path.join(repoRoot, ".deploy-tools");
if (!fs.existsSync(path.join(toolsDir, "node_modules", "yaml", "package.json"))) {
  console.error(`run_rendered_cluster: yaml is not installed in ${toolsDir}; run tools/deploy/install_tools.sh`);
  process.exit(2);
}
const YAML = createRequire(path.join(toolsDir, "package.json"))("yaml");
const COMPONENT = "app.kubernetes.io/component";
const TOPOLOGY_MOUNT = "/etc/deltaserve/topology";
const START_TIMEOUT_MS = 240_000;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// A port for a pod to listen on, never the same one twice in a run. Picked below the kernel's
// ephemeral range where it has room there: listen(0) takes a port from that range, which the
// outgoing connections of the pods already running also draw from, so one of them could take
// the port before its pod binds it (seen in CI as "address already in use").
const portsHandedOut = new Set();
function ephemeralLow() {
  try {
    return Number(fs.readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/)[0]);
  } catch {
    return 0;
  }
}
function canListen(port) {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once("error", () => resolve(0));
    server.listen(port, "127.0.0.1", () => {
      const bound = server.address().port;
      server.close(() => resolve(bound));
    });
  });
}
async function freePort() {
  const low = ephemeralLow();
  for (let attempt = 0; attempt < 500; ++attempt) {
    const wanted = low > 12_000 ? low - 10_000 + Math.floor(Math.random() * 9_000) : 0;
    if (portsHandedOut.has(wanted)) continue;
    const port = await canListen(wanted);
    if (port !== 0 && !portsHandedOut.has(port)) {
      portsHandedOut.add(port);
      return port;
    }
  }
  throw new Error("no free local port found");
}

function httpGet(port, urlPath) {
  return new Promise((resolve) => {
    const request = http.get({ host: "127.0.0.1", port, path: urlPath, timeout: 5000 }, (response) => {
      let body = "";
      response.on("data", (chunk) => { body += chunk; });
      response.on("end", () => resolve({ status: response.statusCode, body }));
    });
    request.on("error", (e) => resolve({ status: 0, body: e.message }));
    request.on("timeout", () => request.destroy(new Error("timeout")));
  });
}

function argPort(args, flag) {
  const arg = args.find((a) => typeof a === "string" && a.startsWith(`${flag}=`));
  return arg ? Number(arg.slice(arg.lastIndexOf(":") + 1)) : undefined;
}

async function main([binary, renderFile]) {
  if (!binary || !renderFile) {
    console.error("usage: run_rendered_cluster.mjs DELTASERVE_BINARY RENDERED.yaml");
    return 2;
  }
  binary = path.resolve(binary);
  const objects = YAML.parseAllDocuments(fs.readFileSync(renderFile, "utf8")).map((d) => d.toJS()).filter(Boolean);
  const topology = objects.find((o) => o.kind === "ConfigMap" && o.metadata.name.endsWith("-topology"));
  if (!topology.data.model.startsWith("random:")) {
    console.error(`run_rendered_cluster: model ${topology.data.model} is not random:; render with a random: model`);
    return 2;
  }
  const workloads = objects.filter((o) => (o.kind === "Deployment" || o.kind === "StatefulSet") &&
                                          !o.spec.template.spec.containers[0].image.includes("envoyproxy"));
  // One entry per pod: its name, container, and the local ports that stand in for its own.
  const pods = [];
  for (const w of workloads) {
    const replicas = w.kind === "StatefulSet" ? w.spec.replicas : 1;
    for (let i = 0; i < replicas; ++i) {
      const container = w.spec.template.spec.containers[0];
      pods.push({
        name: w.kind === "StatefulSet" ? `${w.metadata.name}-${i}` : `${w.metadata.name}-0`,
        component: w.spec.template.metadata.labels[COMPONENT],
        workload: w,
        container,
        grpcPort: await freePort(),
        metricsPort: await freePort(),
      });
    }
  }
  const podByName = new Map(pods.map((p) => [p.name, p]));
  // host:port in the ConfigMap -> 127.0.0.1:<the pod's local port>.
  const rewriteAddresses = (text) => text.replace(/([a-z0-9-]+)\.[a-z0-9.-]+:(\d+)/g, (match, pod) => {
    const target = podByName.get(pod);
    if (!target) throw new Error(`address ${match} names no rendered pod`);
    return `127.0.0.1:${target.grpcPort}`;
  });
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "deltaserve-chart-"));
  const topologyDir = path.join(work, "topology");
  fs.mkdirSync(topologyDir);
  const data = {};
  for (const [key, value] of Object.entries(topology.data)) {
    data[key] = rewriteAddresses(value);
    fs.writeFileSync(path.join(topologyDir, key), data[key]);
  }

  const children = [];
  let failures = 0;
  const begin = Date.now();
  const check = (ok, what) => {
    console.log(`${ok ? "ok" : "FAILED"}: ${what} [${((Date.now() - begin) / 1000).toFixed(1)} s]`);
    if (!ok) ++failures;
  };
  const stopAll = async () => {
    for (const child of children) if (child.exitCode === null) child.kill("SIGKILL");
    await sleep(200);
  };
  try {
    for (const pod of pods) {
      const env = { PATH: process.env.PATH, HOME: work, POD_NAME: pod.name };
      for (const e of pod.container.env ?? []) {
        if (e.value !== undefined) env[e.name] = String(e.value);
        else if (e.valueFrom?.configMapKeyRef) env[e.name] = data[e.valueFrom.configMapKeyRef.key];
        else if (e.valueFrom?.fieldRef?.fieldPath === "metadata.name") env[e.name] = pod.name;
      }
      const localize = (arg) => arg
        .replace(/^--listen=.*$/, `--listen=127.0.0.1:${pod.grpcPort}`)
        .replace(/^--metrics-listen=.*$/, `--metrics-listen=127.0.0.1:${pod.metricsPort}`)
        .replace(/^--data-dir=.*$/, `--data-dir=${path.join(work, pod.name, "data")}`)
        .replaceAll(TOPOLOGY_MOUNT, topologyDir)
        .replaceAll("'deltaserve'", `'${binary}'`)
        .replace(/\$\(([A-Z_]+)\)/g, (m, name) => env[name] ?? m);
      const command = pod.container.command.map(localize).map((c) => (c === "deltaserve" ? binary : c));
      const args = (pod.container.args ?? []).map(localize);
      const log = fs.openSync(path.join(work, `${pod.name}.log`), "w");
      const child = spawn(command[0], [...command.slice(1), ...args], { env, stdio: ["ignore", log, log] });
      child.pod = pod;
      children.push(child);
    }
    console.log(`started ${pods.length} processes (logs in ${work})`);

    // Every pod's startup probe: its own gRPC service name must answer SERVING.
    const deadline = Date.now() + START_TIMEOUT_MS;
    for (const pod of pods) {
      const service = pod.container.startupProbe?.grpc?.service ?? "";
      let serving = false;
      while (!serving && Date.now() < deadline) {
        const exited = children.find((c) => c.exitCode !== null);
        if (exited) {
          check(false, `${exited.pod.name} exited with ${exited.exitCode} while starting`);
          console.error(fs.readFileSync(path.join(work, `${exited.pod.name}.log`), "utf8").slice(-2000));
          return 1;
        }
        const r = spawnSync(binary, ["client", "health", `--server=127.0.0.1:${pod.grpcPort}`, `--service=${service}`,
                                     "--timeout-ms=2000"], { encoding: "utf8" });
        serving = r.status === 0 && r.stdout.includes("SERVING");
        if (!serving) await sleep(500);
      }
      check(serving, `${pod.name} answers SERVING for ${service || "the server"}`);
    }
    if (failures) return 1;
    for (const pod of pods) {
      const metrics = await httpGet(pod.metricsPort, "/metrics");
      check(metrics.status === 200 && metrics.body.includes("deltaserve_build_info"), `${pod.name} serves /metrics`);
    }

    const router = pods.find((p) => p.component === "router");
    const generate = (extra) => spawnSync(binary, ["client", "generate", `--server=127.0.0.1:${router.grpcPort}`,
                                                   "--max-new-tokens=4", "--temperature=0", "--timeout-ms=120000", ...extra],
                                          { encoding: "utf8" });
    const first = generate(["--tokens=1,2,3", "--new-session", "--session=chart-smoke"]);
    check(first.status === 0 && /"tokens"/.test(first.stdout), `a generation through the router (${(first.stdout || first.stderr).trim().slice(0, 160)})`);
    const second = generate(["--tokens=4,5", "--session=chart-smoke"]);
    check(second.status === 0 && /"tokens"/.test(second.stdout), `the session's next turn (${(second.stdout || second.stderr).trim().slice(0, 160)})`);

    // Peak memory of each process, beside its memory request (a sizing hint; informational).
    for (const child of children) {
      try {
        const status = fs.readFileSync(`/proc/${child.pid}/status`, "utf8");
        const peak = /VmHWM:\s+(\d+) kB/.exec(status)?.[1];
        const request = child.pod.container.resources?.requests?.memory;
        console.log(`info: ${child.pod.name} peak resident memory ${Math.round(Number(peak) / 1024)} MiB (requests ${request})`);
      } catch {
        // /proc is Linux-only; the figure is a hint.
      }
    }

    // Termination as the kubelet does it: the router's preStop hook, then SIGTERM everywhere.
    const preStop = router.container.lifecycle?.preStop?.exec?.command;
    check(Boolean(preStop), "the router has a preStop hook");
    if (preStop) {
      // The address moves to the local port; the admission grace (meant for Envoy's health
      // checks, which are not here) shrinks to keep the run short.
      const argv = preStop.map((a) => a.replace(/^--server=127\.0\.0\.1:\d+$/, `--server=127.0.0.1:${router.grpcPort}`))
                          .map((a) => a.replace(/^--admit-grace-ms=\d+$/, "--admit-grace-ms=500"))
                          .map((a) => (a === "deltaserve" ? binary : a));
      const grace = router.workload.spec.template.spec.terminationGracePeriodSeconds;
      const started = Date.now();
      const drained = spawnSync(argv[0], argv.slice(1), { encoding: "utf8", timeout: grace * 1000 });
      check(drained.status === 0, `the router's preStop drain (${(drained.stdout || drained.stderr || "").trim().slice(0, 160)})`);
      check(Date.now() - started < grace * 1000, `the drain ends within the grace period (${grace} s)`);
      const health = spawnSync(binary, ["client", "health", `--server=127.0.0.1:${router.grpcPort}`,
                                        "--service=deltaserve.v1.Inference", "--timeout-ms=2000"], { encoding: "utf8" });
      check(health.status !== 0, "a drained router is no longer ready");
    }
    const exits = children.map((child) => new Promise((resolve) => {
      if (child.exitCode !== null) resolve(child.exitCode);
      else child.once("exit", (code, signal) => resolve(code ?? signal));
    }));
    for (const child of children) child.kill("SIGTERM");
    const graceMs = Math.max(...pods.map((p) => p.workload.spec.template.spec.terminationGracePeriodSeconds)) * 1000;
    const codes = await Promise.race([Promise.all(exits), sleep(graceMs).then(() => null)]);
    check(codes !== null && codes.every((c) => c === 0), `every process exits cleanly on SIGTERM (${codes})`);
  } finally {
    await stopAll();
  }
  console.log(`${failures === 0 ? "run_rendered_cluster: all checks passed" : `run_rendered_cluster: ${failures} failed`}`);
  if (failures === 0) fs.rmSync(work, { recursive: true, force: true });
  return failures ? 1 : 0;
}

// Exit at once: the grace-period timer of the SIGTERM race would otherwise keep node alive.
process.exit(await main(process.argv.slice(2)));

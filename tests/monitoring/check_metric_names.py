#!/usr/bin/env python3
"""Checks that every metric the monitoring files name is one deltaserve exports.

Starts real deltaserve processes on 127.0.0.1 with port 0 (a split cluster of the tiny random
model: session store, expert worker, stage worker, router; and a single-process `serve`), runs
two turns of one session through each router so that the request series exist, scrapes every
/metrics endpoint and takes the union of the series names they export (a counter family gives
its `_total` series, a histogram family `_bucket`, `_sum` and `_count`, a gauge its name). Then
it reads every metric named in

  - the expressions of helm/deltaserve/files/prometheus-rules.yaml,
  - the input series and expressions of tests/monitoring/rules_test.yaml,
  - the panel queries and variable queries of helm/deltaserve/files/grafana-dashboard.json,

and fails when one is not exported (recording rules defined in the rules file and the series
Prometheus makes itself, such as `up` and `ALERTS`, are allowed). It also checks that label
matchers name labels the series carry (or the target labels job, instance, namespace, pod), that
`le` matchers name real bucket edges and other label values real values, the dashboard's
structure (data source variable, unique panel ids, defined variables), and, with promtool, that
every dashboard query parses.

Python 3 with PyYAML (Debian: python3-yaml), which reads the rule files with line numbers.

  check_metric_names.py --deltaserve build/cli/deltaserve [--promtool /usr/bin/promtool]
"""

import argparse
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
RULES = os.path.join(REPO, "helm", "deltaserve", "files", "prometheus-rules.yaml")
RULE_TESTS = os.path.join(REPO, "tests", "monitoring", "rules_test.yaml")
DASHBOARD = os.path.join(REPO, "helm", "deltaserve", "files", "grafana-dashboard.json")

# Series Prometheus writes itself for every target or rule, not scraped from deltaserve.
PROMETHEUS_SERIES = {
    "up", "scrape_duration_seconds", "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling", "scrape_series_added", "ALERTS", "ALERTS_FOR_STATE",
}
# Labels the scrape configuration attaches (docs/monitoring.md); matchers may use them on
# any series.
TARGET_LABELS = {"job", "instance", "namespace", "pod"}
# Label values the code emits that a short run does not produce: the outcomes of
# EngineCore::Retire and Submit (services/router/engine_core.cc).
KNOWN_LABEL_VALUES = {
    ("deltaserve_requests_total", "outcome"):
        {"stop", "length", "cancelled", "deadline", "error", "rejected", "draining"},
}

# The tiny preset (model/config/presets.cc): 4 layers, 8 routed experts.
MODEL = "random:tiny"
LAYERS = "0-3"
EXPERTS = "0-7"

AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
                "bottomk", "topk", "quantile"}
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"bool", "and", "or", "unless", "offset", "inf", "nan", "atan2"}
IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
NUMBER = re.compile(r"0x[0-9a-fA-F]+|[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?[a-zA-Z0-9]*")
LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
MATCH_OP = re.compile(r"=~|!~|!=|=")


class CheckError(Exception):
    pass


# ------------------------------------------------------------------------------------- YAML
def read_yaml_values(path, keys):
    """Returns [(item, key, value, where)] for every scalar `key:` in `keys`; `item` numbers the
    mapping that holds it, so an alert's `alert:` and `expr:` share one. `where` is path:line."""
    with open(path, encoding="utf-8") as stream:
        try:
            root = yaml.compose(stream)
        except yaml.YAMLError as error:
            raise CheckError(f"{path}: {error}") from error
    out = []
    mappings = [0]

    def walk(node):
        if isinstance(node, yaml.MappingNode):
            mappings[0] += 1
            item = mappings[0]
            for key_node, value_node in node.value:
                if key_node.value in keys and isinstance(value_node, yaml.ScalarNode):
                    out.append((item, key_node.value, value_node.value.strip(),
                                f"{path}:{key_node.start_mark.line + 1}"))
                walk(value_node)
        elif isinstance(node, yaml.SequenceNode):
            for child in node.value:
                walk(child)

    walk(root)
    return out


def read_rules(path):
    """Returns ([(where, rule name, expr)], {recording rule names})."""
    items = {}
    for item, key, value, where in read_yaml_values(path, ("alert", "record", "expr")):
        items.setdefault(item, []).append((key, value, where))
    rules, records = [], set()
    for entries in items.values():
        names = [(k, v) for k, v, _ in entries if k in ("alert", "record")]
        exprs = [(v, w) for k, v, w in entries if k == "expr"]
        if len(names) != 1 or len(exprs) != 1:
            raise CheckError(f"{entries[0][2]}: cannot pair alert/record with one expr "
                             f"(found {len(names)} names, {len(exprs)} exprs)")
        kind, name = names[0]
        if kind == "record":
            records.add(name)
        rules.append((f"{exprs[0][1]} ({kind} {name})", name, exprs[0][0]))
    if not rules:
        raise CheckError(f"{path}: no rules found")
    return rules, records


# ------------------------------------------------------------------------------------ PromQL
def _skip_string(s, i):
    quote = s[i]
    i += 1
    while i < len(s) and s[i] != quote:
        i += 2 if s[i] == "\\" and quote != "`" else 1
    if i >= len(s):
        raise CheckError(f"unterminated string in: {s}")
    return i + 1


def _matching(s, i, open_char, close_char):
    depth = 0
    while i < len(s):
        c = s[i]
        if c in "\"'`":
            i = _skip_string(s, i)
            continue
        if c == open_char:
            depth += 1
        elif c == close_char:
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise CheckError(f"unbalanced {open_char}{close_char} in: {s}")


def _matchers(body, expr):
    out = []
    i = 0
    while True:
        while i < len(body) and body[i] in " \t\n,":
            i += 1
        if i >= len(body):
            return out
        m = LABEL.match(body, i)
        if body[i] == '"':  # a quoted label name (UTF-8 names) is not ours
            raise CheckError(f"quoted label name in: {expr}")
        if not m:
            raise CheckError(f"cannot read label matchers {{{body}}} in: {expr}")
        label = m.group(0)
        i = m.end()
        while i < len(body) and body[i] in " \t\n":
            i += 1
        op = MATCH_OP.match(body, i)
        if not op:
            raise CheckError(f"no match operator after {label} in: {expr}")
        i = op.end()
        while i < len(body) and body[i] in " \t\n":
            i += 1
        if i >= len(body) or body[i] not in "\"'`":
            raise CheckError(f"no quoted value for {label} in: {expr}")
        end = _skip_string(body, i)
        raw = body[i:end]
        value = json.loads(raw) if raw[0] == '"' else raw[1:-1]
        out.append((label, op.group(0), value))
        i = end


def selectors(expr):
    """Yields (metric name, [(label, op, value)]) for every vector selector in `expr`."""
    s, i, n = expr, 0, len(expr)
    while i < n:
        c = s[i]
        if c == "#":
            while i < n and s[i] != "\n":
                i += 1
        elif c in "\"'`":
            i = _skip_string(s, i)
        elif c == "[":
            i = _matching(s, i, "[", "]") + 1
        elif c == "{":
            end = _matching(s, i, "{", "}")
            matchers = _matchers(s[i + 1:end], expr)
            names = [v for label, op, v in matchers if label == "__name__" and op == "="]
            if not names:
                raise CheckError(f"selector without a metric name in: {expr}")
            yield names[0], matchers
            i = end + 1
        elif c.isalpha() or c in "_:":
            m = IDENT.match(s, i)
            ident, i = m.group(0), m.end()
            k = i
            while k < n and s[k] in " \t\n":
                k += 1
            nxt = s[k] if k < n else ""
            low = ident.lower()
            if low in LABEL_LIST_KEYWORDS:
                if nxt == "(":
                    i = _matching(s, k, "(", ")") + 1
                continue
            if nxt == "(" or low in AGGREGATIONS or low in KEYWORDS:
                continue
            if nxt == "{":
                end = _matching(s, k, "{", "}")
                yield ident, _matchers(s[k + 1:end], expr)
                i = end + 1
            else:
                yield ident, []
        elif c.isdigit() or c == ".":
            m = NUMBER.match(s, i)
            i = m.end() if m and m.end() > i else i + 1
        else:
            i += 1


GRAFANA_INTERVALS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
GRAFANA_VAR = re.compile(r"\$\{(\w+)(?::[\w-]+)?\}|\$(\w+)|\[\[(\w+)(?::[\w-]+)?\]\]")


def grafana_vars(expr):
    return {a or b or c for a, b, c in GRAFANA_VAR.findall(expr)}


def grafana_to_promql(expr):
    """Replaces Grafana's variables by values PromQL accepts (intervals, `.*` for the rest)."""
    def value(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name in GRAFANA_INTERVALS:
            return GRAFANA_INTERVALS[name]
        if name.startswith("__"):
            return "60"
        return ".*"
    return GRAFANA_VAR.sub(value, expr)


# -------------------------------------------------------------------------------- dashboard
def dashboard_panels(panels):
    for panel in panels:
        yield panel
        yield from dashboard_panels(panel.get("panels", []))


def variable_selector(query):
    """The series selector or expression a Grafana Prometheus variable query reads, or None."""
    query = query.strip()
    m = re.match(r"^label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)$", query, re.S)
    if m:
        return m.group(1), m.group(2)
    if re.match(r"^(label_values|label_names|metrics)\(", query):
        return None, None
    m = re.match(r"^query_result\((.*)\)$", query, re.S)
    if m:
        return m.group(1), None
    return query, None


def read_dashboard(path, problems):
    """Returns [(where, expr, promql)] and checks the dashboard's structure."""
    with open(path, encoding="utf-8") as f:
        dash = json.load(f)
    if not dash.get("title") or not dash.get("uid"):
        problems.append(f"{path}: dashboard needs a title and a uid")
    if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
        problems.append(f"{path}: schemaVersion {dash.get('schemaVersion')} is older than 36")
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append(f"{path}: needs a `datasource` variable of type datasource, query "
                        "prometheus")
    ds_refs = ("${datasource}", "$datasource")
    defined = set(variables) | set(GRAFANA_INTERVALS) | {"__range_s", "__range_ms"}
    queries = []

    def add(where, expr):
        used = grafana_vars(expr) - defined
        if used:
            problems.append(f"{where}: uses undefined variables {sorted(used)}")
        queries.append((where, expr, grafana_to_promql(expr)))

    for name, var in variables.items():
        if var.get("type") != "query":
            continue
        if (var.get("datasource") or {}).get("uid") not in ds_refs:
            problems.append(f"{path}: variable {name} must use the datasource variable")
        query = var.get("query")
        query = query.get("query", "") if isinstance(query, dict) else (query or "")
        selector, label = variable_selector(query)
        if selector:
            add(f"variable {name}", selector)
        if label:
            for metric, _ in selectors(grafana_to_promql(selector)):
                queries.append((f"variable {name} label", "", f'{metric}{{{label}!=""}}'))
    ids = set()
    for panel in dashboard_panels(dash.get("panels", [])):
        title = f"panel {panel.get('id')} \"{panel.get('title')}\""
        if panel.get("id") in ids or not isinstance(panel.get("id"), int):
            problems.append(f"{title}: panel ids must be unique integers")
        ids.add(panel.get("id"))
        pos = panel.get("gridPos", {})
        if not all(isinstance(pos.get(k), int) for k in "hwxy") or pos["x"] + pos["w"] > 24:
            problems.append(f"{title}: gridPos {pos} is not inside the 24-column grid")
        if panel.get("type") == "row":
            continue
        if (panel.get("datasource") or {}).get("uid") not in ds_refs:
            problems.append(f"{title}: datasource must be the ${{datasource}} variable")
        targets = panel.get("targets", [])
        if not targets:
            problems.append(f"{title}: has no queries")
        refs = set()
        for target in targets:
            ref = target.get("refId")
            if not ref or ref in refs:
                problems.append(f"{title}: query refIds must be present and unique")
            refs.add(ref)
            if (target.get("datasource") or {}).get("uid") not in ds_refs:
                problems.append(f"{title} query {ref}: datasource must be ${{datasource}}")
            if not (target.get("expr") or "").strip():
                problems.append(f"{title} query {ref}: empty expr")
                continue
            add(f"{title} query {ref}", target["expr"])
    return queries


# ------------------------------------------------------------------------------- processes
def _die_with_parent():
    # PR_SET_PDEATHSIG: a child outlives no crash or kill of this script.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)


class Processes:
    def __init__(self, binary, workdir, timeout_s):
        self.binary, self.workdir, self.timeout_s = binary, workdir, timeout_s
        self.procs = []

    def start(self, name, args):
        """Starts `deltaserve args...`; returns its JSON ready line."""
        out_path = os.path.join(self.workdir, name + ".out")
        err_path = os.path.join(self.workdir, name + ".log")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen([self.binary] + args, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=err, preexec_fn=_die_with_parent)
        self.procs.append((name, proc, err_path))
        deadline = time.monotonic() + self.timeout_s
        while True:
            with open(out_path, encoding="utf-8", errors="replace") as f:
                text = f.read()
            if "\n" in text:
                return json.loads(text.split("\n", 1)[0])
            if proc.poll() is not None:
                raise CheckError(f"{name} exited with {proc.returncode} before serving:\n"
                                 + self.log_tail(err_path))
            if time.monotonic() > deadline:
                raise CheckError(f"{name} did not report serving in {self.timeout_s} s:\n"
                                 + self.log_tail(err_path))
            time.sleep(0.05)

    def run(self, name, args):
        result = subprocess.run([self.binary] + args, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=self.timeout_s)
        if result.returncode != 0:
            raise CheckError(f"{name} failed ({result.returncode}): {result.stdout}{result.stderr}")
        return result.stdout

    @staticmethod
    def log_tail(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-20:])

    def stop(self):
        for _, proc, _ in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for _, proc, _ in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode("utf-8")


def scrape_cluster(binary, timeout_s):
    """Returns {role: exposition text} from a split cluster and a `serve`."""
    workdir = tempfile.mkdtemp(prefix="deltaserve-metric-names-")
    procs = Processes(binary, workdir, timeout_s)
    common = ["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--drain-seconds", "0",
              "--log-level", "warn"]
    engine = ["--model", MODEL, "--threads", "1"]
    try:
        ready = {}
        # A session limit, so the store exports every series it can (limits only when set).
        ready["session_store"] = procs.start("session-store", ["session-store", "--data-dir",
                                             os.path.join(workdir, "store"),
                                             "--max-sessions", "1000"] + common)
        store = ready["session_store"]["listen"]
        ready["expert_worker"] = procs.start("expert", ["worker", "--role", "experts", "--experts",
                                             EXPERTS] + engine + common)
        ready["stage_worker"] = procs.start("stage", [
            "worker", "--role", "stage", "--layers", LAYERS, "--expert-workers",
            ready["expert_worker"]["listen"], "--session-store", store] + engine + common)
        ready["router"] = procs.start("router", [
            "router", "--model", MODEL, "--first-stage", ready["stage_worker"]["listen"],
            "--session-store", store] + common)
        ready["serve"] = procs.start("serve", ["serve", "--store-dir",
                                     os.path.join(workdir, "serve-store")] + engine + common)
        for role in ("router", "serve"):
            server = ready[role]["listen"]
            procs.run(f"first turn on {role}", [
                "client", "generate", "--server", server, "--tokens", "1,2,3", "--new-session",
                "--session", "metric-names", "--max-new-tokens", "2"])
            procs.run(f"second turn on {role}", [
                "client", "generate", "--server", server, "--tokens", "4,5", "--session",
                "metric-names", "--max-new-tokens", "2"])
        return {role: scrape(info["metrics_port"]) for role, info in ready.items()}
    finally:
        procs.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def parse_exposition(text):
    """Returns ({family: type}, {sample name: {label: {values}}})."""
    families, samples = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            parts = line.split()
            families[parts[2]] = parts[3]
            continue
        if not line.strip() or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s", line)
        if not m:
            raise CheckError(f"cannot read exposition line: {line}")
        labels = samples.setdefault(m.group(1), {})
        for label, value in re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"',
                                       m.group(2) or ""):
            labels.setdefault(label, set()).add(value)
    return families, samples


def exported_series(families):
    """{series name: (family, type)}: the names a query can select."""
    out = {}
    for family, kind in families.items():
        if kind == "counter":
            out[family if family.endswith("_total") else family + "_total"] = (family, kind)
        elif kind == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                out[family + suffix] = (family, kind)
        elif kind == "summary":
            for suffix in ("", "_sum", "_count"):
                out[family + suffix] = (family, kind)
        else:
            out[family] = (family, kind)
    return out


def hint(name, series):
    for suffix in ("_bucket", "_sum", "_count", "_total"):
        if name.endswith(suffix) and name[:-len(suffix)] in {f for f, _ in series.values()}:
            family = name[:-len(suffix)]
            kinds = {k for f, k in series.values() if f == family}
            return f" ({family} is a {'/'.join(sorted(kinds))}: no {suffix} series)"
    for family, kind in {v for v in series.values()}:
        if family == name or family == name + "_total":
            names = sorted(s for s, (f, _) in series.items() if f == family)
            return f" ({family} is a {kind}: select {', '.join(names)})"
    return ""


# ------------------------------------------------------------------------------------ check
def check_uses(uses, series, sample_labels, records, problems):
    """uses: [(where, promql)]. Checks names, label names and label values."""
    used = set()
    for where, promql in uses:
        try:
            found = list(selectors(promql))
        except CheckError as e:
            problems.append(f"{where}: {e}")
            continue
        for name, matchers in found:
            used.add(name)
            if name in records or name in PROMETHEUS_SERIES:
                continue
            if name not in series:
                problems.append(f"{where}: metric {name} is not exported by deltaserve"
                                + hint(name, series))
                continue
            labels = sample_labels.get(name)
            if labels is None:
                problems.append(f"{where}: {name} had no samples in the scrape; cannot check "
                                "its labels")
                continue
            for label, op, value in matchers:
                if label in TARGET_LABELS or label == "__name__":
                    continue
                if label not in labels:
                    problems.append(f"{where}: {name} has no label {label!r} (it has "
                                    f"{sorted(labels) or 'none'})")
                    continue
                known = labels[label] | KNOWN_LABEL_VALUES.get((name, label), set())
                if op in ("=", "!=") and value:
                    wanted = [value]
                elif re.fullmatch(r"[A-Za-z0-9_+.\-]+(\|[A-Za-z0-9_+.\-]+)*", value):
                    wanted = value.split("|")
                else:
                    continue
                for v in wanted:
                    if v not in known:
                        problems.append(f"{where}: {name}{{{label}={v!r}}} does not exist "
                                        f"(values: {sorted(known)})")
    return used


def promtool_parse(promtool, queries, problems):
    """Runs every dashboard query through promtool as a recording rule to check its syntax."""
    rules = [{"record": f"dashboard_query_{i}", "expr": promql}
             for i, (_, _, promql) in enumerate(queries)]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
        path = f.name
    try:
        result = subprocess.run([promtool, "check", "rules", path], capture_output=True,
                                text=True)
    finally:
        os.unlink(path)
    if result.returncode != 0:
        out = result.stdout + result.stderr
        for m in re.finditer(r"rule (\d+)", out):
            where = queries[int(m.group(1)) - 1][0] if int(m.group(1)) <= len(queries) else "?"
            problems.append(f"{where}: promtool rejects the query")
        problems.append("promtool check rules on the dashboard's queries failed:\n" + out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deltaserve", required=True, help="path of the deltaserve binary")
    parser.add_argument("--promtool", default=shutil.which("promtool"),
                        help="promtool, to check that dashboard queries parse (default: PATH)")
    parser.add_argument("--rules", default=RULES)
    parser.add_argument("--rule-tests", default=RULE_TESTS)
    parser.add_argument("--dashboard", default=DASHBOARD)
    parser.add_argument("--timeout", type=float, default=120, help="seconds per process start")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so children are stopped on SIGTERM

    problems = []
    rules, records = read_rules(args.rules)
    uses = [(where, expr) for where, _, expr in rules]
    for _, key, value, where in read_yaml_values(args.rule_tests, ("series", "expr")):
        uses.append((f"{where} ({key})", value))
    queries = read_dashboard(args.dashboard, problems)
    uses += [(where, promql) for where, _, promql in queries]
    if args.promtool:
        promtool_parse(args.promtool, [q for q in queries if q[1]], problems)
    else:
        print("note: promtool not found; dashboard queries were not parsed by Prometheus")

    scrapes = scrape_cluster(os.path.abspath(args.deltaserve), args.timeout)
    families, sample_labels = {}, {}
    for role, text in scrapes.items():
        fam, samples = parse_exposition(text)
        for family, kind in fam.items():
            if families.setdefault(family, kind) != kind:
                problems.append(f"{family} is a {families[family]} in one role, a {kind} in "
                                f"{role}")
        for name, labels in samples.items():
            for label, values in labels.items():
                sample_labels.setdefault(name, {}).setdefault(label, set()).update(values)
            sample_labels.setdefault(name, {})
    series = exported_series(families)
    for name in sample_labels:
        if name not in series:
            problems.append(f"scraped series {name} matches no # TYPE family")
    for (name, label), values in KNOWN_LABEL_VALUES.items():
        extra = sample_labels.get(name, {}).get(label, set()) - values
        if extra:
            problems.append(f"{name}{{{label}}} has values {sorted(extra)} missing from "
                            "KNOWN_LABEL_VALUES in this script")

    used = check_uses(uses, series, sample_labels, records, problems)
    used_families = {series[n][0] for n in used if n in series}
    print(f"scraped {len(scrapes)} processes ({', '.join(sorted(scrapes))}): "
          f"{len(families)} families, {len(series)} series names")
    print(f"checked {len(rules)} rules, {len(queries)} dashboard queries and the rule tests: "
          f"{len(used)} names used ({len(used_families)} exported families, "
          f"{len(used & records)} recording rules, {len(used & PROMETHEUS_SERIES)} from "
          "Prometheus)")
    unused = sorted(f for f in families if f not in used_families)
    if unused:
        print("exported but unused: " + ", ".join(unused))
    if problems:
        for problem in problems:
            print("ERROR: " + problem, file=sys.stderr)
        print(f"FAILED: {len(problems)} problems", file=sys.stderr)
        return 1
    print("OK: every metric named in the rules, rule tests and dashboard is exported")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CheckError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        sys.exit(1)

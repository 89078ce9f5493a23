#!/usr/bin/env python3
"""`deltaserve serve` under memory caps (--device-memory-gib), as a client sees it.

Starts the server once without a cap and once per --cap (GiB), sends the same concurrent greedy
requests to each, and prints one JSON line per run: requests that finished with all their tokens
and that failed (the first error), the preemptions by cause and the running cap (from /metrics),
and the wall time. With --split L the server is a router in front of two stage workers (layers
0..L-1 and L.., each capped) instead of `serve`. (Greedy tokens are not compared between runs: on
random weights the batches' different make-up from run to run already moves bf16 logits across
near ties.) Run on a GPU host after `source tools/device/device_env.sh` (the bundle's deltaserve
and its libraries), or with --device cpu anywhere (the CPU backend's cap counts sequence states
and step buffers, not the weights):

    python3 tools/device/serve_memory_cap.py --cap 0.3 --cap 0.4 --requests 32
    python3 tools/device/serve_memory_cap.py --deltaserve build/deltaserve --device cpu --cap 0.002 \
        --requests 8 --prompt-tokens 100 --new-tokens 100
"""
import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

PORT = 50091
METRICS_PORT = 50092
STAGE_PORTS = (50093, 50094)


def wait_serving(deltaserve, server):
    for _ in range(600):
        if server.poll() is not None:
            return False
        health = subprocess.run([deltaserve, "client", "health", "--server", f"127.0.0.1:{PORT}"],
                                capture_output=True)
        if health.returncode == 0:
            return True
        time.sleep(0.2)
    return False


def metrics():
    text = urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10).read().decode()
    found = {}
    for line in text.splitlines():
        match = re.match(r'deltaserve_preemptions_total\{cause="(\w+)"\} (\S+)', line)
        if match:
            found[match.group(1)] = int(float(match.group(2)))
        match = re.match(r"deltaserve_running_cap (\S+)", line)
        if match:
            found["running_cap"] = int(float(match.group(1)))
    return found


def start_stages(args, cap, log):
    """The two stage workers of --split, the later one first; their processes."""
    stages = []
    for layers, listen, nxt in [(f"{args.split}-{args.last_layer}", STAGE_PORTS[1], None),
                                (f"0-{args.split - 1}", STAGE_PORTS[0], STAGE_PORTS[1])]:
        command = [args.deltaserve, "worker", "--role", "stage", "--layers", layers, "--model", args.model,
                   "--device", args.device, "--listen", f"127.0.0.1:{listen}",
                   "--log-level", "warn" if args.log_dir else "error"]
        if nxt:
            command += ["--next", f"127.0.0.1:{nxt}"]
        if cap:
            command += ["--device-memory-gib", str(cap)]
        stages.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, text=True))
    return stages


def run(args, cap):
    # The processes' warnings: kept under --log-dir, else read back only if the server does not start.
    if args.log_dir:
        log = open(f"{args.log_dir}/serve-{cap or 'uncapped'}.log", "w+")
    else:
        log = tempfile.TemporaryFile("w+")
    stages = start_stages(args, cap, log) if args.split else []
    if args.split:
        command = [args.deltaserve, "router", "--model", args.model, "--first-stage", f"127.0.0.1:{STAGE_PORTS[0]}",
                   "--pipeline-steps", str(args.pipeline_steps)]
    else:
        command = [args.deltaserve, "serve", "--model", args.model, "--device", args.device]
        if cap:
            command += ["--device-memory-gib", str(cap)]
    command += ["--listen", f"127.0.0.1:{PORT}", "--metrics-listen", f"127.0.0.1:{METRICS_PORT}",
                "--max-running", str(args.requests), "--log-level", "warn" if args.log_dir else "error"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, text=True)
    try:
        if not wait_serving(args.deltaserve, server):
            log.seek(0)
            return {"cap_gib": cap, "started": False, "stderr": log.read()[-400:]}
        start = time.time()
        clients = []
        for i in range(args.requests):
            prompt = ",".join(str(3 + (i * 131 + j * 7) % 8000) for j in range(args.prompt_tokens))
            clients.append(subprocess.Popen(
                [args.deltaserve, "client", "generate", "--server", f"127.0.0.1:{PORT}", "--tokens", prompt,
                 "--max-new-tokens", str(args.new_tokens), "--temperature", "0", "--ignore-eos",
                 "--timeout-ms", "300000"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        results = []
        for client in clients:
            out, err = client.communicate()
            results.append(json.loads(out)["tokens"] if client.returncode == 0 else err.strip()[-300:])
        summary = {"cap_gib": cap, "started": True, "seconds": round(time.time() - start, 2),
                   "finished": sum(isinstance(r, list) and len(r) == args.new_tokens for r in results),
                   "failed": sum(not isinstance(r, list) for r in results)}
        summary.update(metrics())
        errors = [r for r in results if not isinstance(r, list)]
        if errors:
            summary["first_error"] = errors[0]
        return summary
    finally:
        for process in [server] + stages:
            process.terminate()
        for process in [server] + stages:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deltaserve", default=".device-bundle/deltaserve")
    parser.add_argument("--model", default="random:small")
    parser.add_argument("--device", default="cuda", help="the engine's --device: cuda or cpu")
    parser.add_argument("--cap", type=float, action="append", default=[], help="GiB; repeatable")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=1000)
    parser.add_argument("--new-tokens", type=int, default=1000)
    parser.add_argument("--log-dir", help="keep each server's warnings (preemptions and why) here")
    parser.add_argument("--split", type=int, help="two stage workers, the second from this layer")
    parser.add_argument("--last-layer", type=int, default=7, help="with --split: the model's last layer")
    parser.add_argument("--pipeline-steps", type=int, default=1, help="with --split: the router's steps in flight")
    args = parser.parse_args()

    for cap in [None] + args.cap:
        print(json.dumps(run(args, cap)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

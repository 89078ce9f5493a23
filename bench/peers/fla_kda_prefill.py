"""FLA's chunk_kda on the shapes of bench/cuda/kda_prefill_bench.cc, for a side-by-side run on the
same GPU: gate (A_log, dt_bias, softplus), beta sigmoid and q/k L2 norm inside the kernel, fp32
initial state in and final state out. FLA itself is not part of deltaserve: fetch
fla-org/flash-linear-attention and put its fla/ folder (git-ignored) on PYTHONPATH.
Prints one JSON line per case."""
import json
import sys

import torch
from peer_timing import time_ms
from fla.ops.kda import chunk_kda

VARLEN = [2048, 512, 1536, 64, 3000, 100, 1024, 777, 2500, 1, 900, 1200, 333, 700, 500, 1087]


def run(name, batch, tokens, lengths, heads, dim, iters, gpu):
    dtype = torch.bfloat16
    shape = (batch, tokens, heads, dim)
    q = torch.randn(shape, device="cuda", dtype=dtype)
    k = torch.randn(shape, device="cuda", dtype=dtype)
    v = torch.randn(shape, device="cuda", dtype=dtype)
    g = torch.randn(shape, device="cuda", dtype=dtype)
    beta = torch.randn(batch, tokens, heads, device="cuda", dtype=dtype)
    a_log = torch.randn(heads, device="cuda", dtype=torch.float32)
    dt_bias = torch.randn(heads * dim, device="cuda", dtype=torch.float32)
    num_seqs = len(lengths) if lengths else batch
    state = torch.zeros(num_seqs, heads, dim, dim, device="cuda", dtype=torch.float32)
    cu_seqlens = None
    if lengths:
        offsets = [0]
        for length in lengths:
            offsets.append(offsets[-1] + length)
        cu_seqlens = torch.tensor(offsets, device="cuda", dtype=torch.long)

    def step():
        chunk_kda(q, k, v, g, beta, initial_state=state, output_final_state=True,
                  use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True,
                  use_beta_sigmoid_in_kernel=True, A_log=a_log, dt_bias=dt_bias,
                  cu_seqlens=cu_seqlens)

    ms = time_ms(step, iters, 2)
    total = batch * tokens
    print(json.dumps({"gpu": gpu, "case": "fla_chunk_kda_" + name, "batch": num_seqs,
                      "tokens": total, "heads": heads, "head_dim": dim, "ms": round(ms, 4),
                      "mtok_per_s": round(total / (ms * 1e-3) / 1e6, 3)}))
    sys.stdout.flush()


def main():
    heads, dim, iters = 32, 128, 10
    gpu = torch.cuda.get_device_name()
    run("fixed", 1, 4096, None, heads, dim, iters, gpu)
    for batch in (1, 8):
        for tokens in (4096, 16384, 65536):
            if batch == 1 and tokens == 4096:
                continue
            run("fixed", batch, tokens, None, heads, dim, iters, gpu)
    run("varlen", 1, sum(VARLEN), VARLEN, heads, dim, iters, gpu)


if __name__ == "__main__":
    main()

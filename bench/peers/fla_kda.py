"""FLA's fused_recurrent_kda on the shapes of bench/cuda/kda_decode_bench.cc, for a side-by-side
run on the same GPU: one token per sequence, gate, beta sigmoid and q/k L2 norm inside the
kernel, fp32 state updated in place. FLA itself is not part of deltaserve: fetch
fla-org/flash-linear-attention and put its fla/ folder (git-ignored) on PYTHONPATH.
Prints one JSON line per case."""
import json
import sys

import torch
from peer_timing import time_ms
from fla.ops.kda.fused_recurrent import fused_recurrent_kda_fwd


def main():
    heads, dim, iters = 32, 128, 200
    gpu = torch.cuda.get_device_name()
    for batch in (1, 16, 64, 128, 256):
        dtype = torch.bfloat16
        q = torch.randn(batch, 1, heads, dim, device="cuda", dtype=dtype)
        k = torch.randn(batch, 1, heads, dim, device="cuda", dtype=dtype)
        v = torch.randn(batch, 1, heads, dim, device="cuda", dtype=dtype)
        g = torch.randn(batch, 1, heads, dim, device="cuda", dtype=dtype)
        beta = torch.randn(batch, 1, heads, device="cuda", dtype=dtype)
        a_log = torch.randn(heads, device="cuda", dtype=torch.float32)
        dt_bias = torch.randn(heads * dim, device="cuda", dtype=torch.float32)
        state = torch.zeros(batch, heads, dim, dim, device="cuda", dtype=torch.float32)

        def step():
            fused_recurrent_kda_fwd(q, k, v, g, beta, A_log=a_log, dt_bias=dt_bias,
                                    initial_state=state, inplace_final_state=True,
                                    use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True,
                                    use_beta_sigmoid_in_kernel=True)

        ms = time_ms(step, iters, 5)
        # The same steps captured in a CUDA graph (no Python or launch cost per step).
        steps_per_graph = 20
        step()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(steps_per_graph):
                step()
        graph_ms = time_ms(graph.replay, max(1, iters // steps_per_graph), 5) / steps_per_graph
        state_bytes = 2.0 * state.numel() * 4
        print(json.dumps({"gpu": gpu, "case": "fla_fused_recurrent_kda", "batch": batch,
                          "heads": heads, "head_dim": dim, "ms_launched": round(ms, 4),
                          "ms_in_graph": round(graph_ms, 4),
                          "state_tb_per_s": round(state_bytes / (graph_ms * 1e-3) / 1e12, 3)}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""PyTorch's scaled-dot-product attention kernels on the shapes of
bench/cuda/mla_prefill_bench.cc, for a side-by-side run on the same GPU: causal attention of 32
heads, q/k 192 and v 128 in bf16, FLOPs counted as there (2 · heads · (192 + 128) per causal
pair). Each backend that takes the shapes is timed; FlashAttention's, which wants one head
dimension, also with v zero-padded to 192 (the padding's FLOPs not counted).
Prints one JSON line per case."""
import json
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from peer_timing import time_ms

HEADS, QK, V = 32, 192, 128
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}


def main():
    gpu = torch.cuda.get_device_name()
    cases = [(1, 4096), (1, 16384), (1, 32768), (8, 4096)]
    for batch, length in cases:
        q = torch.randn(batch, HEADS, length, QK, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(batch, HEADS, length, QK, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(batch, HEADS, length, V, device="cuda", dtype=torch.bfloat16)
        v_padded = F.pad(v, (0, QK - V))
        flops = 2.0 * HEADS * (QK + V) * batch * length * (length + 1) / 2
        for name, backend in BACKENDS.items():
            for padded in (False, True):
                if padded and name != "flash":
                    continue
                values = v_padded if padded else v
                try:
                    with sdpa_kernel(backend):
                        run = lambda: F.scaled_dot_product_attention(q, k, values, is_causal=True)
                        ms = time_ms(run, 10, 2)
                except RuntimeError as error:
                    print(json.dumps({"gpu": gpu, "case": "sdpa_mla_prefill", "backend": name,
                                      "batch": batch, "length": length,
                                      "error": str(error).splitlines()[0][:160]}))
                    continue
                print(json.dumps({"gpu": gpu, "case": "sdpa_mla_prefill", "backend": name,
                                  "v_padded": padded, "batch": batch, "length": length,
                                  "ms": round(ms, 4),
                                  "tflops": round(flops / (ms * 1e-3) / 1e12, 1)}))
        sys.stdout.flush()


if __name__ == "__main__":
    main()

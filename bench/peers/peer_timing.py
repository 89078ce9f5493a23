"""Timing shared by the peer scripts: mean milliseconds per call with CUDA events."""
import torch


def time_ms(fn, iters, warmup):
    for _ in range(warmup):
        fn()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / iters

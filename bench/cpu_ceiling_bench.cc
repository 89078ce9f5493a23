// The machine's ceilings for the CPU engine's figures: OpenBLAS sgemm throughput (what prefill
// can reach) and memory copy bandwidth (what bounds decode's weight reads), per thread count.
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <cstring>
#include <thread>
#include <vector>

namespace {

void BM_Sgemm(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  openblas_set_num_threads(static_cast<int>(state.range(1)));
  std::vector<float> a(n * n, 0.5f), b(n * n, 0.25f), c(n * n);
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a.data(), n, b.data(), n,
                0.0f, c.data(), n);
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["gflops"] = benchmark::Counter(2.0 * n * n * n / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = static_cast<double>(state.range(1));
}

void BM_Memcpy(benchmark::State& state) {
  const size_t bytes = size_t{256} << 20;
  std::vector<char> src(bytes, 1), dst(bytes);
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), bytes);
    benchmark::DoNotOptimize(dst.data());
  }
  // Bytes read plus bytes written.
  state.counters["gb_per_second"] =
      benchmark::Counter(2.0 * bytes / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

void SgemmArgs(benchmark::internal::Benchmark* b) {
  const int hardware = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  b->Args({1024, 1});
  if (hardware > 1) b->Args({1024, hardware});
  b->ArgNames({"n", "threads"})->UseRealTime()->Unit(benchmark::kMillisecond);
}

BENCHMARK(BM_Sgemm)->Apply(SgemmArgs);
BENCHMARK(BM_Memcpy)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();

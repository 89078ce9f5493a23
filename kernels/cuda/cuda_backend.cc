#include "kernels/cuda/cuda_backend.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cuda/call_failures.h"
#include "kernels/cuda/launchers.h"
#include "kernels/cuda/mla_absorbed_tc.h"
#include "kernels/cuda/mla_expanded_tc.h"
#include "kernels/cuda/moe_cublas_grouped.h"
#include "kernels/cuda/op_profile.h"
#include "kernels/cuda/step_graphs.h"
#include "kernels/memory_budget.h"

namespace deltaserve::kernels::cuda {
namespace {

size_t RowBytes(const TensorView& v) { return static_cast<size_t>(v.cols) * DTypeSize(v.dtype); }
size_t Pitch(const TensorView& v) { return static_cast<size_t>(v.row_stride) * DTypeSize(v.dtype); }

cudaDataType_t BlasType(DType dtype) {
  switch (dtype) {
    case DType::kBF16: return CUDA_R_16BF;
    case DType::kF16: return CUDA_R_16F;
    default: return CUDA_R_32F;
  }
}

constexpr size_t kCaptureBlasWorkspaceBytes = size_t{32} << 20;

}  // namespace

struct CudaBackend::Impl {
  CallFailures failures;  // per calling thread; Backend::TakeFailure
  bool failed() const { return failures.held(); }
  bool Ok(cudaError_t error, const char* what) { return failures.Ok(error, what); }
  bool OkBlas(cublasStatus_t status, const char* what) { return failures.OkBlas(status, what); }

  // CudaBackendOptions::memory_limit_bytes, and the steps' buffers against the states
  // (Allocate outside step graphs' arenas against AllocateState).
  std::unique_ptr<MemoryBudget> budget;
  // Device bytes that can still be allocated without a memory limit: free device memory and what
  // the stream-ordered pool keeps unused (it keeps all it frees); -1 when the runtime does not say.
  int64_t UnlimitedAvailable() {
    size_t free = 0, total = 0;
    cudaMemPool_t pool = nullptr;
    uint64_t reserved = 0, used = 0;
    if (cudaMemGetInfo(&free, &total) != cudaSuccess || cudaDeviceGetDefaultMemPool(&pool, device) != cudaSuccess ||
        cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &reserved) != cudaSuccess ||
        cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &used) != cudaSuccess) {
      cudaGetLastError();
      return -1;
    }
    return static_cast<int64_t>(free) + static_cast<int64_t>(reserved) - static_cast<int64_t>(used);
  }

  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  // CudaBackendOptions::step_graphs: the recorder, and a cuBLAS handle on its capture stream
  // with a workspace of its own (cuBLAS allocates none while captured).
  std::unique_ptr<StepGraphs> graphs;
  std::mutex capture_blas_mutex;
  cublasHandle_t capture_blas = nullptr;
  void* capture_blas_workspace = nullptr;
  // Made before the first step graph; false (no graphs) when it cannot be, memory limit included.
  bool CaptureBlasReady() {
    std::lock_guard<std::mutex> lock(capture_blas_mutex);
    if (capture_blas != nullptr) return true;
    int64_t held = 0;
    if (!budget->limit().Reserve(kCaptureBlasWorkspaceBytes, &held)) return false;
    if (cudaMalloc(&capture_blas_workspace, kCaptureBlasWorkspaceBytes) != cudaSuccess) {
      cudaGetLastError();
      capture_blas_workspace = nullptr;
    }
    budget->limit().Settle(capture_blas_workspace, kCaptureBlasWorkspaceBytes);
    cublasHandle_t handle = nullptr;
    if (capture_blas_workspace == nullptr || cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) return false;
    if (cublasSetStream(handle, graphs->capture_stream()) != CUBLAS_STATUS_SUCCESS ||
        cublasSetWorkspace(handle, capture_blas_workspace, kCaptureBlasWorkspaceBytes) != CUBLAS_STATUS_SUCCESS) {
      cublasDestroy(handle);
      return false;
    }
    capture_blas = handle;
    return true;
  }
  // Whether y = x · wᵀ takes the skinny kernel: decode-sized, at serving precision, a weight
  // that cuBLAS does not read faster.
  bool Skinny(TensorView x, TensorView w) const {
    return matmul_precision == MatmulPrecision::kHalf && x.rows <= skinny_matmul_max_rows &&
           (skinny_matmul_max_weight_bytes == 0 ||
            w.rows * w.cols * static_cast<int64_t>(DTypeSize(w.dtype)) <= skinny_matmul_max_weight_bytes) &&
           SkinnyMatMulSupports(x, w);
  }
  GraphMode Mode() const { return graphs == nullptr ? GraphMode::kNone : graphs->ModeHere(); }
  // Before every device call an operation makes: false inside a replayed step graph (the graph
  // makes the call; the operation goes on to its next allocation or upload) or a failed capture.
  bool Issue() { return Mode() == GraphMode::kNone || graphs->Issue(); }
  // The calling thread's stream: the capture stream while it records a step.
  cudaStream_t Stream() const { return Mode() == GraphMode::kCapture ? graphs->capture_stream() : stream; }
  cublasHandle_t Blas() const { return Mode() == GraphMode::kCapture ? capture_blas : blas; }
  // Recorded and replayed operations are not timed one by one: the GPU runs them as graphs.
  OpProfile* Profile() const {
    const GraphMode mode = Mode();
    return mode == GraphMode::kCapture || mode == GraphMode::kReplay ? nullptr : profile.get();
  }
  // Host bytes to copy to the device: `host` itself, or their staged copy inside a step graph.
  const void* Stage(const void* host, size_t bytes) {
    return Mode() == GraphMode::kNone ? host : graphs->Stage(host, bytes);
  }
  MatmulPrecision matmul_precision = MatmulPrecision::kHalf;
  int device = 0;
  MoeExpertsKernel moe_experts = MoeExpertsKernel::kGrouped;
  int64_t moe_decode_max_slots = 0;
  int64_t moe_fused_max_slots = 0;
  int64_t moe_wide_tiles_min_rows = 0;
  int64_t moe_cublas_grouped_min_slots = 0;
  bool mla_expanded_wgmma = true;
  bool mla_absorbed_tensor_cores = true;
  int64_t mla_expanded_window_keys = 0;
  int64_t multiprocessors = 0;
  int64_t skinny_matmul_max_rows = 0;
  int64_t skinny_matmul_max_weight_bytes = 0;
  bool programmatic_products = false;
  std::unique_ptr<OpProfile> profile;  // DELTASERVE_CUDA_OP_PROFILE=1
  std::vector<void*> weights;  // owned device memory of adopted weights (slabs and large ones)

  // Device arrays of expert weight pointers for the grouped MoE kernels, per span of experts
  // (a layer or a shard), uploaded once: [gate..., up..., down...].
  struct ExpertPointers {
    std::vector<const void*> host;
    const void** device = nullptr;
    void* maps_storage = nullptr;            // a MoeWideTileMaps per entry, once allocated
    const void* wide_tile_maps = nullptr;    // maps_storage where the maps are encoded, else null
  };
  // Per expert list (its first element and size) and whether the shared expert follows it.
  std::map<std::tuple<const ExpertWeights*, size_t, bool>, ExpertPointers> expert_pointers;
  std::mutex expert_pointers_mutex;  // calling threads may share a layer's entry

  // Device memory for an adopted weight, freed with the backend; null after a failure. Weights
  // are carved from slabs: cudaMalloc rounds every allocation up to 2 MiB, which for the 48B
  // shape's 19,968 expert matrices of 4.5 MiB would leave ~29 GiB unused. A weight larger than a
  // quarter of a slab gets an allocation of its own.
  void* AllocateWeight(size_t bytes) {
    bytes = (std::max<size_t>(bytes, 1) + 255) / 256 * 256;
    if (failed()) return nullptr;
    const std::lock_guard<std::mutex> lock(weight_mutex);
    const size_t slab_bytes = WeightSlabBytes();
    if (bytes > slab_bytes / 4) return AllocateDevice(bytes);
    if (bytes > slab_left) {
      slab_next = static_cast<char*>(AllocateDevice(slab_bytes));
      slab_left = slab_next != nullptr ? slab_bytes : 0;
      if (slab_next == nullptr) return nullptr;
    }
    void* data = slab_next;
    slab_next += bytes;
    slab_left -= bytes;
    return data;
  }
  // 256 MiB, or at most a sixteenth of a memory limit, so a small cap is not spent on one slab.
  size_t WeightSlabBytes() const {
    constexpr size_t kMaxSlab = size_t{256} << 20;
    const auto limit = static_cast<size_t>(budget->limit().limit());
    return limit == 0 ? kMaxSlab : std::clamp(limit / 16 / 256 * 256, size_t{256}, kMaxSlab);
  }
  // cudaMalloc counted against the memory limit, freed with the backend.
  void* AllocateDevice(size_t bytes) {
    void* data = nullptr;
    if (!budget->Reserve(bytes, "cudaMalloc (weight)")) return nullptr;
    if (!Ok(cudaMalloc(&data, bytes), "cudaMalloc (weight)")) data = nullptr;
    budget->limit().Settle(data, bytes);
    if (data != nullptr) weights.push_back(data);
    return data;
  }
  std::mutex weight_mutex;    // AllocateWeight's slab
  char* slab_next = nullptr;  // the current weight slab's free part
  size_t slab_left = 0;
};

// Inside an operation: skips `call` once a failure is held, records a failed one, and leaves the
// operation either way, so nothing runs on memory a failed allocation did not provide.
// Inside a replayed step graph the call is not made (the graph makes it) and the operation goes
// on, so that its allocations and uploads happen in the recorded order.
#define DS_CUDA(call, what)                                                                      \
  do {                                                                                           \
    if (impl_->failed()) return;                                                                 \
    if (impl_->Issue() && !impl_->Ok(static_cast<cudaError_t>(call), what)) return;            \
  } while (0)
#define DS_BLAS(call, what)                                                 \
  do {                                                                      \
    if (impl_->failed()) return;                                            \
    if (impl_->Issue() && !impl_->OkBlas(call, what)) return;              \
  } while (0)

bool CudaDeviceAvailable(std::string* why) {
  int count = 0;
  const cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess || count == 0) {
    if (why != nullptr) {
      *why = error != cudaSuccess ? cudaGetErrorString(error) : "no CUDA device is present";
    }
    return false;
  }
  return true;
}

std::unique_ptr<CudaBackend> CudaBackend::Create(const CudaBackendOptions& options, std::string* error) {
  if (!CudaDeviceAvailable(error)) return nullptr;
  if (cudaSetDevice(options.device) != cudaSuccess) {
    // Not left as the thread's last error, where a later launch check would find it.
    (void)cudaGetLastError();
    int count = 0;
    (void)cudaGetDeviceCount(&count);
    *error = "cannot select CUDA device " + std::to_string(options.device) + " of " + std::to_string(count);
    return nullptr;
  }
  cudaDeviceProp properties{};
  if (cudaGetDeviceProperties(&properties, options.device) != cudaSuccess) {
    *error = "cannot read the properties of CUDA device " + std::to_string(options.device);
    return nullptr;
  }
  if (properties.major < 9) {
    *error = "CUDA device " + std::to_string(options.device) + " (" + properties.name + ") is sm_" +
             std::to_string(properties.major) + std::to_string(properties.minor) +
             "; the kernels are built for sm_90 (Hopper)";
    return nullptr;
  }
  if (options.skinny_matmul_max_rows < 0 || options.skinny_matmul_max_rows > kSkinnyMatMulMaxRows) {
    *error = "skinny_matmul_max_rows " + std::to_string(options.skinny_matmul_max_rows) +
             ": the skinny kernel takes 0 to " + std::to_string(kSkinnyMatMulMaxRows) + " rows";
    return nullptr;
  }
  if (options.mla_expanded_window_keys < 0 || options.mla_expanded_window_keys % kMlaExpandedTileKeys != 0) {
    *error = "mla_expanded_window_keys " + std::to_string(options.mla_expanded_window_keys) +
             ": a multiple of " + std::to_string(kMlaExpandedTileKeys) + " keys (0: no window)";
    return nullptr;
  }
  if (options.skinny_matmul_max_weight_bytes < 0) {
    *error = "skinny_matmul_max_weight_bytes " + std::to_string(options.skinny_matmul_max_weight_bytes) +
             " is negative (0: no limit)";
    return nullptr;
  }
  // Keep freed memory in the stream-ordered pool instead of returning it at every
  // synchronisation: each step allocates its scratch again.
  cudaMemPool_t pool = nullptr;
  uint64_t keep_all = UINT64_MAX;
  if (cudaDeviceGetDefaultMemPool(&pool, options.device) != cudaSuccess ||
      cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep_all) != cudaSuccess) {
    *error = "cannot configure the memory pool of CUDA device " + std::to_string(options.device);
    return nullptr;
  }
  auto impl = std::make_unique<Impl>();
  impl->matmul_precision = options.matmul_precision;
  impl->moe_experts = options.moe_experts;
  impl->moe_decode_max_slots = options.moe_decode_max_slots;
  impl->moe_fused_max_slots = options.moe_fused_max_slots;
  impl->moe_wide_tiles_min_rows = options.moe_wide_tiles_min_rows;
  impl->moe_cublas_grouped_min_slots = options.moe_cublas_grouped_min_slots;
  impl->mla_expanded_wgmma = options.mla_expanded_wgmma;
  impl->mla_absorbed_tensor_cores = options.mla_absorbed_tensor_cores;
  impl->mla_expanded_window_keys = options.mla_expanded_window_keys;
  impl->multiprocessors = properties.multiProcessorCount;
  impl->skinny_matmul_max_rows = options.skinny_matmul_max_rows;
  impl->skinny_matmul_max_weight_bytes = options.skinny_matmul_max_weight_bytes;
  impl->programmatic_products = options.programmatic_products;
  impl->device = options.device;
  Impl* raw = impl.get();
  impl->budget = std::make_unique<MemoryBudget>(options.memory_limit_bytes, impl->failures,
                                                [raw] { return raw->UnlimitedAvailable(); });
  if (cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking) != cudaSuccess ||
      cublasCreate(&impl->blas) != CUBLAS_STATUS_SUCCESS ||
      cublasSetStream(impl->blas, impl->stream) != CUBLAS_STATUS_SUCCESS) {
    *error = "cannot create a CUDA stream or cuBLAS handle";
    return nullptr;
  }
  if (options.step_graphs) {
    MemoryBudget* budget = impl->budget.get();
    impl->graphs = std::make_unique<StepGraphs>(impl->stream, &budget->limit(), options.max_step_graphs,
                                                [budget](size_t bytes) { return budget->LeavesStepRoom(bytes); });
  }
  if (const char* profile = std::getenv("DELTASERVE_CUDA_OP_PROFILE"); profile != nullptr && profile[0] == '1') {
    impl->profile = std::make_unique<OpProfile>(impl->stream);
  }
  return std::unique_ptr<CudaBackend>(new CudaBackend(std::move(impl)));
}

CudaBackend::CudaBackend(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

// The current device is per host thread, and callers (gRPC handlers, the scheduler) call from
// several: every entry point selects this backend's device first (cheap when already current).
void CudaBackend::Bind() const { CheckFatal(cudaSetDevice(impl_->device), "cudaSetDevice"); }

MemoryUse CudaBackend::memory_use() const { return impl_->budget->Use(); }

BackendFailure CudaBackend::TakeFailure() {
  BackendFailure failure = impl_->failures.Take();
  impl_->budget->Checked(!failure.failed());
  return failure;
}

// A region of StepGraphs held by one thread, given up when destroyed.
class CudaStepGraph final : public StepGraph {
 public:
  explicit CudaStepGraph(CudaBackend& backend) : backend_(backend) {}
  ~CudaStepGraph() override {
    backend_.Bind();
    backend_.impl_->graphs->End();
  }
  CudaStepGraph(const CudaStepGraph&) = delete;
  CudaStepGraph& operator=(const CudaStepGraph&) = delete;

  bool Launch() override {
    backend_.Bind();
    CudaBackend::Impl& impl = *backend_.impl_;
    const GraphMode mode = impl.Mode();
    const bool thread_failed = impl.failed();
    const OpScope scope(impl.profile.get(), mode == GraphMode::kReplay ? "StepGraph (replay)"
                                            : mode == GraphMode::kCapture ? "StepGraph (capture)"
                                                                          : "StepGraph (measured)");
    switch (impl.graphs->Launch(thread_failed)) {
      case StepGraphs::Outcome::kRan:
        return true;
      case StepGraphs::Outcome::kNotRun:
        // A failure while recording belongs to the recording; a rerun meets a real one again.
        if (thread_failed) impl.failures.Take();
        return false;
      case StepGraphs::Outcome::kDiverged:
        // Part of the step ran: it cannot be issued again, so it fails as a device failure does.
        impl.failures.Record(false, "a replayed step graph diverged from its recording after part of it ran");
        return true;
    }
    return false;
  }

 private:
  CudaBackend& backend_;
};

std::unique_ptr<StepGraph> CudaBackend::BeginStepGraph(const StepGraphKey& key) {
  if (impl_->graphs == nullptr || impl_->failed()) return nullptr;
  Bind();
  if (!impl_->CaptureBlasReady() || !impl_->graphs->Begin(key)) return nullptr;
  return std::make_unique<CudaStepGraph>(*this);
}

StepGraphCounts CudaBackend::step_graph_counts() const {
  if (impl_->graphs == nullptr) return {};
  const StepGraphs::Counts c = impl_->graphs->counts();
  return {c.measured, c.captured, c.replayed, c.failed};
}

CudaBackend::~CudaBackend() {
  Bind();
  cudaStreamSynchronize(impl_->stream);
  if (impl_->profile != nullptr) {
    std::fputs(impl_->profile->Table().c_str(), stderr);
    impl_->profile.reset();
  }
  for (void* weight : impl_->weights) cudaFree(weight);
  cublasDestroy(impl_->blas);
  impl_->graphs.reset();
  if (impl_->capture_blas != nullptr) cublasDestroy(impl_->capture_blas);
  if (impl_->capture_blas_workspace != nullptr) cudaFree(impl_->capture_blas_workspace);
  cudaStreamDestroy(impl_->stream);
}

void CudaBackend::Synchronize() {
  Bind();
  if (impl_->Mode() != GraphMode::kNone) {
    impl_->graphs->MarkBroken("a synchronisation inside a step graph");
    if (impl_->Mode() != GraphMode::kMeasure) return;
  }
  CheckFatal(cudaStreamSynchronize(impl_->stream), "synchronize");
}

Tensor CudaBackend::Allocate(int64_t rows, int64_t cols, DType dtype) {
  return AllocateKind(rows, cols, dtype, /*step_buffer=*/true, /*leave_step_room=*/false);
}

Tensor CudaBackend::AllocateState(int64_t rows, int64_t cols, DType dtype, bool leave_step_room) {
  return AllocateKind(rows, cols, dtype, /*step_buffer=*/false, leave_step_room);
}

Tensor CudaBackend::AllocateKind(int64_t rows, int64_t cols, DType dtype, bool step_buffer, bool leave_step_room) {
  Bind();
  const OpScope scope(impl_->Profile(), "Allocate");
  void* data = nullptr;
  size_t bytes = static_cast<size_t>(rows * cols) * DTypeSize(dtype);
  bytes = bytes == 0 ? 256 : bytes;
  if (impl_->failed()) return Tensor(this, nullptr, dtype, rows, cols);
  const GraphMode mode = impl_->Mode();
  if (mode != GraphMode::kNone) {
    void* step_data = impl_->graphs->Allocate(bytes);  // the step's arena; counted when measuring
    if (mode != GraphMode::kMeasure) return Tensor(this, step_data, dtype, rows, cols);
  }
  if (!impl_->budget->Admit(bytes, !step_buffer, leave_step_room && mode == GraphMode::kNone, "cudaMallocAsync")) {
    return Tensor(this, nullptr, dtype, rows, cols);
  }
  if (!impl_->Ok(cudaMallocAsync(&data, bytes, impl_->Stream()), "cudaMallocAsync")) data = nullptr;
  impl_->budget->Settle(data, bytes, !step_buffer);
  return Tensor(this, data, dtype, rows, cols);
}

void CudaBackend::Free(void* data) {
  Bind();
  const OpScope scope(impl_->Profile(), "Free");
  if (data == nullptr) return;  // a failed allocation
  if (impl_->graphs != nullptr && impl_->graphs->InArena(data)) return;  // a step graph's
  impl_->budget->Release(data);
  // On the main stream even inside a capture: memory from outside a step graph is not the graph's
  // to free.
  CheckFatal(cudaFreeAsync(data, impl_->stream), "cudaFreeAsync");
}

Tensor CudaBackend::AllocateBytes(size_t bytes) {
  return Allocate(1, static_cast<int64_t>((bytes + 3) / 4), DType::kI32);
}

Tensor CudaBackend::UploadBytes(const void* host, size_t bytes) {
  Tensor tensor = AllocateBytes(bytes);
  if (bytes > 0 && !impl_->failed()) {
    const void* source = impl_->Stage(host, bytes);
    if (impl_->Issue()) {
      impl_->Ok(cudaMemcpyAsync(tensor.view().data, source, bytes, cudaMemcpyHostToDevice, impl_->Stream()),
                "upload");
    }
  }
  return tensor;
}

void CudaBackend::Zero(TensorView dst) {
  Bind();
  const OpScope scope(impl_->Profile(), "Zero");
  if (dst.rows == 0 || dst.cols == 0) return;
  DS_CUDA(cudaMemset2DAsync(dst.data, Pitch(dst), 0, RowBytes(dst), dst.rows, impl_->Stream()), "zero");
}

void CudaBackend::Upload(const void* host, TensorView dst) {
  Bind();
  const OpScope scope(impl_->Profile(), "Upload");
  if (dst.rows == 0 || dst.cols == 0 || impl_->failed()) return;
  const void* source = impl_->Stage(host, RowBytes(dst) * static_cast<size_t>(dst.rows));
  DS_CUDA(cudaMemcpy2DAsync(dst.data, Pitch(dst), source, RowBytes(dst), RowBytes(dst), dst.rows,
                            cudaMemcpyHostToDevice, impl_->Stream()),
          "upload");
}

void CudaBackend::Download(TensorView src, void* host) {
  Bind();
  const OpScope scope(impl_->Profile(), "Download");
  if (impl_->Mode() != GraphMode::kNone) {
    impl_->graphs->MarkBroken("a download inside a step graph");
    if (impl_->Mode() != GraphMode::kMeasure) return;
  }
  if (src.rows > 0 && src.cols > 0 && !impl_->failed()) {
    impl_->Ok(cudaMemcpy2DAsync(host, RowBytes(src), src.data, Pitch(src), RowBytes(src), src.rows,
                                cudaMemcpyDeviceToHost, impl_->Stream()),
              "download");
  }
  Synchronize();
}

void CudaBackend::Copy(TensorView src, TensorView dst) {
  Bind();
  const OpScope scope(impl_->Profile(), "Copy");
  if (src.rows == 0 || src.cols == 0) return;
  DS_CUDA(cudaMemcpy2DAsync(dst.data, Pitch(dst), src.data, Pitch(src), RowBytes(src), src.rows,
                            cudaMemcpyDeviceToDevice, impl_->Stream()),
          "copy");
}

void CudaBackend::GatherRows(TensorView src, std::span<const int64_t> rows, TensorView dst) {
  Bind();
  const OpScope scope(impl_->Profile(), "GatherRows");
  if (rows.empty()) return;
  Tensor indices = UploadBytes(rows.data(), rows.size_bytes());
  DS_CUDA(LaunchGatherRows(src, indices.data<int64_t>(), static_cast<int64_t>(rows.size()), dst,
                           impl_->Stream()),
          "gather rows");
}

TensorView CudaBackend::AdoptWeight(TensorView host) {
  Bind();
  const size_t bytes = static_cast<size_t>(host.rows) * RowBytes(host);
  void* data = impl_->AllocateWeight(bytes);
  if (bytes > 0 && data != nullptr) {
    // On the compute stream, so kernels queued after it see the whole weight. The host memory
    // is pageable (a mapped checkpoint): the copy has staged it before returning.
    impl_->Ok(cudaMemcpy2DAsync(data, RowBytes(host), host.data, Pitch(host), RowBytes(host), host.rows,
                                cudaMemcpyHostToDevice, impl_->Stream()),
              "weight upload");
  }
  return TensorView{data, host.dtype, host.rows, host.cols, host.cols};
}

TensorView CudaBackend::AdoptWeightF32(TensorView host) {
  Bind();
  if (host.dtype == DType::kF32) return AdoptWeight(host);
  Tensor stored = Allocate(host.rows, host.cols, host.dtype);
  Upload(host.data, stored.view());
  void* data = impl_->AllocateWeight(static_cast<size_t>(host.rows * host.cols) * sizeof(float));
  if (!impl_->failed()) {
    impl_->Ok(static_cast<cudaError_t>(LaunchWidenToF32(stored.view(), static_cast<float*>(data), impl_->Stream())),
              "widen weight");
  }
  return TensorView{data, DType::kF32, host.rows, host.cols, host.cols};
}

void CudaBackend::Embed(std::span<const int32_t> ids, TensorView table, TensorView out) {
  Bind();
  const OpScope scope(impl_->Profile(), "Embed");
  if (ids.empty()) return;
  Tensor device_ids = UploadBytes(ids.data(), ids.size_bytes());
  DS_CUDA(LaunchEmbed(device_ids.data<int32_t>(), static_cast<int64_t>(ids.size()), table, out,
                      impl_->Stream()),
          "embed");
}

void CudaBackend::MatMul(TensorView x, TensorView w, TensorView y) {
  Bind();
  const OpScope scope(impl_->Profile(), "MatMul");
  const int64_t t = x.rows, k = x.cols, n = w.rows;
  if (t == 0 || n == 0) return;
  // Decode-sized products: one pass over the weight, fp32 activations, a single launch.
  if (impl_->Skinny(x, w)) {
    DS_CUDA(LaunchSkinnyMatMul(x, w, y, impl_->Stream(), impl_->programmatic_products), "skinny matmul");
    return;
  }
  const float alpha = 1.0f, beta = 0.0f;
  const bool fp32_product = w.dtype == DType::kF32 || impl_->matmul_precision == MatmulPrecision::kF32;
  // A rounded x (PrepareProductInput) goes only into products of its own type.
  if (x.dtype != DType::kF32 && (fp32_product || x.dtype != w.dtype)) {
    impl_->Ok(cudaErrorInvalidValue, "matmul: a half-precision x needs a weight of its type");
    return;
  }
  // cuBLAS writes a half-precision y only of the weight's own type (bf16 · bf16 -> bf16), sgemm
  // only fp32: any other y goes through an fp32 buffer and is rounded after.
  if (y.dtype != DType::kF32 && (fp32_product || y.dtype != w.dtype)) {
    Tensor wide_y = Allocate(t, n, DType::kF32);
    MatMul(x, w, wide_y.view());
    Tensor narrow = Allocate(t, n, y.dtype);
    DS_CUDA(LaunchConvertF32(wide_y.view(), y.dtype, narrow.view().data, impl_->Stream()), "round product");
    Copy(narrow.view(), y);
    return;
  }
  if (fp32_product) {
    Tensor wide;
    const float* w_data = static_cast<const float*>(w.data);
    int64_t w_stride = w.row_stride;
    if (w.dtype != DType::kF32) {
      wide = Allocate(n, k, DType::kF32);
      DS_CUDA(LaunchWidenToF32(w, wide.data<float>(), impl_->Stream()), "widen weight");
      w_data = wide.data<float>();
      w_stride = k;
    }
    // Column-major view: yᵀ[n, t] = w[n, k] · xᵀ[k, t].
    DS_BLAS(cublasSgemm(impl_->Blas(), CUBLAS_OP_T, CUBLAS_OP_N, n, t, k, &alpha, w_data, w_stride,
                        static_cast<const float*>(x.data), x.row_stride, &beta,
                        static_cast<float*>(y.data), y.row_stride),
            "sgemm");
    return;
  }
  // Half-precision weights: the activations are rounded to the same type (the tensor cores'
  // inputs), here or once for several products (PrepareProductInput); products accumulate in fp32.
  Tensor half;
  TensorView x_half = x;
  if (x.dtype == DType::kF32) {
    half = Allocate(t, k, w.dtype);
    x_half = half.view();
    DS_CUDA(LaunchConvertF32(x, w.dtype, x_half.data, impl_->Stream()), "convert activations");
  }
  DS_BLAS(cublasGemmEx(impl_->Blas(), CUBLAS_OP_T, CUBLAS_OP_N, n, t, k, &alpha, w.data,
                       BlasType(w.dtype), w.row_stride, x_half.data, BlasType(w.dtype), x_half.row_stride,
                       &beta, y.data, BlasType(y.dtype), y.row_stride, CUBLAS_COMPUTE_32F,
                       CUBLAS_GEMM_DEFAULT),
          "gemm");
}

DType CudaBackend::ProductInputDType(int64_t rows, TensorView w) const {
  // Decode-sized rows stay fp32 whatever the weight: the skinny kernel reads them as they are (a
  // product it does not take there still rounds them inside MatMul).
  const bool rounds = (w.dtype == DType::kBF16 || w.dtype == DType::kF16) &&
                      impl_->matmul_precision == MatmulPrecision::kHalf && rows > impl_->skinny_matmul_max_rows;
  return rounds ? w.dtype : DType::kF32;
}

ProductInput CudaBackend::PrepareProductInput(TensorView x, TensorView w) {
  Bind();
  const DType dtype = ProductInputDType(x.rows, w);
  if (x.dtype != DType::kF32 || dtype == DType::kF32) return {x, Tensor()};
  const OpScope scope(impl_->Profile(), "PrepareProductInput");
  ProductInput input{x, Allocate(x.rows, x.cols, dtype)};
  if (!impl_->failed() && impl_->Issue()) {
    impl_->Ok(static_cast<cudaError_t>(LaunchConvertF32(x, dtype, input.rounded.view().data, impl_->Stream())),
              "round product input");
  }
  return input;
}

void CudaBackend::MatMuls(std::span<const MatMulProduct> products) {
  // Decode-sized products of one row count run as one skinny launch; anything else one by one.
  bool together = products.size() > 1 && products.size() <= static_cast<size_t>(kSkinnyMatMulMaxProducts);
  std::array<SkinnyProduct, kSkinnyMatMulMaxProducts> skinny;
  for (size_t i = 0; together && i < products.size(); ++i) {
    const MatMulProduct& p = products[i];
    together = impl_->Skinny(p.x, p.w) && p.x.rows == products[0].x.rows && IsActivationDType(p.y.dtype) &&
               p.y.rows == p.x.rows && p.y.cols == p.w.rows;
    skinny[i] = {p.x, p.w, p.y};
  }
  if (!together) {
    Backend::MatMuls(products);
    return;
  }
  Bind();
  const OpScope scope(impl_->Profile(), "MatMuls");
  DS_CUDA(LaunchSkinnyMatMuls(skinny.data(), static_cast<int>(products.size()), impl_->Stream(),
                              impl_->programmatic_products),
          "skinny matmuls");
}

void CudaBackend::Add(TensorView acc, TensorView x) {
  Bind();
  const OpScope scope(impl_->Profile(), "Add");
  DS_CUDA(LaunchAdd(acc, x, impl_->Stream()), "add");
}

void CudaBackend::RmsNorm(TensorView x, TensorView weight, float eps, TensorView out) {
  Bind();
  const OpScope scope(impl_->Profile(), "RmsNorm");
  DS_CUDA(LaunchRmsNorm(x, weight, eps, out, impl_->Stream()), "rmsnorm");
}

void CudaBackend::AddRmsNorm(TensorView acc, TensorView x, TensorView weight, float eps, TensorView out) {
  Bind();
  const OpScope scope(impl_->Profile(), "AddRmsNorm");
  DS_CUDA(LaunchAddRmsNorm(acc, x, weight, eps, out, impl_->Stream()), "add rmsnorm");
}

void CudaBackend::SwiGlu(TensorView gate, TensorView up, TensorView out) {
  Bind();
  const OpScope scope(impl_->Profile(), "SwiGlu");
  DS_CUDA(LaunchSwiGlu(gate, up, out, impl_->Stream()), "swiglu");
}

void CudaBackend::CausalConvSilu(TensorView x, TensorView weight, std::span<const ConvSequence> seqs,
                                 TensorView out) {
  Bind();
  const OpScope scope(impl_->Profile(), "CausalConvSilu");
  if (seqs.empty()) return;
  Tensor descriptors = UploadBytes(seqs.data(), seqs.size_bytes());
  std::vector<ConvRun> runs;
  for (size_t i = 0; i < seqs.size(); ++i) {
    for (int64_t first = 0; first < seqs[i].rows.length; first += kConvRunRows) {
      runs.push_back({static_cast<int32_t>(i), static_cast<int32_t>(first)});
    }
  }
  if (runs.empty()) return;
  Tensor device_runs = UploadBytes(runs.data(), runs.size() * sizeof(ConvRun));
  DS_CUDA(LaunchCausalConvSilu(x, weight, static_cast<const ConvSequence*>(descriptors.view().data),
                               static_cast<int64_t>(seqs.size()), static_cast<const ConvRun*>(device_runs.view().data),
                               static_cast<int64_t>(runs.size()), out, impl_->Stream()),
          "causal conv");
}

DType CudaBackend::KdaActivationDType() const {
  return impl_->matmul_precision == MatmulPrecision::kHalf ? DType::kBF16 : DType::kF32;
}

void CudaBackend::KdaAttention(const KdaInputs& in, std::span<const KdaSequence> seqs, TensorView out) {
  Bind();
  const OpScope scope(impl_->Profile(), "KdaAttention");
  // Prefill runs the chunked kernels; decode, head dims they lack, and the fp32 validation mode
  // (the chunked products are bf16) run the fused recurrent kernel.
  const bool can_chunk = impl_->matmul_precision == MatmulPrecision::kHalf &&
                         KdaChunkedSupports(in.head_dim);
  std::vector<KdaSequence> recurrent, chunked;
  for (const KdaSequence& seq : seqs) {
    if (seq.rows.length <= 0) continue;
    (can_chunk && seq.algorithm == KdaAlgorithm::kChunked ? chunked : recurrent).push_back(seq);
  }
  if (!recurrent.empty()) {
    Tensor descriptors = UploadBytes(recurrent.data(), recurrent.size() * sizeof(KdaSequence));
    DS_CUDA(LaunchKdaRecurrent(in, static_cast<const KdaSequence*>(descriptors.view().data),
                               static_cast<int64_t>(recurrent.size()), out, impl_->Stream()),
            "kda recurrent");
  }
  if (chunked.empty()) return;
  const auto [chunks, first_chunk, longest_first] =
      BuildKdaChunkTable(chunked.data(), static_cast<int64_t>(chunked.size()));
  const auto num_chunks = static_cast<int64_t>(chunks.size());
  Tensor descriptors = UploadBytes(chunked.data(), chunked.size() * sizeof(KdaSequence));
  Tensor chunk_table = UploadBytes(chunks.data(), chunks.size() * sizeof(KdaChunkRef));
  std::vector<int32_t> sequence_tables = first_chunk;  // with longest_first after it: one upload
  sequence_tables.insert(sequence_tables.end(), longest_first.begin(), longest_first.end());
  Tensor tables = UploadBytes(sequence_tables.data(), sequence_tables.size() * sizeof(int32_t));
  const int32_t* first_table = tables.data<int32_t>();
  const int32_t* order_table = first_table + first_chunk.size();
  const size_t scratch_bytes = KdaChunkedScratchBytes(num_chunks, in.num_heads, in.head_dim);
  Tensor scratch = Allocate(static_cast<int64_t>((scratch_bytes + 1023) / 1024), 256, DType::kI32);
  DS_CUDA(LaunchKdaChunked(in, static_cast<const KdaSequence*>(descriptors.view().data),
                           static_cast<int64_t>(chunked.size()), chunk_table.data<KdaChunkRef>(),
                           first_table, order_table, num_chunks, scratch.view().data, out, impl_->Stream()),
          "kda chunked");
}

void CudaBackend::GatedRmsNorm(TensorView x, TensorView gate, TensorView weight, int64_t head_dim,
                               float eps, TensorView out) {
  Bind();
  const OpScope scope(impl_->Profile(), "GatedRmsNorm");
  DS_CUDA(LaunchGatedRmsNorm(x, gate, weight, head_dim, eps, out, impl_->Stream()), "gated rmsnorm");
}

void CudaBackend::KdaDecodeStep(const KdaDecodeInputs& in, std::span<const KdaDecodeSequence> seqs,
                                TensorView out) {
  Bind();
  const OpScope scope(impl_->Profile(), "KdaDecodeStep");
  if (seqs.empty()) return;
  const int64_t taps = in.conv_weights[0].cols;
  if (!KdaDecodeStepSupports(in.core.head_dim, taps) || in.conv_weights[1].cols != taps ||
      in.conv_weights[2].cols != taps) {
    Backend::KdaDecodeStep(in, seqs, out);
    return;
  }
  Tensor descriptors = UploadBytes(seqs.data(), seqs.size_bytes());
  DS_CUDA(LaunchKdaDecodeStep(in, static_cast<const KdaDecodeSequence*>(descriptors.view().data),
                              static_cast<int64_t>(seqs.size()), out, impl_->Stream()),
          "kda decode step");
}

DType CudaBackend::LatentCacheDType() const {
  return impl_->matmul_precision == MatmulPrecision::kHalf ? DType::kBF16 : DType::kF32;
}

void CudaBackend::MlaAttention(const MlaParams& params, TensorView q, TensorView latent, TensorView kv_b,
                               std::span<const MlaSequence> seqs, TensorView out) {
  Bind();
  const OpScope scope(impl_->Profile(), "MlaAttention");
  if (seqs.empty() || impl_->failed()) return;
  int64_t max_total = 0;
  bool bf16_pages = true;
  for (const MlaSequence& seq : seqs) {
    if (seq.cache.pages == nullptr || seq.cache.page_rows <= 0 ||
        (seq.cache.dtype != DType::kF32 && seq.cache.dtype != DType::kBF16)) {
      impl_->Ok(cudaErrorInvalidValue, "mla attention (a sequence without F32 or BF16 latent pages)");
      return;
    }
    max_total = std::max(max_total, seq.num_cached + seq.rows.length);
    bf16_pages = bf16_pages && seq.cache.dtype == DType::kBF16;
  }
  // The page tables in one upload. Inside a step graph each is padded to the pages of the step's
  // key bucket, so that every step of one graph key uploads the same number of bytes.
  const bool padded = impl_->Mode() != GraphMode::kNone;
  std::vector<void*> tables;
  std::vector<size_t> offsets;
  for (const MlaSequence& seq : seqs) {
    const int64_t pages = (seq.num_cached + seq.rows.length + seq.cache.page_rows - 1) / seq.cache.page_rows;
    const int64_t slots = padded ? (StepGraphs::KeysBucket(max_total) + seq.cache.page_rows - 1) / seq.cache.page_rows
                                 : pages;
    offsets.push_back(tables.size());
    tables.insert(tables.end(), seq.cache.pages, seq.cache.pages + pages);
    tables.resize(tables.size() + static_cast<size_t>(slots - pages), nullptr);
  }
  Tensor device_tables = UploadBytes(tables.data(), tables.size() * sizeof(void*));
  std::vector<MlaSequence> on_device(seqs.begin(), seqs.end());
  for (size_t i = 0; i < on_device.size(); ++i) {
    on_device[i].cache.pages = static_cast<void* const*>(device_tables.view().data) + offsets[i];
  }
  // The absorbed rows' longest history plus new rows, in the step graphs' bucket: the key
  // partitions, and the tensor-core kernel's grid, are sized for it, so that every step of one
  // graph key launches the same grid and a step gives the same bits with or without a graph.
  int64_t max_keys = 0;
  for (const MlaSequence& seq : seqs) {
    if (seq.form == MlaForm::kAbsorbed) max_keys = std::max(max_keys, seq.num_cached + seq.rows.length);
  }
  const bool any_absorbed = max_keys > 0;
  max_keys = StepGraphs::KeysBucket(max_keys);
  // Serving precision attends absorbed rows on tensor cores (bf16 query, keys and probabilities;
  // Hopper's warpgroup products), their key tiles spread evenly over the blocks by a key split
  // uploaded with the descriptors.
  const bool tensor_cores = impl_->matmul_precision == MatmulPrecision::kHalf && bf16_pages &&
                            impl_->mla_absorbed_tensor_cores && MlaAbsorbedTcRuns();
  const int64_t n = static_cast<int64_t>(seqs.size());
  std::vector<int32_t> key_split;
  if (any_absorbed && tensor_cores && MlaAbsorbedTcSupports(params)) {
    key_split = BuildMlaKeySplit(seqs.data(), n, q.rows, MlaKeySplitBlocks(q.rows, max_keys)).table;
  }
  const size_t split_offset = (on_device.size() * sizeof(MlaSequence) + 15) / 16 * 16;
  std::vector<unsigned char> upload(split_offset + key_split.size() * sizeof(int32_t), 0);
  std::memcpy(upload.data(), on_device.data(), on_device.size() * sizeof(MlaSequence));
  if (!key_split.empty()) {
    std::memcpy(upload.data() + split_offset, key_split.data(), key_split.size() * sizeof(int32_t));
  }
  Tensor descriptors = UploadBytes(upload.data(), upload.size());
  const auto* device_seqs = static_cast<const MlaSequence*>(descriptors.view().data);
  const auto* device_split = key_split.empty() ? nullptr
                                               : reinterpret_cast<const int32_t*>(
                                                     static_cast<const char*>(descriptors.view().data) + split_offset);
  // A batch of absorbed rows only (decode) appends inside the absorbed attention's first launch;
  // expanded rows read the caches (their new rows too) before it.
  const bool append_in_attention =
      std::all_of(seqs.begin(), seqs.end(), [](const MlaSequence& seq) { return seq.form == MlaForm::kAbsorbed; });
  if (!append_in_attention) DS_CUDA(LaunchMlaAppendLatent(latent, device_seqs, n, impl_->Stream()), "mla append");

  const bool any_expanded =
      std::any_of(seqs.begin(), seqs.end(), [](const MlaSequence& seq) { return seq.form == MlaForm::kExpanded; });
  // Serving precision attends expanded sequences on tensor cores, a block per 64 or 128 rows of one
  // sequence and head, their histories expanded a window at a time (MlaExpandedTensorCores).
  if (any_expanded && impl_->matmul_precision == MatmulPrecision::kHalf && MlaExpandedTcSupports(params, q, out)) {
    MlaExpandedTensorCores(params, q, kv_b, seqs, device_seqs, out);
  } else if (any_expanded) {
    const int64_t width = params.kv_lora_rank + params.qk_rope_dim;
    const int64_t kv = params.num_heads * (params.qk_nope_dim + params.v_dim);
    std::vector<Tensor> expanded(seqs.size());
    std::vector<const void*> pointers(seqs.size(), nullptr);
    for (size_t i = 0; i < seqs.size(); ++i) {
      if (seqs[i].form == MlaForm::kAbsorbed) continue;
      const int64_t length = seqs[i].num_cached + seqs[i].rows.length;
      Tensor history = Allocate(length, params.kv_lora_rank, DType::kF32);
      DS_CUDA(LaunchMlaGatherLatent(device_seqs + i, 0, width, history.view(), impl_->Stream()), "mla gather");
      expanded[i] = Allocate(length, kv, DType::kF32);
      MatMul(history.view(), kv_b, expanded[i].view());
      pointers[i] = expanded[i].data<float>();
    }
    Tensor device_pointers = UploadBytes(pointers.data(), pointers.size() * sizeof(void*));
    DS_CUDA(LaunchMlaExpandedAttention(params, q, device_seqs,
                                       static_cast<const float* const*>(device_pointers.view().data), n, out,
                                       impl_->Stream()),
            "mla expanded");
  }
  if (any_absorbed) {
    const size_t scratch_floats = MlaAbsorbedScratchFloats(params, q.rows, max_keys, tensor_cores);
    Tensor scratch;
    if (scratch_floats > 0) scratch = Allocate(1, static_cast<int64_t>(scratch_floats), DType::kF32);
    DS_CUDA(LaunchMlaAbsorbedAttention(params, q, kv_b, device_seqs, n, max_keys, tensor_cores, device_split,
                                       scratch_floats > 0 ? scratch.data<float>() : nullptr, out, impl_->Stream(),
                                       append_in_attention ? latent : TensorView{}),
            "mla absorbed");
  }
}

MlaFormLimits CudaBackend::MlaForms(const MlaParams& params) const {
  if (impl_->matmul_precision != MatmulPrecision::kHalf || !MlaExpandedTcShapes(params)) return {};
  // Measured on an H200 at the 48B shape (docs/engine.md): the expanded form level with the
  // absorbed one at 64 new tokens on 16k-128k keys (ahead at 4k, 15% behind at 1M), and ahead
  // from 96 on 4k-1M keys.
  return {.absorbed_max_new_tokens = 64, .expanded_window_keys = impl_->mla_expanded_window_keys};
}

void CudaBackend::MlaExpandedTensorCores(const MlaParams& params, TensorView q, TensorView kv_b,
                                         std::span<const MlaSequence> seqs, const MlaSequence* device_seqs,
                                         TensorView out) {
  const bool wgmma = impl_->mla_expanded_wgmma && MlaExpandedWgmmaRuns();
  const auto launch = wgmma ? LaunchMlaExpandedWgmma : LaunchMlaExpandedTc;
  const int64_t width = params.kv_lora_rank + params.qk_rope_dim;
  const int64_t kv_cols = params.num_heads * (params.qk_nope_dim + params.v_dim);
  const int64_t tile_cols = params.qk_nope_dim + params.qk_rope_dim + params.v_dim;
  // A bf16 kv_b takes the latent rows as the pages hold them and writes its product in bf16, the
  // rounding the key tiles give it anyway: a third of the bytes an fp32 product moves.
  const DType dtype = kv_b.dtype == DType::kBF16 ? DType::kBF16 : DType::kF32;
  const int64_t tile_rows = wgmma ? kMlaExpandedWgmmaRows : kMlaExpandedTcRows;
  const std::vector<MlaRowTile> row_tiles =
      MlaExpandedRowTiles(seqs.data(), static_cast<int64_t>(seqs.size()), tile_rows);
  // A sequence's keys and values for the attention: its key tiles, or, on the warpgroup kernel
  // with a bf16 kv_b, its gathered latent and kv rows themselves, read through tensor maps (no
  // tiles written: ~17 KB of buffers and of writes per key at the 48B shape instead of ~37).
  struct Expansion {
    Tensor key_tiles, latent, kv;
    MlaExpandedTileMaps maps{};
  };
  std::vector<Expansion> expanded(seqs.size());
  const bool through_maps = wgmma && dtype == DType::kBF16;
  // Positions [first, first + length) of sequence i into expanded[i].
  const auto expand = [&](size_t i, int64_t first, int64_t length) {
    Expansion& e = expanded[i];
    e.latent = Allocate(length, through_maps ? width : params.kv_lora_rank, dtype);
    DS_CUDA(LaunchMlaGatherLatent(device_seqs + i, first, width, e.latent.view(), impl_->Stream()), "mla gather");
    e.kv = Allocate(length, kv_cols, dtype);
    MatMul(e.latent.view().Cols(0, params.kv_lora_rank), kv_b, e.kv.view());
    if (impl_->failed()) return;
    if (through_maps && EncodeMlaExpandedTileMaps(params, e.kv.view(),
                                                  e.latent.view().Cols(params.kv_lora_rank, params.qk_rope_dim),
                                                  e.maps)) {
      return;
    }
    e.key_tiles = Allocate(params.num_heads * MlaExpandedKeyTiles(length) * kMlaExpandedTileKeys, tile_cols,
                           DType::kBF16);
    DS_CUDA(LaunchMlaExpandedKeysValues(params, e.kv.view(), device_seqs + i, first, length,
                                        e.key_tiles.view().data, impl_->Stream()),
            "mla expanded keys and values");
    e.latent = Tensor();  // freed in stream order, after the tiles are written
    e.kv = Tensor();
  };
  // The rows of the sequences in `group` over their keys and values in `window`, which then are
  // freed.
  const auto attend = [&](std::span<const size_t> group, const MlaKeyWindow& window) {
    std::vector<const void*> pointers(seqs.size(), nullptr);
    std::vector<MlaExpandedTileMaps> maps(seqs.size());
    std::vector<bool> in_group(seqs.size(), false);
    bool any_maps = false;
    for (const size_t i : group) {
      in_group[i] = true;
      pointers[i] = expanded[i].key_tiles.view().data;
      maps[i] = expanded[i].maps;
      any_maps = any_maps || pointers[i] == nullptr;
    }
    std::vector<MlaRowTile> tiles;
    int64_t most_keys = 0;  // of a tile in the window
    for (const MlaRowTile& tile : row_tiles) {
      const MlaSequence& seq = seqs[tile.seq];
      const int64_t last_position = seq.num_cached + std::min(seq.rows.length, tile.row + tile_rows) - 1;
      if (!in_group[tile.seq] || last_position < window.begin) continue;
      tiles.push_back(tile);
      const int64_t end = window.end > 0 ? std::min(window.end, last_position + 1) : last_position + 1;
      most_keys = std::max(most_keys, end - window.begin);
    }
    const int splits =
        MlaKeySplitCount(static_cast<int64_t>(tiles.size()) * params.num_heads, most_keys, impl_->multiprocessors);
    Tensor device_key_tiles = UploadBytes(pointers.data(), pointers.size() * sizeof(void*));
    Tensor device_tiles = UploadBytes(tiles.data(), tiles.size() * sizeof(MlaRowTile));
    Tensor device_maps;
    if (any_maps) device_maps = UploadBytes(maps.data(), maps.size() * sizeof(MlaExpandedTileMaps));
    Tensor split_out, split_lse;
    if (splits > 1) {
      const int64_t split_rows = splits * static_cast<int64_t>(tiles.size()) * tile_rows;
      split_out = Allocate(split_rows, out.cols, DType::kF32);
      split_lse = Allocate(split_rows, params.num_heads, DType::kF32);
    }
    if (impl_->failed()) return;
    MlaExpandedCall call;
    call.seqs = device_seqs;
    call.key_tiles = static_cast<const void* const*>(device_key_tiles.view().data);
    call.tile_maps = any_maps ? static_cast<const MlaExpandedTileMaps*>(device_maps.view().data) : nullptr;
    call.tiles = static_cast<const MlaRowTile*>(device_tiles.view().data);
    call.num_tiles = static_cast<int64_t>(tiles.size());
    call.window = window;
    call.splits = {splits, split_out.data<float>(), split_lse.data<float>()};
    DS_CUDA(launch(params, q, call, out, impl_->Stream()), "mla expanded (tensor cores)");
    if (splits > 1) {
      DS_CUDA(LaunchMlaExpandedMergeSplits(params, call, tile_rows, out, impl_->Stream()), "mla expanded splits");
    }
    for (const size_t i : group) expanded[i] = Expansion{};  // freed in stream order, after the attention
  };
  // Sequences whose keys fit in a window together share one launch; a longer one attends window
  // by window, each window's rows combined with the windows before by their log-sum-exps.
  const int64_t window_keys = impl_->mla_expanded_window_keys;
  std::vector<size_t> group;
  int64_t group_keys = 0;
  for (size_t i = 0; i < seqs.size() && !impl_->failed(); ++i) {
    if (seqs[i].form == MlaForm::kAbsorbed) continue;
    const int64_t length = seqs[i].num_cached + seqs[i].rows.length;
    if (window_keys == 0 || length <= window_keys) {
      if (window_keys > 0 && group_keys + length > window_keys) {
        attend(group, MlaKeyWindow{});
        group.clear();
        group_keys = 0;
      }
      expand(i, 0, length);
      group.push_back(i);
      group_keys += length;
      continue;
    }
    Tensor lse = Allocate(q.rows, params.num_heads, DType::kF32);
    for (int64_t begin = 0; begin < length && !impl_->failed(); begin += window_keys) {
      const int64_t end = std::min(length, begin + window_keys);
      expand(i, begin, end - begin);
      const size_t one[] = {i};
      attend(one, MlaKeyWindow{begin, end, lse.data<float>(), begin > 0});
    }
  }
  if (!group.empty() && !impl_->failed()) attend(group, MlaKeyWindow{});
}

void CudaBackend::MoeRoute(TensorView router_logits, TensorView correction_bias,
                           const MoeRouting& routing, TensorView expert_ids, TensorView weights) {
  Bind();
  const OpScope scope(impl_->Profile(), "MoeRoute");
  if (router_logits.rows == 0) return;
  DS_CUDA(LaunchMoeRoute(router_logits, correction_bias, routing, expert_ids, weights, impl_->Stream()),
          "moe route");
}

CudaBackend::TableOutcome CudaBackend::ExpertTable(std::span<const ExpertWeights> experts, int64_t first_expert,
                                                  const ExpertWeights* shared, int64_t hidden,
                                                  MoeExpertTable& table) {
  if (impl_->moe_experts != MoeExpertsKernel::kGrouped ||
      impl_->matmul_precision != MatmulPrecision::kHalf || experts.empty()) {
    return TableOutcome::kNotApplicable;
  }
  const int64_t inner = experts[0].gate.rows;
  if (!MoeGroupedSupports(hidden, inner, experts[0].gate.dtype)) return TableOutcome::kNotApplicable;
  const auto contiguous = [](const TensorView& w, int64_t rows, int64_t cols) {
    return w.dtype == DType::kBF16 && w.rows == rows && w.cols == cols && w.row_stride == cols;
  };
  const size_t n = experts.size(), entries = n + (shared != nullptr ? 1 : 0);
  std::vector<const void*> host(3 * entries);
  for (size_t e = 0; e < entries; ++e) {
    const ExpertWeights& w = e < n ? experts[e] : *shared;
    if (!contiguous(w.gate, inner, hidden) || !contiguous(w.up, inner, hidden) ||
        !contiguous(w.down, hidden, inner)) {
      return TableOutcome::kNotApplicable;
    }
    host[e] = w.gate.data, host[entries + e] = w.up.data, host[2 * entries + e] = w.down.data;
  }
  const std::lock_guard<std::mutex> lock(impl_->expert_pointers_mutex);
  Impl::ExpertPointers& pointers = impl_->expert_pointers[{experts.data(), n, shared != nullptr}];
  if (pointers.device == nullptr) {
    pointers.device = static_cast<const void**>(impl_->AllocateWeight(host.size() * sizeof(void*)));
  }
  if (pointers.host != host && impl_->Mode() != GraphMode::kNone && impl_->Mode() != GraphMode::kMeasure) {
    impl_->graphs->MarkBroken("expert pointers change inside a step graph");
    return TableOutcome::kFailed;
  }
  if (pointers.host != host) {
    // Stream-ordered: kernels queued earlier still read the previous pointers.
    if (pointers.device == nullptr ||
        !impl_->Ok(cudaMemcpyAsync(pointers.device, host.data(), host.size() * sizeof(void*),
                                   cudaMemcpyHostToDevice, impl_->Stream()),
                   "upload expert pointers")) {
      return TableOutcome::kFailed;
    }
    if (!UploadWideTileMaps(host, entries, inner, hidden, pointers.maps_storage, pointers.wide_tile_maps)) {
      return TableOutcome::kFailed;
    }
    pointers.host = std::move(host);
  }
  table.gate = pointers.device;
  table.up = pointers.device + entries;
  table.down = pointers.device + 2 * entries;
  table.num_local = static_cast<int64_t>(n);
  table.first_expert = first_expert;
  table.inner = inner;
  table.wide_tile_maps = pointers.wide_tile_maps;
  return TableOutcome::kReady;
}

bool CudaBackend::UploadWideTileMaps(const std::vector<const void*>& pointers, size_t entries, int64_t inner,
                                     int64_t hidden, void*& storage, const void*& maps) {
  maps = nullptr;  // until encoded: the wide tiles are not taken; the other grouped kernels read the pointers
  std::vector<MoeWideTileMaps> host(entries);
  for (size_t e = 0; e < entries; ++e) {
    if (!EncodeMoeWideTileMaps(pointers[e], pointers[entries + e], pointers[2 * entries + e], inner, hidden,
                               host[e])) {
      return true;
    }
  }
  const size_t bytes = entries * sizeof(MoeWideTileMaps);
  if (storage == nullptr) storage = impl_->AllocateWeight(bytes);  // 256-byte aligned
  if (storage == nullptr ||
      !impl_->Ok(cudaMemcpyAsync(storage, host.data(), bytes, cudaMemcpyHostToDevice, impl_->Stream()),
                 "upload expert tensor maps")) {
    return false;
  }
  maps = storage;
  return true;
}

bool CudaBackend::MoeExpertsGrouped(TensorView x, TensorView expert_ids,
                                    std::span<const ExpertWeights> experts, int64_t first_expert,
                                    TensorView slot_out) {
  MoeExpertTable table;
  switch (ExpertTable(experts, first_expert, nullptr, x.cols, table)) {
    case TableOutcome::kNotApplicable: return false;
    case TableOutcome::kFailed: return true;  // the caller's operation ends here too
    case TableOutcome::kReady: break;
  }
  const int64_t hidden = x.cols, inner = table.inner;
  const int64_t slots = x.rows * expert_ids.cols;
  // bf16 slot rows (MoeSlotDType) go to the grouped kernels, which refuse them off the wide tiles.
  const bool f32_slots = slot_out.dtype == DType::kF32;
  if (f32_slots && UsesCublasGroupedExperts(slots)) {
    Tensor scratch = AllocateBytes(MoeGroupedRowsScratchBytes(x.rows, expert_ids.cols, table.num_local, hidden, inner));
    if (!impl_->failed()) {
      RunMoeCublasGrouped(impl_->Blas(), impl_->Stream(), impl_->failures, x, expert_ids, experts, first_expert,
                          scratch.view().data, slot_out);
    }
    return true;
  }
  const bool decode = f32_slots && UsesDecodeExperts(x, slots);
  const size_t bytes = decode ? MoeDecodeScratchBytes(slots, inner)
                              : MoeGroupedScratchBytes(x.rows, expert_ids.cols, table.num_local, hidden, inner);
  Tensor scratch = AllocateBytes(bytes);
  if (!impl_->failed() && impl_->Issue()) {
    void* space = scratch.view().data;
    impl_->Ok(static_cast<cudaError_t>(
                  decode ? LaunchMoeDecodeExperts(x, expert_ids, table, space, slot_out, impl_->Stream(),
                                                  impl_->programmatic_products)
                         : LaunchMoeGroupedExperts(x, expert_ids, table, space, slot_out, impl_->Stream(),
                                                   impl_->moe_wide_tiles_min_rows)),
              decode ? "moe decode experts" : "moe grouped experts");
  }
  return true;
}

bool CudaBackend::UsesCublasGroupedExperts(int64_t slots) const {
  return impl_->moe_cublas_grouped_min_slots > 0 && slots >= impl_->moe_cublas_grouped_min_slots &&
         impl_->Mode() == GraphMode::kNone;
}

bool CudaBackend::UsesDecodeExperts(TensorView x, int64_t slots) const {
  return slots <= impl_->moe_decode_max_slots && MoeDecodeSupports(x, slots);
}

DType CudaBackend::MoeSlotDType(TensorView x, int64_t top_k, std::span<const ExpertWeights> experts) {
  Bind();
  const int64_t slots = x.rows * top_k;
  MoeExpertTable table;
  if (slots == 0 || UsesCublasGroupedExperts(slots) || UsesDecodeExperts(x, slots) ||
      ExpertTable(experts, 0, nullptr, x.cols, table) != TableOutcome::kReady) {
    return DType::kF32;
  }
  return MoeGroupedWideTiles(slots, table, impl_->moe_wide_tiles_min_rows) ? DType::kBF16 : DType::kF32;
}

void CudaBackend::MoeExperts(TensorView x, TensorView expert_ids, std::span<const ExpertWeights> experts,
                             int64_t first_expert, TensorView slot_out) {
  Bind();
  const OpScope scope(impl_->Profile(), "MoeExperts");
  const int64_t t = x.rows, k = expert_ids.cols, hidden = x.cols;
  if (t == 0 || impl_->failed()) return;
  if (MoeExpertsGrouped(x, expert_ids, experts, first_expert, slot_out)) return;
  if (slot_out.dtype != DType::kF32) {
    DS_CUDA(cudaErrorInvalidValue, "moe experts: bf16 slot rows without the grouped expert tiles");
    return;
  }
  // Group (token, slot) pairs by expert on the host; one gate/up/down product per active expert.
  std::vector<int32_t> ids(static_cast<size_t>(t * k));
  Download(expert_ids, ids.data());
  const int64_t local = static_cast<int64_t>(experts.size());
  std::map<int64_t, std::pair<std::vector<int64_t>, std::vector<int64_t>>> groups;  // tokens, slots
  for (int64_t slot = 0; slot < t * k; ++slot) {
    const int64_t e = ids[static_cast<size_t>(slot)] - first_expert;
    if (e < 0 || e >= local) continue;
    groups[e].first.push_back(slot / k);
    groups[e].second.push_back(slot);
  }
  for (const auto& [e, rows] : groups) {
    const ExpertWeights& w = experts[static_cast<size_t>(e)];
    const int64_t m = static_cast<int64_t>(rows.first.size());
    const int64_t inner = w.gate.rows;
    Tensor input = Allocate(m, hidden, DType::kF32);
    GatherRows(x, rows.first, input.view());
    Tensor gate = Allocate(m, inner, DType::kF32);
    Tensor up = Allocate(m, inner, DType::kF32);
    MatMul(input.view(), w.gate, gate.view());
    MatMul(input.view(), w.up, up.view());
    SwiGlu(gate.view(), up.view(), gate.view());
    MatMul(gate.view(), w.down, input.view());
    Tensor slots = UploadBytes(rows.second.data(), rows.second.size() * sizeof(int64_t));
    DS_CUDA(LaunchScatterRows(input.view(), slots.data<int64_t>(), m, slot_out, impl_->Stream()),
            "scatter rows");
  }
}

void CudaBackend::MoeFfn(TensorView x, TensorView router, TensorView correction_bias, const MoeRouting& routing,
                         std::span<const ExpertWeights> experts, const ExpertWeights* shared, TensorView out) {
  Bind();
  // Decode sizes: the router alone, then the routed and shared experts and the combine in two
  // launches (LaunchMoeDecodeFfn); otherwise the composition.
  const int64_t t = x.rows, k = routing.top_k, per_token = k + (shared != nullptr ? 1 : 0);
  if (impl_->failed()) return;
  MoeExpertTable table;
  const bool decode = t > 0 && t * k <= std::min(impl_->moe_fused_max_slots, impl_->moe_decode_max_slots) &&
                      per_token <= kMoeDecodeFfnMaxSlots && out.dtype == DType::kF32 &&
                      MoeDecodeSupports(x, t * per_token);
  const TableOutcome outcome =
      decode ? ExpertTable(experts, 0, shared, x.cols, table) : TableOutcome::kNotApplicable;
  if (outcome == TableOutcome::kNotApplicable) {
    Backend::MoeFfn(x, router, correction_bias, routing, experts, shared, out);
    return;
  }
  if (outcome == TableOutcome::kFailed) return;
  RoutedMoe routed = RouteMoe(*this, x, router, correction_bias, routing, nullptr);
  const OpScope scope(impl_->Profile(), "MoeFfn");
  const size_t bytes = MoeDecodeScratchBytes(t * per_token, table.inner);
  Tensor scratch = AllocateBytes(bytes);
  if (!impl_->failed() && impl_->Issue()) {
    impl_->Ok(static_cast<cudaError_t>(LaunchMoeDecodeFfn(x, routed.ids.view(), routed.weights.view(), table,
                                                          shared != nullptr, scratch.view().data, out,
                                                          impl_->Stream(), impl_->programmatic_products)),
              "moe decode ffn");
  }
}

void CudaBackend::MoeCombine(TensorView slot_out, TensorView weights, TensorView out) {
  Bind();
  const OpScope scope(impl_->Profile(), "MoeCombine");
  if (out.rows == 0) return;
  DS_CUDA(LaunchMoeCombine(slot_out, weights, out, impl_->Stream()), "moe combine");
}

void CudaBackend::ArgmaxRows(TensorView x, TensorView ids) {
  Bind();
  const OpScope scope(impl_->Profile(), "ArgmaxRows");
  DS_CUDA(LaunchArgmaxRows(x, ids, impl_->Stream()), "argmax rows");
}

void CudaBackend::SampleRows(TensorView x, std::span<const RowSampling> draws, TensorView ids) {
  Bind();
  const OpScope scope(impl_->Profile(), "SampleRows");
  if (x.rows == 0) return;
  if (static_cast<int64_t>(draws.size()) != x.rows) {
    impl_->Ok(cudaErrorInvalidValue, "sample rows (a draw per row)");
    return;
  }
  Tensor device_draws = UploadBytes(draws.data(), draws.size_bytes());
  DS_CUDA(LaunchSampleRows(x, static_cast<const RowSampling*>(device_draws.view().data), ids, impl_->Stream()),
          "sample rows");
}

void CudaBackend::ApplyPenalties(TensorView x, std::span<const LogitPenalty> penalties) {
  Bind();
  const OpScope scope(impl_->Profile(), "ApplyPenalties");
  if (penalties.empty()) return;
  Tensor device_penalties = UploadBytes(penalties.data(), penalties.size_bytes());
  DS_CUDA(LaunchApplyPenalties(x, static_cast<const LogitPenalty*>(device_penalties.view().data),
                               static_cast<int64_t>(penalties.size()), impl_->Stream()),
          "apply penalties");
}

}  // namespace deltaserve::kernels::cuda

// tensorrt_backend.hpp -- diffv2iqa::GraphBackend on TensorRT's runtime API (nvinfer1), and the stream schedule of
// one batch (TensorRTPipeline).
//
// Compiled against TensorRT 10.16 and 11.1 headers; never linked or run (no TensorRT library or GPU was available).
// tests/test_cpp_tensorrt.py compiles it (g++ -fsyntax-only) against both header sets and the CUDA 13 runtime headers.
//
// Only the runtime API that TensorRT 11 kept: createInferRuntime, IRuntime::deserializeCudaEngine(blob, size),
// ICudaEngine::createExecutionContext(ExecutionContextAllocationStrategy), getTensorIOMode / getTensorDataType /
// getTensorShape / getTensorLocation / getTensorFormat, getDeviceMemorySizeV2, IExecutionContext::setInputShape /
// setTensorAddress / getTensorShape / enqueueV3. Where 10.x and 11.x differ, tensorrt_backend.cpp branches on
// NV_TENSORRT_MAJOR in one place (its "TensorRT 10 / 11" section).
#ifndef DIFFV2IQA_TENSORRT_BACKEND_HPP
#define DIFFV2IQA_TENSORRT_BACKEND_HPP

#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <array>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "diffv2iqa/backend.hpp"

namespace diffv2iqa {
namespace trt {

// TensorRT's messages to stderr (from `threshold` up), and the last error kept for the exception texts. TensorRT may
// call log() from several threads at once: it is serialised by a mutex.
class Logger final : public nvinfer1::ILogger {
public:
    explicit Logger(Severity threshold = Severity::kWARNING) noexcept : threshold_(threshold) {}
    void log(Severity severity, nvinfer1::AsciiChar const* msg) noexcept override;
    std::string last_error() const;  // "" when TensorRT reported no error yet

private:
    Severity threshold_;
    mutable std::mutex mutex_;
    std::string last_error_;
};

// TensorRT 10+ objects are released with delete.
template <typename T>
using Owned = std::unique_ptr<T>;

// The runtime and the three deserialized engines: loaded once, checked against the graph contract, then only read.
// Shared (std::shared_ptr) by every set of execution contexts made from it.
class TensorRTEngines {
public:
    struct Paths {
        std::string restore_step, vcg, vda;  // engines/<graph>.<precision>.plan of a bundle
    };

    // Reads the three plan files, deserializes them and checks every I/O tensor against the contract: throws
    // std::runtime_error naming the graph (and tensor) on any failure.
    static std::shared_ptr<const TensorRTEngines> load(const Paths& paths,
                                                       nvinfer1::ILogger::Severity log_threshold =
                                                           nvinfer1::ILogger::Severity::kWARNING);

    nvinfer1::ICudaEngine& engine(Graph g) const { return *engines_[index(g)]; }
    Logger& logger() const { return *logger_; }
    // ICudaEngine::getDeviceMemorySizeV2(): the device memory each execution context of that graph allocates.
    std::int64_t device_memory_bytes(Graph g) const { return device_memory_[index(g)]; }
    // The crop size S fixed in the branch engines, or -1 where they leave it dynamic.
    std::int64_t crop_size() const { return crop_size_; }

    static std::size_t index(Graph g) { return static_cast<std::size_t>(g); }

private:
    TensorRTEngines() = default;
    // Declaration order is destruction order reversed: engines go before the runtime, the runtime before the logger.
    std::unique_ptr<Logger> logger_;
    Owned<nvinfer1::IRuntime> runtime_;
    std::array<Owned<nvinfer1::ICudaEngine>, 3> engines_;
    std::array<std::int64_t, 3> device_memory_{};
    std::int64_t crop_size_ = -1;
};

// One set of execution contexts: one IExecutionContext per graph in `graphs`, each with its own activation memory
// (ExecutionContextAllocationStrategy::kSTATIC, getDeviceMemorySizeV2() bytes). Two sets never share state, so two
// sets may run the same graph on two streams at once; one set must not.
class TensorRTBackend final : public GraphBackend {
public:
    TensorRTBackend(std::shared_ptr<const TensorRTEngines> engines, std::string label,
                    std::vector<Graph> graphs = all_graphs());
    static std::vector<Graph> all_graphs() { return {kGraphs.begin(), kGraphs.end()}; }

    void restore_step(const DeviceTensor& x, const DeviceTensor& y, const DeviceTensor& gamma,
                      const DeviceTensor& coef, const DeviceTensor& z, DeviceTensor& y_next, Stream stream) override;
    void vcg(const DeviceTensor& x, const DeviceTensor& y0, const DeviceTensor& y_t1, const DeviceTensor& y_t2,
             DeviceTensor& score, Stream stream) override;
    void vda(const DeviceTensor& x, const DeviceTensor& y0, const DeviceTensor& y_t1, const DeviceTensor& y_t2,
             DeviceTensor& score, Stream stream) override;

    // The device memory this set's contexts hold (sum of getDeviceMemorySizeV2() over its graphs).
    std::int64_t device_memory_bytes() const noexcept { return device_memory_; }
    const std::string& label() const noexcept { return label_; }

private:
    struct Binding {
        const char* name;
        const DeviceTensor* tensor;
    };
    void run(Graph g, const std::vector<Binding>& inputs, const Binding& output, Stream stream);

    std::shared_ptr<const TensorRTEngines> engines_;  // outlives the contexts below (declared first)
    std::string label_;
    std::array<Owned<nvinfer1::IExecutionContext>, 3> contexts_;  // null: graph not in this set
    std::int64_t device_memory_ = 0;
};

// The schedule of one batch, as the C++ scoring library will run it (docs/bundle.md, "Loop"):
//
//   loop stream:    y = bank[T] (broadcast)   restore_step x T   cut the crops   [fork]  -> next batch's loop
//   vcg stream:                                                  wait fork: vcg per crop, scores to host   [join]
//   vda stream:                                                  wait fork: vda per crop, scores to host   [join]
//
// Fork: cudaEventRecord on the loop stream, cudaStreamWaitEvent on each branch stream. Join: an event recorded on
// each branch stream; the next batch's loop stream waits on them before it overwrites the crop buffers (the next
// batch's restore_step steps run meanwhile, overlapping this batch's branches), and collect() waits on them for the
// scores. The loop set of contexts serves the loop stream, the branch set the two branch streams.
class TensorRTPipeline {
public:
    // kForkJoin: the schedule above. kSerial: the branches follow on the loop stream with the loop set's contexts
    // (one stream in all: for a CUDA graph capture of a whole batch, or to measure what the fork gains).
    enum class Schedule { kForkJoin, kSerial };

    // Device tables of a batch of B images, H x W, T steps. Rows must start 256-byte aligned (TensorRT's rule for a
    // tensor address): `table_stride` (floats from row i to row i+1 of gamma and of coef) a multiple of 64, at
    // least 5 * B; bank rows are 3 * H * W floats, so H * W must be a multiple of 64. Only read.
    struct Batch {
        DeviceTensor x;             // [B,3,H,W], normalised
        float* gamma;               // row i: gamma[i] for each image, B floats
        float* coef;                // row i: coef[i] for each image, B x 5 floats
        std::int64_t table_stride;
        float* bank;                // [T+1,1,3,H,W]: row T is y_T, row i the noise of step i
        std::int32_t steps;         // T
        std::int32_t capture_t1, capture_t2;
    };
    // Work buffers, device, [B,3,H,W] each, owned by the caller.
    struct RestoreBuffers {
        DeviceTensor ping, pong, y_t1, y_t2;
    };
    struct Crop {
        std::int64_t top, left;
    };
    // Per crop: its four inputs [B,3,S,S] and the two device scores [B]. One set per crop, so all crops are cut
    // before the fork and the branches read them while the loop stream moves on to the next batch.
    struct CropBuffers {
        DeviceTensor x, y0, y_t1, y_t2, vcg_score, vda_score;
    };
    struct Fusion {
        float vcg_weight, vda_weight;  // a branch with weight 0 is not run
    };

    explicit TensorRTPipeline(std::shared_ptr<const TensorRTEngines> engines, Schedule schedule = Schedule::kForkJoin);
    ~TensorRTPipeline();
    TensorRTPipeline(const TensorRTPipeline&) = delete;
    TensorRTPipeline& operator=(const TensorRTPipeline&) = delete;

    // Enqueues the loop, the crops and both branches of one batch and returns at once. `host_vcg` / `host_vda`
    // receive crops.size() x B scores (crop-major); pinned host memory keeps those copies asynchronous. Enqueue the
    // next batch before collecting this one to overlap its loop with this batch's branches; each batch in flight
    // needs its own host score buffers.
    void enqueue(const Batch& batch, RestoreBuffers& buffers, const std::vector<Crop>& crops,
                 std::vector<CropBuffers>& crop_buffers, Fusion fusion, float* host_vcg, float* host_vda);
    // Waits for the oldest batch in flight (its join events) and returns its fused scores, one per image: the mean
    // over crops of vcg_weight * VCG + vda_weight * VDA.
    std::vector<float> collect();

private:
    struct StreamDelete {
        void operator()(cudaStream_t s) const noexcept;  // synchronises, then destroys
    };
    struct EventDelete {
        void operator()(cudaEvent_t e) const noexcept;
    };
    using StreamHandle = std::unique_ptr<std::remove_pointer_t<cudaStream_t>, StreamDelete>;
    using EventHandle = std::unique_ptr<std::remove_pointer_t<cudaEvent_t>, EventDelete>;
    // A batch whose branches may still run: its join events and what collect() needs.
    struct Pending {
        EventHandle join_vcg, join_vda;
        Fusion fusion;
        std::int64_t batch, crops;
        const float* host_vcg;
        const float* host_vda;
    };

    void check(cudaError_t status, const char* what) const;
    StreamHandle make_stream() const;
    EventHandle make_event() const;

    std::shared_ptr<const TensorRTEngines> engines_;
    Schedule schedule_;
    TensorRTBackend loop_set_;    // restore_step (kSerial: all three graphs, all on the loop stream)
    TensorRTBackend branch_set_;  // vcg and vda, each on its own stream (kSerial: no context)
    // Destroyed before the contexts above: each stream synchronises first, so no enqueued work outlives them.
    StreamHandle loop_, vcg_stream_, vda_stream_;
    EventHandle fork_;
    std::deque<Pending> pending_;
};

}  // namespace trt
}  // namespace diffv2iqa

#endif  // DIFFV2IQA_TENSORRT_BACKEND_HPP

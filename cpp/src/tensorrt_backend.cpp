// tensorrt_backend.cpp -- see tensorrt_backend.hpp.
//
// Compiled against TensorRT 10.16 and 11.1 headers; never linked or run (no TensorRT library or GPU was available).
// Every TensorRT call that reports success is checked; a failure throws std::runtime_error naming the graph, the
// tensor where there is one, and TensorRT's last logged error.
#include "tensorrt_backend.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <sstream>
#include <stdexcept>
#include <type_traits>
#include <utility>

namespace diffv2iqa {
namespace trt {

// ---- TensorRT 10 / 11 ------------------------------------------------------------------------------------------
// The one place this backend branches on the TensorRT major. The runtime calls it makes are declared alike in the
// 10.16 and 11.1 headers; what 11 removed (createExecutionContextWithoutDeviceMemory, getDeviceMemorySize() and
// ...ForProfile() without V2, setDynamicRange, the implicit-batch queries, enqueueV2/execute) is not used, and the
// test compiles with -Werror, so a call to anything 10.16 marks deprecated fails the build.
#if NV_TENSORRT_MAJOR == 10
// 10.x: nvinfer1::ILogger is a plain interface.
constexpr bool kLoggerIsVersioned = false;
#elif NV_TENSORRT_MAJOR == 11
// 11.x: nvinfer1::ILogger is v_1_0::ILogger, an IVersionedInterface; TensorRT implements getInterfaceInfo() and
// Logger overrides log() only, as under 10.
constexpr bool kLoggerIsVersioned = true;
#else
#error "the TensorRT backend targets TensorRT 10 and 11 (diffv2iqa_trt.contract.TRT_MAJORS)"
#endif
static_assert(std::is_base_of<nvinfer1::IVersionedInterface, nvinfer1::ILogger>::value == kLoggerIsVersioned,
              "ILogger's base class is not what this TensorRT major should have");

namespace {

// The library loaded at run time must be the major these headers describe (NV_TENSORRT_VERSION is
// major * 10000 + minor * 100 + patch in both).
void check_library_version() {
    const std::int32_t lib = getInferLibVersion();
    if (lib / 10000 != NV_TENSORRT_MAJOR) {
        throw std::runtime_error("TensorRT library " + std::to_string(lib) + " is not the major " +
                                 std::to_string(NV_TENSORRT_MAJOR) + " these sources were compiled for (" +
                                 std::to_string(NV_TENSORRT_VERSION) + ")");
    }
}

}  // namespace

// ---- Logger ----------------------------------------------------------------------------------------------------

namespace {
const char* severity_name(nvinfer1::ILogger::Severity s) noexcept {
    using S = nvinfer1::ILogger::Severity;
    switch (s) {
        case S::kINTERNAL_ERROR: return "internal error";
        case S::kERROR: return "error";
        case S::kWARNING: return "warning";
        case S::kINFO: return "info";
        case S::kVERBOSE: return "verbose";
    }
    return "?";
}
}  // namespace

void Logger::log(Severity severity, nvinfer1::AsciiChar const* msg) noexcept {
    try {
        const char* text = msg != nullptr ? msg : "";
        std::lock_guard<std::mutex> lock(mutex_);
        if (severity <= Severity::kERROR) last_error_ = text;
        if (severity <= threshold_) std::fprintf(stderr, "[TensorRT %s] %s\n", severity_name(severity), text);
    } catch (...) {
        // log() must not throw into TensorRT; a lost message is the lesser harm.
    }
}

std::string Logger::last_error() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return last_error_;
}

// ---- helpers ---------------------------------------------------------------------------------------------------

namespace {

std::string dims_string(const nvinfer1::Dims& d) {
    std::string s = "[";
    for (std::int32_t i = 0; i < d.nbDims; ++i) s += (i ? "," : "") + std::to_string(d.d[i]);
    return s + "]";
}

const char* dtype_name(nvinfer1::DataType t) noexcept {
    using D = nvinfer1::DataType;
    switch (t) {
        case D::kFLOAT: return "float32";
        case D::kHALF: return "float16";
        case D::kBF16: return "bfloat16";
        case D::kINT8: return "int8";
        case D::kINT32: return "int32";
        case D::kINT64: return "int64";
        case D::kBOOL: return "bool";
        case D::kUINT8: return "uint8";
        default: return "another type";
    }
}

nvinfer1::Dims to_dims(const DeviceTensor& t) {
    nvinfer1::Dims d{};
    d.nbDims = t.rank;
    for (std::int32_t i = 0; i < t.rank; ++i) d.d[i] = t.dim(i);
    return d;
}

bool same_shape(const nvinfer1::Dims& d, const DeviceTensor& t) {
    if (d.nbDims != t.rank) return false;
    for (std::int32_t i = 0; i < t.rank; ++i)
        if (d.d[i] != t.dim(i)) return false;
    return true;
}

std::vector<char> read_file(const std::string& path, const char* graph) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error(std::string(graph) + ": cannot open the engine file " + path);
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (bytes.empty()) throw std::runtime_error(std::string(graph) + ": the engine file " + path + " is empty");
    return bytes;
}

std::string with_trt_error(std::string what, const Logger& logger) {
    const std::string last = logger.last_error();
    return last.empty() ? what : what + " (TensorRT: " + last + ")";
}

// The engine's I/O tensors against the contract (names, directions, float32, device, linear layout, rank and fixed
// dimensions). Returns the crop size S for the branch graphs (-1 when dynamic), 0 for restore_step.
std::int64_t check_engine(Graph g, const nvinfer1::ICudaEngine& engine) {
    const std::string graph = graph_name(g);
    const std::vector<TensorSpec> specs = graph_tensors(g);
    auto fail = [&](const std::string& what) { return std::runtime_error(graph + ": " + what); };

    std::string names;
    const std::int32_t n = engine.getNbIOTensors();
    for (std::int32_t i = 0; i < n; ++i) names += std::string(i ? ", " : "") + engine.getIOTensorName(i);
    if (n != static_cast<std::int32_t>(specs.size()))
        throw fail("the engine has " + std::to_string(n) + " I/O tensors (" + names + "), the contract " +
                   std::to_string(specs.size()));

    for (const TensorSpec& spec : specs) {
        const std::string t = std::string("tensor '") + spec.name + "'";
        const nvinfer1::TensorIOMode mode = engine.getTensorIOMode(spec.name);
        if (mode == nvinfer1::TensorIOMode::kNONE) throw fail("the engine has no " + t + " (it has " + names + ")");
        const nvinfer1::TensorIOMode want = spec.is_input ? nvinfer1::TensorIOMode::kINPUT
                                                          : nvinfer1::TensorIOMode::kOUTPUT;
        if (mode != want)
            throw fail(t + " is an " + (spec.is_input ? "output" : "input") + " of the engine, the contract's " +
                       (spec.is_input ? "input" : "output"));
        const nvinfer1::DataType dtype = engine.getTensorDataType(spec.name);
        if (dtype != nvinfer1::DataType::kFLOAT)
            throw fail(t + " is " + dtype_name(dtype) + "; every variant keeps float32 inputs and outputs");
        if (engine.getTensorLocation(spec.name) != nvinfer1::TensorLocation::kDEVICE)
            throw fail(t + " lives on the host; the contract's tensors live on the device");
        if (engine.getTensorFormat(spec.name) != nvinfer1::TensorFormat::kLINEAR)
            throw fail(t + " is not in the linear (row-major) format");
        const nvinfer1::Dims d = engine.getTensorShape(spec.name);
        if (d.nbDims != spec.rank)
            throw fail(t + " has rank " + std::to_string(d.nbDims) + " " + dims_string(d) + ", the contract " +
                       std::to_string(spec.rank));
        for (std::int32_t i = 0; i < spec.rank; ++i) {
            const std::int64_t want_dim = spec.dims[static_cast<std::size_t>(i)];
            if (want_dim >= 0 && d.d[i] >= 0 && d.d[i] != want_dim)
                throw fail(t + " has shape " + dims_string(d) + ": dimension " + std::to_string(i) + " must be " +
                           std::to_string(want_dim));
        }
    }
    if (g == Graph::kRestoreStep) return 0;
    const nvinfer1::Dims x = engine.getTensorShape("x");
    if (x.d[2] >= 0 && x.d[3] >= 0 && x.d[2] != x.d[3])
        throw fail("crops must be square, the engine's x is " + dims_string(x));
    return x.d[2] >= 0 ? x.d[2] : x.d[3];
}

}  // namespace

// ---- TensorRTEngines -------------------------------------------------------------------------------------------

std::shared_ptr<const TensorRTEngines> TensorRTEngines::load(const Paths& paths,
                                                            nvinfer1::ILogger::Severity log_threshold) {
    check_library_version();
    std::shared_ptr<TensorRTEngines> e(new TensorRTEngines());
    e->logger_ = std::make_unique<Logger>(log_threshold);
    e->runtime_.reset(nvinfer1::createInferRuntime(*e->logger_));
    if (!e->runtime_) throw std::runtime_error(with_trt_error("createInferRuntime failed", *e->logger_));

    const std::array<const std::string*, 3> files = {&paths.restore_step, &paths.vcg, &paths.vda};
    for (Graph g : kGraphs) {
        const std::size_t i = index(g);
        const std::vector<char> blob = read_file(*files[i], graph_name(g));
        e->engines_[i].reset(e->runtime_->deserializeCudaEngine(blob.data(), blob.size()));
        if (!e->engines_[i]) {
            throw std::runtime_error(with_trt_error(
                std::string(graph_name(g)) + ": deserializeCudaEngine failed for " + *files[i] +
                    "; an engine runs only under the TensorRT version and on the GPU it was built for: rebuild "
                    "with `diffv2iqa-trt build --target tensorrt --from-bundle B --out B --overwrite`",
                *e->logger_));
        }
        const std::int64_t s = check_engine(g, *e->engines_[i]);
        if (g != Graph::kRestoreStep) {
            if (e->crop_size_ >= 0 && s >= 0 && s != e->crop_size_)
                throw std::runtime_error(std::string(graph_name(g)) + ": crop size " + std::to_string(s) +
                                         ", the other branch engine's is " + std::to_string(e->crop_size_));
            if (s >= 0) e->crop_size_ = s;
        }
        e->device_memory_[i] = e->engines_[i]->getDeviceMemorySizeV2();
        const std::string report = std::string(graph_name(g)) + ": " + std::to_string(e->device_memory_[i]) +
                                   " bytes of device memory per execution context (getDeviceMemorySizeV2), " +
                                   std::to_string(e->engines_[i]->getNbOptimizationProfiles()) +
                                   " optimisation profile(s)";
        e->logger_->log(nvinfer1::ILogger::Severity::kINFO, report.c_str());
    }
    return e;
}

// ---- TensorRTBackend -------------------------------------------------------------------------------------------

TensorRTBackend::TensorRTBackend(std::shared_ptr<const TensorRTEngines> engines, std::string label,
                                 std::vector<Graph> graphs)
    : engines_(std::move(engines)), label_(std::move(label)) {
    if (!engines_) throw std::invalid_argument("TensorRTBackend: no engines");
    for (Graph g : graphs) {
        const std::size_t i = TensorRTEngines::index(g);
        if (contexts_[i]) throw std::invalid_argument(label_ + ": " + graph_name(g) + " named twice");
        contexts_[i].reset(
            engines_->engine(g).createExecutionContext(nvinfer1::ExecutionContextAllocationStrategy::kSTATIC));
        if (!contexts_[i]) {
            throw std::runtime_error(with_trt_error(
                label_ + " contexts, " + graph_name(g) + ": createExecutionContext failed; it allocates " +
                    std::to_string(engines_->device_memory_bytes(g)) + " bytes of device memory",
                engines_->logger()));
        }
        contexts_[i]->setName((label_ + "/" + graph_name(g)).c_str());  // TensorRT copies the name
        device_memory_ += engines_->device_memory_bytes(g);
    }
    const std::string report = label_ + " contexts: " + std::to_string(device_memory_) + " bytes of device memory";
    engines_->logger().log(nvinfer1::ILogger::Severity::kINFO, report.c_str());
}

void TensorRTBackend::run(Graph g, const std::vector<Binding>& inputs, const Binding& output, Stream stream) {
    const std::string graph = graph_name(g);
    nvinfer1::IExecutionContext* ctx = contexts_[TensorRTEngines::index(g)].get();
    if (ctx == nullptr) throw std::logic_error(label_ + " contexts: this set has no " + graph + " context");
    if (stream.handle == nullptr)
        throw std::invalid_argument(graph + ": pass a created stream, not the legacy default stream (nullptr)");
    auto fail = [&](const std::string& what) {
        return std::runtime_error(with_trt_error(label_ + "/" + graph + ": " + what, engines_->logger()));
    };
    auto bind = [&](const Binding& b) {
        if (reinterpret_cast<std::uintptr_t>(b.tensor->data) % 256 != 0)
            throw std::invalid_argument(graph + ": tensor '" + b.name +
                                        "' is not 256-byte aligned, as TensorRT requires of a tensor address");
        if (!ctx->setTensorAddress(b.name, b.tensor->data))
            throw fail(std::string("setTensorAddress('") + b.name + "') failed");
    };

    for (const Binding& in : inputs) {
        if (!ctx->setInputShape(in.name, to_dims(*in.tensor)))
            throw fail(std::string("setInputShape('") + in.name + "', " + shape_string(*in.tensor) +
                       ") failed: outside the engine's optimisation profile?");
        bind(in);
    }
    const nvinfer1::Dims out = ctx->getTensorShape(output.name);
    if (!same_shape(out, *output.tensor))
        throw fail(std::string("for these inputs the engine's '") + output.name + "' is " + dims_string(out) +
                   ", the buffer " + shape_string(*output.tensor));
    bind(output);
    if (!ctx->enqueueV3(static_cast<cudaStream_t>(stream.handle))) throw fail("enqueueV3 failed");
}

void TensorRTBackend::restore_step(const DeviceTensor& x, const DeviceTensor& y, const DeviceTensor& gamma,
                                   const DeviceTensor& coef, const DeviceTensor& z, DeviceTensor& y_next,
                                   Stream stream) {
    check_restore_step(x, y, gamma, coef, z, y_next);
    run(Graph::kRestoreStep, {{"x", &x}, {"y", &y}, {"gamma", &gamma}, {"coef", &coef}, {"z", &z}},
        {"y_next", &y_next}, stream);
}

void TensorRTBackend::vcg(const DeviceTensor& x, const DeviceTensor& y0, const DeviceTensor& y_t1,
                          const DeviceTensor& y_t2, DeviceTensor& score, Stream stream) {
    check_branch(Graph::kVcg, x, y0, y_t1, y_t2, score);
    run(Graph::kVcg, {{"x", &x}, {"y0", &y0}, {"y_t1", &y_t1}, {"y_t2", &y_t2}}, {"score", &score}, stream);
}

void TensorRTBackend::vda(const DeviceTensor& x, const DeviceTensor& y0, const DeviceTensor& y_t1,
                          const DeviceTensor& y_t2, DeviceTensor& score, Stream stream) {
    check_branch(Graph::kVda, x, y0, y_t1, y_t2, score);
    run(Graph::kVda, {{"x", &x}, {"y0", &y0}, {"y_t1", &y_t1}, {"y_t2", &y_t2}}, {"score", &score}, stream);
}

// ---- TensorRTPipeline ------------------------------------------------------------------------------------------

void TensorRTPipeline::check(cudaError_t status, const char* what) const {
    if (status != cudaSuccess)
        throw std::runtime_error(std::string("CUDA ") + what + ": " + cudaGetErrorName(status) + " (" +
                                 cudaGetErrorString(status) + ")");
}

void TensorRTPipeline::StreamDelete::operator()(cudaStream_t s) const noexcept {
    cudaStreamSynchronize(s);
    cudaStreamDestroy(s);
}

void TensorRTPipeline::EventDelete::operator()(cudaEvent_t e) const noexcept { cudaEventDestroy(e); }

TensorRTPipeline::StreamHandle TensorRTPipeline::make_stream() const {
    cudaStream_t s = nullptr;
    check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    return StreamHandle(s);
}

TensorRTPipeline::EventHandle TensorRTPipeline::make_event() const {
    cudaEvent_t e = nullptr;
    check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreateWithFlags");
    return EventHandle(e);
}

namespace {
// Fork-join: the loop set runs restore_step only, the branch set vcg and vda. Serial: the loop set runs all three.
std::vector<Graph> loop_graphs(TensorRTPipeline::Schedule s) {
    if (s == TensorRTPipeline::Schedule::kSerial) return TensorRTBackend::all_graphs();
    return {Graph::kRestoreStep};
}
std::vector<Graph> branch_graphs(TensorRTPipeline::Schedule s) {
    if (s == TensorRTPipeline::Schedule::kSerial) return {};
    return {Graph::kVcg, Graph::kVda};
}
}  // namespace

TensorRTPipeline::TensorRTPipeline(std::shared_ptr<const TensorRTEngines> engines, Schedule schedule)
    : engines_(std::move(engines)),
      schedule_(schedule),
      loop_set_(engines_, "loop", loop_graphs(schedule)),
      branch_set_(engines_, "branch", branch_graphs(schedule)) {
    loop_ = make_stream();
    vcg_stream_ = make_stream();
    vda_stream_ = make_stream();
    fork_ = make_event();
}

TensorRTPipeline::~TensorRTPipeline() = default;  // the stream handles synchronise before they are destroyed

void TensorRTPipeline::enqueue(const Batch& batch, RestoreBuffers& buffers, const std::vector<Crop>& crops,
                               std::vector<CropBuffers>& crop_buffers, Fusion fusion, float* host_vcg,
                               float* host_vda) {
    const DeviceTensor& x = batch.x;
    if (x.rank != 4 || x.dim(0) < 1 || x.dim(1) != kChannels)
        throw std::invalid_argument("pipeline: x must be [batch,3,height,width], not " + shape_string(x));
    const std::int64_t b = x.dim(0), h = x.dim(2), w = x.dim(3), image = kChannels * h * w;
    const std::int32_t steps = batch.steps;
    if (steps < 1 || batch.capture_t1 < 0 || batch.capture_t1 >= steps || batch.capture_t2 < 0 ||
        batch.capture_t2 >= steps)
        throw std::invalid_argument("pipeline: steps >= 1 and 0 <= capture_t1, capture_t2 < steps");
    if (batch.table_stride % 64 != 0 || batch.table_stride < kCoefWidth * b || image % 64 != 0)
        throw std::invalid_argument("pipeline: table rows and bank rows must start 256-byte aligned");
    for (const DeviceTensor* t : {&buffers.ping, &buffers.pong, &buffers.y_t1, &buffers.y_t2})
        if (t->rank != 4 || t->dims != x.dims)
            throw std::invalid_argument("pipeline: restore buffers must be " + shape_string(x));
    if (crops.empty() || crop_buffers.size() < crops.size())
        throw std::invalid_argument("pipeline: at least one crop, and one set of crop buffers per crop");
    if ((fusion.vcg_weight != 0.0f && host_vcg == nullptr) || (fusion.vda_weight != 0.0f && host_vda == nullptr))
        throw std::invalid_argument("pipeline: a branch with a weight needs its host score buffer");
    const Stream loop{loop_.get()};
    auto copy = [&](float* dst, const float* src, std::int64_t floats, cudaMemcpyKind kind, cudaStream_t s) {
        check(cudaMemcpyAsync(dst, src, static_cast<std::size_t>(floats) * sizeof(float), kind, s),
              "cudaMemcpyAsync");
    };

    // 1. The loop, on the loop stream: y = bank[T] for every image, then T restore steps (y ping-pongs between
    //    two buffers: TensorRT reads y while it writes y_next), keeping y after capture_t1 / capture_t2 and step 0.
    for (std::int64_t i = 0; i < b; ++i)
        copy(buffers.ping.data + i * image, batch.bank + steps * image, image, cudaMemcpyDeviceToDevice, loop_.get());
    DeviceTensor* y = &buffers.ping;
    DeviceTensor* y_next = &buffers.pong;
    for (std::int32_t step = steps - 1; step >= 0; --step) {
        const DeviceTensor gamma = device_tensor(batch.gamma + step * batch.table_stride, {b});
        const DeviceTensor coef = device_tensor(batch.coef + step * batch.table_stride, {b, kCoefWidth});
        const DeviceTensor z = device_tensor(batch.bank + step * image, {1, kChannels, h, w});
        loop_set_.restore_step(x, *y, gamma, coef, z, *y_next, loop);
        std::swap(y, y_next);
        if (step == batch.capture_t1)
            copy(buffers.y_t1.data, y->data, b * image, cudaMemcpyDeviceToDevice, loop_.get());
        if (step == batch.capture_t2)
            copy(buffers.y_t2.data, y->data, b * image, cudaMemcpyDeviceToDevice, loop_.get());
    }
    const DeviceTensor& y0 = *y;

    // 2. The previous batch's branches may still read the crop buffers: the loop stream waits for their joins
    //    before it cuts into them. Everything above ran meanwhile, overlapping those branches.
    if (!pending_.empty()) {
        check(cudaStreamWaitEvent(loop_.get(), pending_.back().join_vcg.get(), 0), "cudaStreamWaitEvent");
        check(cudaStreamWaitEvent(loop_.get(), pending_.back().join_vda.get(), 0), "cudaStreamWaitEvent");
    }

    // 3. Cut every crop of x, y0, y_t1, y_t2 into its buffers: one 3-D copy per tensor (S*4 bytes x S rows x B*3
    //    planes), on the loop stream.
    auto cut = [&](const DeviceTensor& src, DeviceTensor& dst, const Crop& c) {
        const std::int64_t s = dst.dim(2);
        if (dst.rank != 4 || dst.dim(0) != b || dst.dim(1) != kChannels || dst.dim(3) != s || c.top < 0 ||
            c.left < 0 || c.top + s > h || c.left + s > w)
            throw std::invalid_argument("pipeline: crop buffer " + shape_string(dst) + " at (" +
                                        std::to_string(c.top) + "," + std::to_string(c.left) + ") does not fit");
        cudaMemcpy3DParms p{};
        p.srcPtr = cudaPitchedPtr{src.data, static_cast<std::size_t>(w) * sizeof(float), static_cast<std::size_t>(w),
                                  static_cast<std::size_t>(h)};
        p.srcPos = cudaPos{static_cast<std::size_t>(c.left) * sizeof(float), static_cast<std::size_t>(c.top), 0};
        p.dstPtr = cudaPitchedPtr{dst.data, static_cast<std::size_t>(s) * sizeof(float), static_cast<std::size_t>(s),
                                  static_cast<std::size_t>(s)};
        p.extent = cudaExtent{static_cast<std::size_t>(s) * sizeof(float), static_cast<std::size_t>(s),
                              static_cast<std::size_t>(b * kChannels)};
        p.kind = cudaMemcpyDeviceToDevice;
        check(cudaMemcpy3DAsync(&p, loop_.get()), "cudaMemcpy3DAsync");
    };
    for (std::size_t k = 0; k < crops.size(); ++k) {
        CropBuffers& cb = crop_buffers[k];
        cut(x, cb.x, crops[k]);
        cut(y0, cb.y0, crops[k]);
        cut(buffers.y_t1, cb.y_t1, crops[k]);
        cut(buffers.y_t2, cb.y_t2, crops[k]);
    }

    // 4. Fork: both branch streams wait for the crops. (Serial: the branches follow on the loop stream, with the
    //    loop set's contexts.)
    const bool fork = schedule_ == Schedule::kForkJoin;
    if (fork) {
        check(cudaEventRecord(fork_.get(), loop_.get()), "cudaEventRecord(fork)");
        check(cudaStreamWaitEvent(vcg_stream_.get(), fork_.get(), 0), "cudaStreamWaitEvent(vcg, fork)");
        check(cudaStreamWaitEvent(vda_stream_.get(), fork_.get(), 0), "cudaStreamWaitEvent(vda, fork)");
    }
    GraphBackend& branches = fork ? static_cast<GraphBackend&>(branch_set_) : loop_set_;
    cudaStream_t vcg_s = fork ? vcg_stream_.get() : loop_.get();
    cudaStream_t vda_s = fork ? vda_stream_.get() : loop_.get();

    // 5. The branches, crop after crop; each score goes to the host on the stream that made it.
    for (std::size_t k = 0; k < crops.size(); ++k) {
        CropBuffers& cb = crop_buffers[k];
        const std::int64_t at = static_cast<std::int64_t>(k) * b;
        if (fusion.vcg_weight != 0.0f) {
            branches.vcg(cb.x, cb.y0, cb.y_t1, cb.y_t2, cb.vcg_score, Stream{vcg_s});
            copy(host_vcg + at, cb.vcg_score.data, b, cudaMemcpyDeviceToHost, vcg_s);
        }
        if (fusion.vda_weight != 0.0f) {
            branches.vda(cb.x, cb.y0, cb.y_t1, cb.y_t2, cb.vda_score, Stream{vda_s});
            copy(host_vda + at, cb.vda_score.data, b, cudaMemcpyDeviceToHost, vda_s);
        }
    }

    // 6. Join: one event per branch stream, waited on by the next batch (step 2) and by collect().
    Pending p{make_event(), make_event(), fusion, b, static_cast<std::int64_t>(crops.size()), host_vcg, host_vda};
    check(cudaEventRecord(p.join_vcg.get(), vcg_s), "cudaEventRecord(join vcg)");
    check(cudaEventRecord(p.join_vda.get(), vda_s), "cudaEventRecord(join vda)");
    pending_.push_back(std::move(p));
}

std::vector<float> TensorRTPipeline::collect() {
    if (pending_.empty()) throw std::logic_error("pipeline: collect() without an enqueued batch");
    Pending p = std::move(pending_.front());
    pending_.pop_front();
    check(cudaEventSynchronize(p.join_vcg.get()), "cudaEventSynchronize(join vcg)");
    check(cudaEventSynchronize(p.join_vda.get()), "cudaEventSynchronize(join vda)");
    std::vector<float> scores(static_cast<std::size_t>(p.batch), 0.0f);
    for (std::int64_t k = 0; k < p.crops; ++k) {
        for (std::int64_t i = 0; i < p.batch; ++i) {
            float s = 0.0f;
            if (p.fusion.vcg_weight != 0.0f) s += p.fusion.vcg_weight * p.host_vcg[k * p.batch + i];
            if (p.fusion.vda_weight != 0.0f) s += p.fusion.vda_weight * p.host_vda[k * p.batch + i];
            scores[static_cast<std::size_t>(i)] += s / static_cast<float>(p.crops);
        }
    }
    return scores;
}

}  // namespace trt
}  // namespace diffv2iqa

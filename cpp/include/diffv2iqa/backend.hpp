// diffv2iqa/backend.hpp -- the interface between the C++ scoring loop and whatever runs the three graphs.
//
// The graph contract of docs/bundle.md and diffv2iqa_trt/contract.py, in C++17 with no CUDA or TensorRT include:
//
//   restore_step: x, y [batch,3,height,width], gamma [batch], coef [batch,5], z [1,3,height,width]
//                 -> y_next [batch,3,height,width]
//   vcg, vda:     x, y0, y_t1, y_t2 [batch,3,S,S] -> score [batch]
//
// all float32. A backend (cpp/src/tensorrt_backend.hpp is the first) enqueues a graph on a stream and returns
// without waiting: every buffer a call names must stay valid, and unchanged, until that stream has passed the call.
#ifndef DIFFV2IQA_BACKEND_HPP
#define DIFFV2IQA_BACKEND_HPP

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <vector>

namespace diffv2iqa {

constexpr std::int32_t kMaxRank = 4;
constexpr std::int64_t kChannels = 3;
constexpr std::int64_t kCoefWidth = 5;  // contract.COEF_NAMES

// A dense float32 tensor in device memory: row-major (C order), no strides. A view: it owns nothing.
struct DeviceTensor {
    float* data = nullptr;
    std::int32_t rank = 0;
    std::array<std::int64_t, kMaxRank> dims{};

    std::int64_t elements() const noexcept {
        std::int64_t n = 1;
        for (std::int32_t i = 0; i < rank; ++i) n *= dims[static_cast<std::size_t>(i)];
        return n;
    }
    std::size_t bytes() const noexcept { return static_cast<std::size_t>(elements()) * sizeof(float); }
    std::int64_t dim(std::int32_t i) const { return dims.at(static_cast<std::size_t>(i)); }
};

inline std::string shape_string(const DeviceTensor& t) {
    std::string s = "[";
    for (std::int32_t i = 0; i < t.rank; ++i) s += (i ? "," : "") + std::to_string(t.dim(i));
    return s + "]";
}

// A view of `data` with the given shape; throws std::invalid_argument for a rank above kMaxRank or a negative dim.
inline DeviceTensor device_tensor(float* data, std::initializer_list<std::int64_t> dims) {
    if (dims.size() > static_cast<std::size_t>(kMaxRank)) throw std::invalid_argument("device_tensor: rank above 4");
    DeviceTensor t;
    t.data = data;
    for (std::int64_t d : dims) {
        if (d < 0) throw std::invalid_argument("device_tensor: negative dimension");
        t.dims[static_cast<std::size_t>(t.rank++)] = d;
    }
    return t;
}

// A CUDA stream, type-erased (a cudaStream_t cast to void*), so this header needs no CUDA include. nullptr is the
// legacy default stream, which a backend may refuse or serialise on: pass a stream you created.
struct Stream {
    void* handle = nullptr;
};

enum class Graph : std::int32_t { kRestoreStep = 0, kVcg = 1, kVda = 2 };
constexpr std::array<Graph, 3> kGraphs = {Graph::kRestoreStep, Graph::kVcg, Graph::kVda};

inline const char* graph_name(Graph g) noexcept {
    switch (g) {
        case Graph::kRestoreStep: return "restore_step";
        case Graph::kVcg: return "vcg";
        case Graph::kVda: return "vda";
    }
    return "?";
}

// One input or output of a graph, as the contract states it: -1 marks a symbolic dimension (batch, height, width;
// the crop size S of the branch graphs is fixed per bundle, so it is symbolic here and fixed by the engine).
struct TensorSpec {
    const char* name;
    bool is_input;
    std::int32_t rank;
    std::array<std::int64_t, kMaxRank> dims;
};

// The tensors of a graph, inputs first in the contract's order, then the output.
inline std::vector<TensorSpec> graph_tensors(Graph g) {
    constexpr std::int64_t s = -1;
    if (g == Graph::kRestoreStep) {
        return {{"x", true, 4, {s, kChannels, s, s}},   {"y", true, 4, {s, kChannels, s, s}},
                {"gamma", true, 1, {s, 0, 0, 0}},       {"coef", true, 2, {s, kCoefWidth, 0, 0}},
                {"z", true, 4, {1, kChannels, s, s}},   {"y_next", false, 4, {s, kChannels, s, s}}};
    }
    return {{"x", true, 4, {s, kChannels, s, s}},    {"y0", true, 4, {s, kChannels, s, s}},
            {"y_t1", true, 4, {s, kChannels, s, s}}, {"y_t2", true, 4, {s, kChannels, s, s}},
            {"score", false, 1, {s, 0, 0, 0}}};
}

// The contract's shape rules for one call; throws std::invalid_argument naming the graph and the tensor. Every
// backend runs these before it touches its runtime, so a caller gets the same message from each.
inline void check_restore_step(const DeviceTensor& x, const DeviceTensor& y, const DeviceTensor& gamma,
                               const DeviceTensor& coef, const DeviceTensor& z, const DeviceTensor& y_next) {
    auto fail = [](const char* tensor, const DeviceTensor& t, const std::string& want) {
        throw std::invalid_argument(std::string("restore_step: ") + tensor + " has shape " + shape_string(t) +
                                    ", the contract wants " + want);
    };
    if (x.rank != 4 || x.dim(1) != kChannels || x.dim(0) < 1) fail("x", x, "[batch,3,height,width]");
    const std::int64_t b = x.dim(0), h = x.dim(2), w = x.dim(3);
    const std::string image = "[" + std::to_string(b) + ",3," + std::to_string(h) + "," + std::to_string(w) + "]";
    if (y.rank != 4 || y.dims != x.dims) fail("y", y, image);
    if (y_next.rank != 4 || y_next.dims != x.dims) fail("y_next", y_next, image);
    if (gamma.rank != 1 || gamma.dim(0) != b) fail("gamma", gamma, "[" + std::to_string(b) + "]");
    if (coef.rank != 2 || coef.dim(0) != b || coef.dim(1) != kCoefWidth)
        fail("coef", coef, "[" + std::to_string(b) + ",5]");
    if (z.rank != 4 || z.dim(0) != 1 || z.dim(1) != kChannels || z.dim(2) != h || z.dim(3) != w)
        fail("z", z, "[1,3," + std::to_string(h) + "," + std::to_string(w) + "]");
    for (const DeviceTensor* t : {&x, &y, &gamma, &coef, &z, &y_next})
        if (t->data == nullptr) throw std::invalid_argument("restore_step: a tensor has no data (nullptr)");
    if (y_next.data == y.data || y_next.data == x.data)
        throw std::invalid_argument("restore_step: y_next must not alias x or y (keep two y buffers and swap them)");
}

inline void check_branch(Graph g, const DeviceTensor& x, const DeviceTensor& y0, const DeviceTensor& y_t1,
                         const DeviceTensor& y_t2, const DeviceTensor& score) {
    const std::string graph = graph_name(g);
    if (x.rank != 4 || x.dim(1) != kChannels || x.dim(0) < 1 || x.dim(2) != x.dim(3))
        throw std::invalid_argument(graph + ": x has shape " + shape_string(x) + ", the contract wants [batch,3,S,S]");
    const char* names[] = {"y0", "y_t1", "y_t2"};
    const DeviceTensor* ys[] = {&y0, &y_t1, &y_t2};
    for (int i = 0; i < 3; ++i)
        if (ys[i]->rank != 4 || ys[i]->dims != x.dims)
            throw std::invalid_argument(graph + ": " + names[i] + " has shape " + shape_string(*ys[i]) +
                                        ", x has " + shape_string(x) + ": the four crops must match");
    if (score.rank != 1 || score.dim(0) != x.dim(0))
        throw std::invalid_argument(graph + ": score has shape " + shape_string(score) + ", the contract wants [" +
                                    std::to_string(x.dim(0)) + "]");
    for (const DeviceTensor* t : {&x, &y0, &y_t1, &y_t2, &score})
        if (t->data == nullptr) throw std::invalid_argument(graph + ": a tensor has no data (nullptr)");
}

// What the scoring loop calls. Each call enqueues one graph on `stream` and returns; it throws (std::runtime_error
// or std::invalid_argument, naming the graph and the tensor) when the call cannot be enqueued. One backend object
// must not have two calls of the same graph in flight on different streams at once: make a second object (a
// second set of execution contexts) for that.
class GraphBackend {
public:
    virtual ~GraphBackend() = default;

    virtual void restore_step(const DeviceTensor& x, const DeviceTensor& y, const DeviceTensor& gamma,
                              const DeviceTensor& coef, const DeviceTensor& z, DeviceTensor& y_next,
                              Stream stream) = 0;
    virtual void vcg(const DeviceTensor& x, const DeviceTensor& y0, const DeviceTensor& y_t1,
                     const DeviceTensor& y_t2, DeviceTensor& score, Stream stream) = 0;
    virtual void vda(const DeviceTensor& x, const DeviceTensor& y0, const DeviceTensor& y_t1,
                     const DeviceTensor& y_t2, DeviceTensor& score, Stream stream) = 0;

protected:
    GraphBackend() = default;
    GraphBackend(const GraphBackend&) = delete;
    GraphBackend& operator=(const GraphBackend&) = delete;
};

}  // namespace diffv2iqa

#endif  // DIFFV2IQA_BACKEND_HPP

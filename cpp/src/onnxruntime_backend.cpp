// ONNX Runtime backend: include/diffv2iqa/onnxruntime_backend.hpp. Built against the C++ API headers of an older
// release than the library it runs on (cpp/README.md): only API calls present in the header's version are used, and
// the C API table of that version is what the library serves.
#include "diffv2iqa/onnxruntime_backend.hpp"

#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace diffv2iqa {

namespace {

const char* const kOutputs[] = {"y_next", "score", "score"};  // contract.GRAPH_OUTPUTS, by backend.hpp's Graph

std::string dims_text(const std::vector<std::int64_t>& dims) {
  std::string s = "[";
  for (std::size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

struct Session {
  std::string path;
  std::unique_ptr<Ort::Session> session;
  std::vector<std::string> inputs;  // names in the contract's order, as the manifest lists them
  std::string output;
};

}  // namespace

struct OnnxRuntimeBackend::Impl {
  Ort::Env env{ORT_LOGGING_LEVEL_WARNING, "diffv2iqa"};
  Ort::MemoryInfo memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  std::array<Session, 3> sessions;

  // Run one graph on host tensors; the result's shape must be `expected`; copied into `out`.
  void run(Graph g, std::initializer_list<const DeviceTensor*> args, DeviceTensor& out) {
    Session& s = sessions[static_cast<std::size_t>(g)];
    std::vector<Ort::Value> values;
    std::vector<const char*> names;
    std::size_t k = 0;
    for (const DeviceTensor* t : args) {
      values.push_back(Ort::Value::CreateTensor<float>(memory, t->data, static_cast<std::size_t>(t->elements()),
                                                       t->dims.data(), static_cast<std::size_t>(t->rank)));
      names.push_back(s.inputs[k++].c_str());
    }
    const char* output = s.output.c_str();
    std::vector<Ort::Value> results;
    try {
      results = s.session->Run(Ort::RunOptions{nullptr}, names.data(), values.data(), values.size(), &output, 1);
    } catch (const Ort::Exception& e) {
      throw std::runtime_error(std::string("ONNX Runtime failed running the ") + graph_name(g) + " graph of " + s.path +
                               " (" + e.what() + "); the graph does not keep the runtime contract: rebuild the bundle");
    }
    Ort::TensorTypeAndShapeInfo info = results.at(0).GetTensorTypeAndShapeInfo();
    const std::vector<std::int64_t> shape = info.GetShape();
    const std::vector<std::int64_t> want(out.dims.begin(), out.dims.begin() + out.rank);
    if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || shape != want)
      throw std::runtime_error(std::string("the ") + graph_name(g) + " graph of " + s.path + " returned " + s.output +
                               " of shape " + dims_text(shape) + (info.GetElementType() ==
                               ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT ? "" : " (not float32)") +
                               ", the runtime contract needs float32 " + dims_text(want) +
                               ": the graph does not keep the contract: rebuild the bundle");
    std::memcpy(out.data, results[0].GetTensorData<float>(), out.bytes());
  }
};

OnnxRuntimeBackend::OnnxRuntimeBackend(const Bundle& bundle, int threads) : impl_(new Impl) {
  Ort::SessionOptions options;
  options.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
  if (threads > 0) {
    options.SetIntraOpNumThreads(threads);
    options.SetInterOpNumThreads(1);
  }
  options.AddConfigEntry("session.intra_op.allow_spinning", "1");
  for (Graph g : kGraphs) {
    const GraphEntry& entry = bundle.graphs.at(graph_name(g));
    Session& s = impl_->sessions[static_cast<std::size_t>(g)];
    s.path = entry.fp32_path;
    s.output = kOutputs[static_cast<std::size_t>(g)];
    try {
      s.session.reset(new Ort::Session(impl_->env, s.path.c_str(), options));
    } catch (const Ort::Exception& e) {
      throw std::runtime_error(s.path + ": ONNX Runtime cannot load the " + graph_name(g) + " graph (" + e.what() +
                               "); rebuild the bundle with `diffv2iqa-trt build`");
    }
    // The contract's inputs, under the names and in the order the manifest lists them, and nothing else.
    std::vector<std::string> contract;
    for (const TensorSpec& t : graph_tensors(g))
      if (t.is_input) contract.push_back(t.name);
    if (entry.inputs != contract)
      throw std::runtime_error(s.path + ": the manifest lists the " + graph_name(g) +
                               " inputs in another order or under other names than the contract; rebuild the bundle");
    s.inputs = entry.inputs;
    Ort::AllocatorWithDefaultOptions allocator;
    std::vector<std::string> have, outputs;
    for (std::size_t i = 0; i < s.session->GetInputCount(); ++i)
      have.push_back(s.session->GetInputNameAllocated(i, allocator).get());
    for (std::size_t i = 0; i < s.session->GetOutputCount(); ++i)
      outputs.push_back(s.session->GetOutputNameAllocated(i, allocator).get());
    std::vector<std::string> sorted_have = have, sorted_want = s.inputs;
    std::sort(sorted_have.begin(), sorted_have.end());
    std::sort(sorted_want.begin(), sorted_want.end());
    if (sorted_have != sorted_want || std::find(outputs.begin(), outputs.end(), s.output) == outputs.end()) {
      std::string got;
      for (const std::string& n : have) got += (got.empty() ? "" : ", ") + n;
      throw std::runtime_error(s.path + ": the " + graph_name(g) + " graph does not match its description in the " +
                               "bundle's manifest (its inputs are [" + got + "], output '" + s.output +
                               "' needed); rebuild the bundle with `diffv2iqa-trt build`");
    }
  }
}

OnnxRuntimeBackend::~OnnxRuntimeBackend() = default;

void OnnxRuntimeBackend::restore_step(const DeviceTensor& x, const DeviceTensor& y, const DeviceTensor& gamma,
                                      const DeviceTensor& coef, const DeviceTensor& z, DeviceTensor& y_next, Stream) {
  check_restore_step(x, y, gamma, coef, z, y_next);
  impl_->run(Graph::kRestoreStep, {&x, &y, &gamma, &coef, &z}, y_next);
}

void OnnxRuntimeBackend::vcg(const DeviceTensor& x, const DeviceTensor& y0, const DeviceTensor& y_t1,
                             const DeviceTensor& y_t2, DeviceTensor& score, Stream) {
  check_branch(Graph::kVcg, x, y0, y_t1, y_t2, score);
  impl_->run(Graph::kVcg, {&x, &y0, &y_t1, &y_t2}, score);
}

void OnnxRuntimeBackend::vda(const DeviceTensor& x, const DeviceTensor& y0, const DeviceTensor& y_t1,
                             const DeviceTensor& y_t2, DeviceTensor& score, Stream) {
  check_branch(Graph::kVda, x, y0, y_t1, y_t2, score);
  impl_->run(Graph::kVda, {&x, &y0, &y_t1, &y_t2}, score);
}

std::string OnnxRuntimeBackend::version() {
  return std::string("ONNX Runtime ") + Ort::GetVersionString() + " (C API " + std::to_string(ORT_API_VERSION) + ")";
}

}  // namespace diffv2iqa

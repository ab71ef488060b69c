// GraphBackend over ONNX Runtime's C++ API on host memory (CPU execution provider), with the session options of the
// Python runtime's CPU executor (diffv2iqa_trt/runtime/backends/onnxruntime_backend.py): ORT_ENABLE_ALL, intra-op
// spinning on, ONNX Runtime's default thread counts unless `threads` is given (then intra-op `threads`, inter-op 1).
// One Ort::Session per graph, from the bundle's fp32 ONNX files; the sessions' inputs must be the manifest's, and
// every result's shape is checked against the contract. Calls run synchronously: the Stream argument is ignored and
// DeviceTensor data are host pointers. This header includes no ONNX Runtime header (the implementation is private).
#pragma once

#include <memory>

#include "diffv2iqa/backend.hpp"
#include "diffv2iqa/manifest.hpp"

namespace diffv2iqa {

class OnnxRuntimeBackend final : public GraphBackend {
 public:
  // Throws std::runtime_error naming the graph's file when ONNX Runtime cannot load it or its inputs and outputs are
  // not the manifest's. threads 0: ONNX Runtime's default.
  explicit OnnxRuntimeBackend(const Bundle& bundle, int threads = 0);
  ~OnnxRuntimeBackend() override;

  void restore_step(const DeviceTensor& x, const DeviceTensor& y, const DeviceTensor& gamma, const DeviceTensor& coef,
                    const DeviceTensor& z, DeviceTensor& y_next, Stream stream) override;
  void vcg(const DeviceTensor& x, const DeviceTensor& y0, const DeviceTensor& y_t1, const DeviceTensor& y_t2,
           DeviceTensor& score, Stream stream) override;
  void vda(const DeviceTensor& x, const DeviceTensor& y0, const DeviceTensor& y_t1, const DeviceTensor& y_t2,
           DeviceTensor& score, Stream stream) override;

  // "ONNX Runtime <library version> (C API <header's ORT_API_VERSION>)".
  static std::string version();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace diffv2iqa

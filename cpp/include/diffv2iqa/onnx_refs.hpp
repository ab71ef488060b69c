// The external-data references of an ONNX file, found without loading it: a bundle's graphs may read only files the
// manifest lists and hashes (docs/bundle.md, "Guarantees"), the rule of the Python loader's
// Bundle.check_onnx_references, which load_bundle (manifest.hpp) applies to every ONNX variant.
//
// Why a protobuf walk of our own and not an ONNX Runtime option: ONNX Runtime has no session option that limits
// external data to a list of files (it resolves each `location` against the model's folder and reads it, and a
// location of "*/_ORT_MEM_ADDR_/*" even makes it read process memory at the tensor's `offset`); and linking the
// protobuf and onnx libraries for one check would tie the reader to their versions. The walk reads only the message
// structure (tags, lengths, the few fields below) and seeks over everything else, so a 1 GB graph costs a few
// kilobytes of reads and no memory in proportion to its size.
//
// Tensors visited, as the Python walker (`onnx.load(..., load_external_data=False)` then every TensorProto):
// initializers and sparse initializers of the main graph and of every subgraph (If/Loop/Scan bodies, at any depth),
// tensor and sparse-tensor attributes (single or lists) of every node, and the nodes of every local function.
// Stricter than the Python walker on malformed files only: attribute tensors and graphs are visited whatever the
// attribute's `type` says, a function's default attributes (attribute_proto) are visited, and every `location` entry
// and every `data_location` value of a tensor counts (protobuf would keep only the last).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace diffv2iqa {

constexpr const char* kOrtMemoryAddressTag = "*/_ORT_MEM_ADDR_/*";  // ONNX Runtime: "offset is a memory address"

// One tensor stored outside the ONNX file: data_location EXTERNAL, or an external_data entry with key "location".
struct ExternalRef {
  bool has_location = false;  // false: EXTERNAL without any location (nothing a reader could check)
  std::string location;       // the entry's value as written
};

class OnnxFormatError : public std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Every external-data reference of the ONNX model at `path`, in file order. Throws OnnxFormatError when the file is
// not a well-formed protobuf message (truncated, lengths past the end, nesting deeper than 100 messages) and
// std::runtime_error when it cannot be read.
std::vector<ExternalRef> onnx_external_refs(const std::string& path);

// The bundle-relative name a location refers to (ONNX Runtime resolves it against the graph file's folder), or ""
// for a location that is not a plain relative path: empty, absolute, a drive letter, a backslash, a NUL, a '..'
// segment, or nothing but '.' segments. '.' and empty segments are dropped (diffv2iqa_trt/bundle/store.py, _location_name).
std::string external_data_name(const std::string& graph_file, const std::string& location);

}  // namespace diffv2iqa

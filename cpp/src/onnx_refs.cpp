// A minimal protobuf walk over ONNX files for their external-data references: include/diffv2iqa/onnx_refs.hpp.
//
// Field numbers are onnx.proto's (onnx/onnx.in.proto, stable since IR version 3): only the message fields that can
// lead to a TensorProto are followed; every other field is skipped by its wire type.
#include "diffv2iqa/onnx_refs.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace diffv2iqa {
namespace {

constexpr int kMaxDepth = 100;  // protobuf's own default recursion limit: deeper files do not load anywhere
constexpr std::uint64_t kMaxKey = 64;        // a longer key is not "location"
constexpr std::uint64_t kMaxLocation = 4096;  // PATH_MAX: a longer location names no file
constexpr std::uint32_t kExternal = 1;       // TensorProto.DataLocation.EXTERNAL

enum class Kind { kNone, kModel, kGraph, kNode, kAttribute, kFunction, kTensor, kSparse, kEntry };

// The message a length-delimited field of `parent` holds, when it can lead to a tensor.
Kind child_kind(Kind parent, std::uint32_t field) {
  switch (parent) {
    case Kind::kModel:  // graph, functions
      return field == 7 ? Kind::kGraph : field == 25 ? Kind::kFunction : Kind::kNone;
    case Kind::kGraph:  // node, initializer, sparse_initializer
      return field == 1 ? Kind::kNode : field == 5 ? Kind::kTensor : field == 15 ? Kind::kSparse : Kind::kNone;
    case Kind::kNode:  // attribute
      return field == 5 ? Kind::kAttribute : Kind::kNone;
    case Kind::kAttribute:  // t, g, tensors, graphs, sparse_tensor, sparse_tensors
      return field == 5 || field == 10   ? Kind::kTensor
             : field == 6 || field == 11 ? Kind::kGraph
             : field == 22 || field == 23 ? Kind::kSparse
                                          : Kind::kNone;
    case Kind::kFunction:  // node, attribute_proto (default values of the function's attributes)
      return field == 7 ? Kind::kNode : field == 11 ? Kind::kAttribute : Kind::kNone;
    case Kind::kSparse:  // values, indices
      return field == 1 || field == 2 ? Kind::kTensor : Kind::kNone;
    case Kind::kTensor:  // external_data
      return field == 13 ? Kind::kEntry : Kind::kNone;
    default:
      return Kind::kNone;
  }
}

class Walker {
 public:
  Walker(int fd, std::uint64_t size, std::string path) : fd_(fd), size_(size), path_(std::move(path)), buf_(1 << 16) {}

  std::vector<ExternalRef> run() {
    Tensor unused;
    walk(Kind::kModel, size_, 0, &unused);
    return std::move(refs_);
  }

 private:
  struct Tensor {  // what one TensorProto occurrence says about its storage
    bool external = false;
    std::vector<std::string> locations;
  };
  struct Entry {  // one StringStringEntryProto of external_data
    bool is_location = false;
    bool too_long = false;
    std::vector<std::string> values;
  };

  [[noreturn]] void malformed(const std::string& what) const {
    throw OnnxFormatError(what + " at byte " + std::to_string(offset()));
  }

  std::uint64_t offset() const { return start_ + pos_; }

  bool fill() {
    start_ += len_;
    pos_ = len_ = 0;
    for (;;) {
      const ssize_t n = ::pread(fd_, buf_.data(), buf_.size(), static_cast<off_t>(start_));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw std::runtime_error(path_ + " cannot be read (" + std::strerror(errno) + ")");
      len_ = static_cast<std::size_t>(n);
      return n > 0;
    }
  }

  std::uint8_t byte(std::uint64_t end) {
    if (offset() >= end || (pos_ == len_ && !fill())) {
      if (end == size_) malformed("the file is truncated: it ends inside a field");
      malformed("a message ends inside a field");
    }
    return buf_[pos_++];
  }

  std::uint64_t varint(std::uint64_t end) {
    std::uint64_t v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
      const std::uint8_t b = byte(end);
      v |= static_cast<std::uint64_t>(b & 0x7f) << (shift < 64 ? shift : 0);
      if (!(b & 0x80)) return v;
    }
    malformed("a varint longer than 10 bytes");
  }

  [[noreturn]] void past_end(std::uint64_t end) const {
    malformed(end == size_ ? "the file is truncated: a field runs past its end" : "a field runs past the end of its "
                                                                                   "message");
  }

  void skip(std::uint64_t n, std::uint64_t end) {
    if (n > end - offset()) past_end(end);
    if (n <= len_ - pos_) {
      pos_ += static_cast<std::size_t>(n);
      return;
    }
    start_ = offset() + n;  // seek: the next fill() reads from there
    pos_ = len_ = 0;
  }

  std::string bytes(std::uint64_t n, std::uint64_t end) {
    if (n > end - offset()) past_end(end);
    std::string out;
    out.reserve(static_cast<std::size_t>(n));
    while (out.size() < n) {
      if (pos_ == len_ && !fill()) malformed("the file ends inside a field");
      const std::size_t take = std::min<std::uint64_t>(n - out.size(), len_ - pos_);
      out.append(reinterpret_cast<const char*>(buf_.data() + pos_), take);
      pos_ += take;
    }
    return out;
  }

  // A group (wire type 3, deprecated, legal in any message as an unknown field): skipped to its matching end tag.
  void skip_group(std::uint32_t field, std::uint64_t end, int depth) {
    if (depth > kMaxDepth) malformed("groups nested more than " + std::to_string(kMaxDepth) + " deep");
    for (;;) {
      const std::uint64_t tag = varint(end);
      const std::uint32_t wire = static_cast<std::uint32_t>(tag & 7);
      if (wire == 4) {
        if ((tag >> 3) != field) malformed("a group ends with another field's end tag");
        return;
      }
      skip_value(tag, end, depth + 1);
    }
  }

  void skip_value(std::uint64_t tag, std::uint64_t end, int depth) {
    if ((tag >> 3) == 0) malformed("field number 0");
    switch (tag & 7) {
      case 0: varint(end); break;
      case 1: skip(8, end); break;
      case 2: skip(varint(end), end); break;
      case 3: skip_group(static_cast<std::uint32_t>(tag >> 3), end, depth); break;
      case 5: skip(4, end); break;
      default: malformed("wire type " + std::to_string(tag & 7));
    }
  }

  void walk_entry(std::uint64_t end, Entry* entry) {
    while (offset() < end) {
      const std::uint64_t tag = varint(end);
      const std::uint64_t field = tag >> 3;
      if ((tag & 7) == 2 && (field == 1 || field == 2)) {
        const std::uint64_t n = varint(end);
        const bool keep = n <= (field == 1 ? kMaxKey : kMaxLocation);
        if (field == 2) entry->too_long = entry->too_long || !keep;
        const std::string text = keep ? bytes(n, end) : (skip(n, end), std::string());
        if (field == 1) entry->is_location = entry->is_location || text == "location";
        else if (keep) entry->values.push_back(text);
      } else {
        skip_value(tag, end, 0);
      }
    }
  }

  // The fields of one message of `kind` up to `end`; `tensor` collects what a TensorProto says.
  void walk(Kind kind, std::uint64_t end, int depth, Tensor* tensor) {
    if (depth > kMaxDepth) malformed("messages nested more than " + std::to_string(kMaxDepth) + " deep");
    while (offset() < end) {
      const std::uint64_t tag = varint(end);
      const std::uint32_t field = static_cast<std::uint32_t>(std::min<std::uint64_t>(tag >> 3, 0xffffffffu));
      const std::uint32_t wire = static_cast<std::uint32_t>(tag & 7);
      if (kind == Kind::kTensor && field == 14 && wire == 0) {  // data_location: an int32 enum (low 32 bits)
        if (static_cast<std::uint32_t>(varint(end)) == kExternal) tensor->external = true;
        continue;
      }
      const Kind child = wire == 2 ? child_kind(kind, field) : Kind::kNone;
      if (child == Kind::kNone) {
        skip_value(tag, end, depth);
        continue;
      }
      const std::uint64_t n = varint(end);
      if (n > end - offset()) past_end(end);
      const std::uint64_t sub = offset() + n;
      if (child == Kind::kEntry) {
        Entry entry;
        walk_entry(sub, &entry);
        if (entry.is_location) {
          if (entry.too_long) malformed("an external-data location longer than " + std::to_string(kMaxLocation) +
                                        " bytes");
          for (std::string& v : entry.values) tensor->locations.push_back(std::move(v));
          if (entry.values.empty()) tensor->locations.emplace_back();  // "location" with no value: the empty path
        }
      } else if (child == Kind::kTensor) {
        Tensor t;
        walk(child, sub, depth + 1, &t);
        if (t.external && t.locations.empty()) refs_.push_back(ExternalRef{false, ""});
        for (std::string& location : t.locations) refs_.push_back(ExternalRef{true, std::move(location)});
      } else {
        walk(child, sub, depth + 1, tensor);
      }
      if (offset() != sub) malformed("a message does not end where its length says");
    }
    if (offset() != end) malformed("a message does not end where its length says");
  }

  int fd_;
  std::uint64_t size_;
  std::string path_;
  std::vector<std::uint8_t> buf_;
  std::uint64_t start_ = 0;  // file offset of buf_[0]
  std::size_t pos_ = 0, len_ = 0;
  std::vector<ExternalRef> refs_;
};

}  // namespace

std::vector<ExternalRef> onnx_external_refs(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) throw std::runtime_error(path + " cannot be read (" + std::strerror(errno) + ")");
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw std::runtime_error(path + " is not a regular file");
  }
  try {
    std::vector<ExternalRef> refs = Walker(fd, static_cast<std::uint64_t>(st.st_size), path).run();
    ::close(fd);
    return refs;
  } catch (...) {
    ::close(fd);
    throw;
  }
}

std::string external_data_name(const std::string& graph_file, const std::string& location) {
  if (location.empty() || location[0] == '/' || location.find('\\') != std::string::npos ||
      location.find('\0') != std::string::npos ||
      (location.size() >= 2 && location[1] == ':' &&
       ((location[0] >= 'A' && location[0] <= 'Z') || (location[0] >= 'a' && location[0] <= 'z'))))
    return "";
  std::vector<std::string> parts;
  std::size_t start = 0;
  for (;;) {
    const std::size_t slash = location.find('/', start);
    const std::string part = location.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
    if (part == "..") return "";
    if (!part.empty() && part != ".") parts.push_back(part);
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  if (parts.empty()) return "";
  const std::size_t base = graph_file.rfind('/');
  std::string name = base == std::string::npos ? "" : graph_file.substr(0, base);
  for (const std::string& part : parts) name += (name.empty() ? "" : "/") + part;
  return name;
}

}  // namespace diffv2iqa

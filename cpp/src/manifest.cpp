// load_bundle for C++: see include/diffv2iqa/manifest.hpp.
#include "diffv2iqa/manifest.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <sstream>
#include <vector>

#include "diffv2iqa/backend.hpp"
#include "diffv2iqa/json.hpp"
#include "diffv2iqa/onnx_refs.hpp"
#include "diffv2iqa/sha256.hpp"

namespace diffv2iqa {
namespace {

using json::Type;
using json::Value;

constexpr std::size_t kChunk = std::size_t{1} << 20;
constexpr int kMaxSteps = 10000;
constexpr int kMaxCrop = 4096;
constexpr int kMaxSizeMultiple = 256;
constexpr int kMaxGrid = 64;
constexpr std::uint64_t kMaxNoiseBank = std::uint64_t{4} << 30;
const char* const kGraphNames[] = {"restore_step", "vcg", "vda"};

Graph graph_of(const std::string& name) {
  for (Graph g : kGraphs)
    if (name == graph_name(g)) return g;
  throw std::logic_error("no graph named " + name);
}

std::string name_list(const std::vector<std::string>& names) {
  std::string out = "[";
  for (std::size_t i = 0; i < names.size(); ++i) out += (i ? ", " : "") + names[i];
  return out + "]";
}

const char* const kCoefNames[] = {"sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
                                  "posterior_mean_coef1", "posterior_mean_coef2", "posterior_std"};
const char* const kLinkAdvice =
    "a bundle holds its own files, and a link may point anywhere: replace it by a copy of the file (`cp -L`) or "
    "rebuild the bundle";

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

std::string kind_of(mode_t mode) {
  if (S_ISLNK(mode)) return "a symbolic link";
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode) || S_ISBLK(mode)) return "a device";
  if (S_ISSOCK(mode)) return "a socket";
  return S_ISREG(mode) ? "a regular file" : "a special file";
}

struct Refused : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct Missing : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// lstat of bundle entry `name` (already a checked relative path): every component a real directory, the last a
// regular file, none a symbolic link. Never looks at what a link points to.
struct stat entry_stat(const std::string& root, const std::string& name) {
  std::string path = root;
  std::size_t start = 0;
  struct stat st {};
  for (;;) {
    std::size_t slash = name.find('/', start);
    bool last = slash == std::string::npos;
    std::string part = name.substr(start, last ? std::string::npos : slash - start);
    path += "/" + part;
    if (::lstat(path.c_str(), &st) != 0) {
      if (errno == ENOENT || errno == ENOTDIR) throw Missing(root + "/" + name + " is missing");
      throw std::runtime_error(root + "/" + name + " cannot be read (" + std::strerror(errno) + ")");
    }
    if (S_ISLNK(st.st_mode)) {
      std::string what = last ? "is a symbolic link" : "lies under '" + name.substr(0, slash) + "', a symbolic link";
      throw Refused(root + "/" + name + " " + what + ": " + kLinkAdvice);
    }
    if (last) break;
    if (!S_ISDIR(st.st_mode))
      throw Refused(root + "/" + name + " cannot exist: '" + name.substr(0, slash) + "' in the bundle is " +
                    kind_of(st.st_mode) + ", not a directory; " + kRebuild);
    start = slash + 1;
  }
  if (!S_ISREG(st.st_mode))
    throw Refused(root + "/" + name + " is " + kind_of(st.st_mode) + ", not a regular file; " + kRebuild);
  return st;
}

// Open a regular file without following a link or waiting on a FIFO; returns the fd and its fstat.
int open_regular(const std::string& path, struct stat* st) {
  struct stat lst {};
  if (::lstat(path.c_str(), &lst) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) throw Missing(path + " is missing");
    throw std::runtime_error(path + " cannot be read (" + std::strerror(errno) + ")");
  }
  if (S_ISLNK(lst.st_mode)) throw Refused(path + " is a symbolic link: " + kLinkAdvice);
  if (!S_ISREG(lst.st_mode)) throw Refused(path + " is " + kind_of(lst.st_mode) + ", not a regular file; " + kRebuild);
  int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ELOOP) throw Refused(path + " is a symbolic link: " + kLinkAdvice);
    if (errno == ENOENT) throw Missing(path + " is missing");
    throw std::runtime_error(path + " cannot be read (" + std::strerror(errno) + ")");
  }
  if (::fstat(fd, st) != 0 || !S_ISREG(st->st_mode)) {
    ::close(fd);
    throw Refused(path + " is not a regular file; " + kRebuild);
  }
  return fd;
}

std::string sha256_fd(int fd, const std::string& path, std::uint64_t* total) {
  std::vector<unsigned char> buf(kChunk);
  Sha256 h;
  *total = 0;
  for (;;) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error(path + " cannot be read (" + std::strerror(errno) + ")");
    }
    if (n == 0) break;
    h.update(buf.data(), static_cast<std::size_t>(n));
    *total += static_cast<std::uint64_t>(n);
  }
  return h.finish_hex();
}

std::string read_manifest_text(const std::string& path) {
  struct stat st {};
  int raw;
  try {
    raw = open_regular(path, &st);
  } catch (const Missing&) {
    std::string parent = path.substr(0, path.rfind('/'));
    throw std::runtime_error(path + " is missing: " + parent +
                             " is not a complete bundle (an interrupted build?); " + kRebuild);
  }
  Fd fd(raw);
  if (static_cast<std::uint64_t>(st.st_size) > json::kMaxBytes)
    throw std::runtime_error(path + " is " + std::to_string(st.st_size) +
                             " bytes, more than a bundle manifest may have (" + std::to_string(json::kMaxBytes) +
                             "); " + kRebuild);
  std::string text;
  std::vector<char> buf(1 << 16);
  while (text.size() <= json::kMaxBytes) {  // at most one byte more than the limit is kept
    ssize_t n = ::read(fd.get(), buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error(path + " cannot be read (" + std::strerror(errno) + "); " + kRebuild);
    }
    if (n == 0) break;
    text.append(buf.data(), static_cast<std::size_t>(n));
  }
  if (text.size() > json::kMaxBytes)
    throw std::runtime_error(path + " is more than " + std::to_string(json::kMaxBytes) +
                             " bytes, more than a bundle manifest may have; " + kRebuild);
  return text;
}

// ---- typed access with JSON-path messages --------------------------------------------------------------------

class Reader {
 public:
  explicit Reader(std::string source) : source_(std::move(source)) {}

  [[noreturn]] void bad(const std::string& where, const std::string& what) const {
    throw std::runtime_error(source_ + " breaks the bundle schema: at " + where + ": " + what + "; " + kRebuild);
  }

  const Value& member(const Value& obj, const std::string& key, const std::string& where) const {
    if (!obj.is_object()) bad(where, std::string("expected an object, found ") + json::type_name(obj.type));
    const Value* v = obj.find(key);
    if (!v) bad(where, "'" + key + "' is a required property");
    return *v;
  }

  const Value& object(const Value& obj, const std::string& key, const std::string& where) const {
    const Value& v = member(obj, key, where);
    if (!v.is_object()) bad(where + "." + key, std::string("expected an object, found ") + json::type_name(v.type));
    return v;
  }

  const Value& array(const Value& obj, const std::string& key, const std::string& where) const {
    const Value& v = member(obj, key, where);
    if (!v.is_array()) bad(where + "." + key, std::string("expected an array, found ") + json::type_name(v.type));
    return v;
  }

  std::string string(const Value& obj, const std::string& key, const std::string& where) const {
    const Value& v = member(obj, key, where);
    if (!v.is_string()) bad(where + "." + key, std::string("expected a string, found ") + json::type_name(v.type));
    return v.string;
  }

  bool boolean(const Value& obj, const std::string& key, const std::string& where) const {
    const Value& v = member(obj, key, where);
    if (!v.is_bool()) bad(where + "." + key, std::string("expected a boolean, found ") + json::type_name(v.type));
    return v.boolean;
  }

  std::int64_t integer(const Value& obj, const std::string& key, const std::string& where, std::int64_t lo,
                       std::int64_t hi) const {
    const Value& v = member(obj, key, where);
    if (!v.is_number() || !v.integral)
      bad(where + "." + key, std::string("expected an integer, found ") +
                                 (v.is_number() ? "a non-integer number" : json::type_name(v.type)));
    if (v.integer < lo || v.integer > hi)
      bad(where + "." + key, std::to_string(v.integer) + " is outside [" + std::to_string(lo) + ", " +
                                 std::to_string(hi) + "]");
    return v.integer;
  }

  std::uint64_t uinteger(const Value& obj, const std::string& key, const std::string& where) const {
    const Value& v = member(obj, key, where);
    if (!v.is_number() || !v.unsigned_integral)
      bad(where + "." + key, "expected an integer in [0, 2**64-1], found " +
                                 std::string(v.is_number() ? "another number" : json::type_name(v.type)));
    return v.uinteger;
  }

  double number(const Value& v, const std::string& where, double limit = HUGE_VAL) const {
    if (!v.is_number()) bad(where, std::string("expected a number, found ") + json::type_name(v.type));
    if (!(std::fabs(v.number) <= limit)) bad(where, "not a finite float32 value");
    return v.number;
  }

 private:
  std::string source_;
};

std::string header_check(const Value& doc, const std::string& where) {
  if (!doc.is_object())
    return where + " is not a JSON object (got " + json::type_name(doc.type) + "): " + kRebuild;
  const Value* schema = doc.find("schema");
  if (!schema || !schema->is_string() || schema->string != kSchemaName) {
    std::string got = !schema ? "missing" : schema->is_string() ? "'" + schema->string + "'" : "not a string";
    return where + " is not a diffv2iqa-trt bundle manifest (\"schema\" is " + got + ", expected '" + kSchemaName +
           "'): point to a bundle directory written by `diffv2iqa-trt build`, or " + kRebuild;
  }
  const Value* version = doc.find("schema_version");
  if (!version || !version->is_number() || !version->integral || version->integer != kSchemaVersion) {
    std::string got = !version ? "missing"
                      : version->is_number() && version->integral ? std::to_string(version->integer)
                                                                  : "not an integer";
    std::string why = got == "3" ? " (version 3 bundles used NumPy's noise generator and Pillow's resize, which "
                                   "the portable scoring contract of version 4 replaced)"
                                 : "";
    return where + ": bundle schema version " + got + ", this reader reads version " +
           std::to_string(kSchemaVersion) + why + ": rebuild the bundle with this toolkit's `diffv2iqa-trt build` " +
           "(older bundles are rebuilt, not read)";
  }
  return "";
}

bool is_hex64(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

Pipeline read_pipeline(const Reader& r, const Value& doc) {
  const std::string at = "$.pipeline";
  const Value& p = r.object(doc, "pipeline", "$");
  Pipeline out;
  out.steps = static_cast<int>(r.integer(p, "steps", at, 1, kMaxSteps));
  out.capture_t1 = static_cast<int>(r.integer(p, "capture_t1", at, 1, out.steps - 1));
  out.capture_t2 = static_cast<int>(r.integer(p, "capture_t2", at, 1, out.steps - 1));
  if (out.capture_t1 == out.capture_t2)
    r.bad(at + ".capture_t2", "the two snapshots must come from distinct steps, both are " +
                                  std::to_string(out.capture_t1));

  const Value& names = r.array(p, "coef_names", at);
  const std::size_t width = sizeof(kCoefNames) / sizeof(kCoefNames[0]);
  bool names_ok = names.items.size() == width;
  for (std::size_t i = 0; names_ok && i < width; ++i)
    names_ok = names.items[i].is_string() && names.items[i].string == kCoefNames[i];
  if (!names_ok) r.bad(at + ".coef_names", "not the restore_step contract's coefficient names");
  for (const char* n : kCoefNames) out.coef_names.emplace_back(n);

  const Value& gamma = r.array(p, "gamma", at);
  if (gamma.items.size() != static_cast<std::size_t>(out.steps))
    r.bad(at + ".gamma", std::to_string(gamma.items.size()) + " rows, but steps is " + std::to_string(out.steps));
  for (std::size_t i = 0; i < gamma.items.size(); ++i)
    out.gamma.push_back(r.number(gamma.items[i], at + ".gamma[" + std::to_string(i) + "]", FLT_MAX));
  const Value& coef = r.array(p, "coef", at);
  if (coef.items.size() != static_cast<std::size_t>(out.steps))
    r.bad(at + ".coef", std::to_string(coef.items.size()) + " rows, but steps is " + std::to_string(out.steps));
  for (std::size_t i = 0; i < coef.items.size(); ++i) {
    const std::string w = at + ".coef[" + std::to_string(i) + "]";
    const Value& row = coef.items[i];
    if (!row.is_array() || row.items.size() != width)
      r.bad(w, "expected an array of " + std::to_string(width) + " numbers");
    std::vector<double> values;
    for (std::size_t j = 0; j < width; ++j)
      values.push_back(r.number(row.items[j], w + "[" + std::to_string(j) + "]", FLT_MAX));
    out.coef.push_back(std::move(values));
  }

  const Value& noise = r.object(p, "noise", at);
  const std::string nzw = at + ".noise";
  out.noise.generator = r.string(noise, "generator", nzw);
  if (out.noise.generator != kNoiseGenerator)
    r.bad(nzw + ".generator", "'" + out.noise.generator.substr(0, 80) + "' is not the generator this reader implements ('" +
                                  kNoiseGenerator + "')");
  out.noise.seed = r.uinteger(noise, "seed", nzw);
  const Value& tv = r.object(noise, "test_vectors", nzw);
  const std::string tvw = nzw + ".test_vectors";
  const Value& shape = r.array(tv, "shape", tvw);
  if (shape.items.size() != 3) r.bad(tvw + ".shape", "expected 3 dimensions");
  for (std::size_t i = 0; i < 3; ++i) {
    const Value& d = shape.items[i];
    if (!d.is_number() || !d.integral || d.integer < 1 || d.integer > kMaxCrop)
      r.bad(tvw + ".shape[" + std::to_string(i) + "]", "expected an integer in [1, " + std::to_string(kMaxCrop) + "]");
    out.noise.test_vectors.shape[i] = d.integer;
  }
  // (compared with crop_size below, once it is read)
  const Value& first = r.object(tv, "first8_bits", tvw);
  for (std::size_t i = 0; i < first.keys.size(); ++i) {
    const std::string& key = first.keys[i];
    const std::string fw = tvw + ".first8_bits['" + key.substr(0, 20) + "']";
    bool digits = !key.empty() && key.size() <= 5 && (key == "0" || key[0] != '0');
    for (char c : key) digits = digits && c >= '0' && c <= '9';
    if (!digits) r.bad(fw, "the key is not a row number");
    if (std::stoul(key) > static_cast<unsigned long>(out.steps))
      r.bad(fw, "row " + key + " does not exist: the bank has rows 0.." + std::to_string(out.steps) +
                    " (steps + 1 rows)");
    const Value& bits = first.values[i];
    if (!bits.is_array() || bits.items.size() != 8) r.bad(fw, "expected an array of 8 strings '0x........'");
    std::vector<std::uint32_t> words;
    for (const Value& b : bits.items) {
      bool ok = b.is_string() && b.string.size() == 10 && b.string.compare(0, 2, "0x") == 0;
      std::uint32_t word = 0;
      for (std::size_t k = 2; ok && k < 10; ++k) {
        char c = b.string[k];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        ok = d >= 0;
        word = (word << 4) | static_cast<std::uint32_t>(d < 0 ? 0 : d);
      }
      if (!ok) r.bad(fw, "expected 8 strings of the form 0x and 8 lowercase hexadecimal digits");
      words.push_back(word);
    }
    out.noise.test_vectors.first8_bits[static_cast<std::uint32_t>(std::stoul(key))] = words;
  }
  const Value& rows = r.array(tv, "row_sha256", tvw);
  for (std::size_t i = 0; i < rows.items.size(); ++i) {
    const Value& h = rows.items[i];
    if (!h.is_string() || !is_hex64(h.string))
      r.bad(tvw + ".row_sha256[" + std::to_string(i) + "]", "not 64 lowercase hexadecimal digits");
    out.noise.test_vectors.row_sha256.push_back(h.string);
  }
  // One digest per row of the bank, rows 0..T: checking them computes exactly the bank scoring uses, no more.
  if (rows.items.size() != static_cast<std::size_t>(out.steps) + 1)
    r.bad(tvw + ".row_sha256", std::to_string(rows.items.size()) + " digests, but the noise bank of " +
                                   std::to_string(out.steps) + " steps has " + std::to_string(out.steps + 1) +
                                   " rows (0.." + std::to_string(out.steps) + ")");

  out.size_multiple = static_cast<int>(r.integer(p, "size_multiple", at, 1, kMaxSizeMultiple));
  if (out.size_multiple & (out.size_multiple - 1))
    r.bad(at + ".size_multiple", std::to_string(out.size_multiple) + " is not a power of two up to " +
                                     std::to_string(kMaxSizeMultiple));
  out.crop_size = static_cast<int>(r.integer(p, "crop_size", at, 1, kMaxCrop));
  if (out.crop_size % out.size_multiple)
    r.bad(at + ".crop_size", std::to_string(out.crop_size) + " is not a multiple of size_multiple " +
                                 std::to_string(out.size_multiple));
  // The test vectors are rows of the bank a crop-size restoration uses: shape (3, crop_size, crop_size), nothing else
  // (a larger shape would make --check-golden compute a bank scoring never uses: [3, 4096, 4096] took 44 s).
  const std::int64_t* tshape = out.noise.test_vectors.shape;
  if (tshape[0] != 3 || tshape[1] != out.crop_size || tshape[2] != out.crop_size)
    r.bad(tvw + ".shape", "[" + std::to_string(tshape[0]) + ", " + std::to_string(tshape[1]) + ", " +
                              std::to_string(tshape[2]) + "] is not the shape of a noise row at crop size, [3, " +
                              std::to_string(out.crop_size) + ", " + std::to_string(out.crop_size) + "]");
  std::uint64_t bank = static_cast<std::uint64_t>(out.steps + 1) * 3u * static_cast<std::uint64_t>(out.crop_size) *
                       static_cast<std::uint64_t>(out.crop_size) * 4u;
  if (bank > kMaxNoiseBank) r.bad(at, "the noise bank at crop size would exceed 4 GiB");

  out.crops = r.string(p, "crops", at);
  std::string why = crop_policy_problem(out.crops);
  if (!why.empty()) r.bad(at + ".crops", why);
  out.mode = r.string(p, "mode", at);
  if (out.mode != "crops" && out.mode != "faithful")
    r.bad(at + ".mode", "'" + out.mode.substr(0, 40) + "' is neither 'crops' nor 'faithful'");
  out.resize = r.string(p, "resize", at);
  if (out.resize != kResize)
    r.bad(at + ".resize", "'" + out.resize.substr(0, 80) + "' is not the resize this reader implements ('" + kResize +
                              "')");

  const Value& fusion = r.object(p, "fusion", at);
  out.fusion.vcg_weight = r.number(r.member(fusion, "vcg_weight", at + ".fusion"), at + ".fusion.vcg_weight");
  out.fusion.vda_weight = r.number(r.member(fusion, "vda_weight", at + ".fusion"), at + ".fusion.vda_weight");

  const Value& norm = r.object(p, "normalisation", at);
  const std::string nw = at + ".normalisation";
  out.normalisation.formula = r.string(norm, "formula", nw);
  out.normalisation.divisor = r.number(r.member(norm, "divisor", nw), nw + ".divisor");
  out.normalisation.mean = r.number(r.member(norm, "mean", nw), nw + ".mean");
  out.normalisation.std = r.number(r.member(norm, "std", nw), nw + ".std");
  if (out.normalisation.divisor != 255.0 || out.normalisation.mean != 0.5 || out.normalisation.std != 0.5)
    r.bad(nw, "divisor/mean/std differ from the only supported 255/0.5/0.5");
  out.uint8_roundtrip = r.boolean(p, "uint8_roundtrip", at);
  return out;
}

}  // namespace

std::string crop_policy_problem(const std::string& policy) {
  if (policy == "center" || policy == "five" || policy == "resize224") return "";
  bool ok = policy.rfind("grid:", 0) == 0 && policy.size() > 5 && policy.size() <= 7;
  int n = 0;
  for (std::size_t i = 5; ok && i < policy.size(); ++i) {
    ok = policy[i] >= '0' && policy[i] <= '9' && !(i == 5 && policy[i] == '0');
    n = n * 10 + (policy[i] - '0');
  }
  if (!ok || n < 1 || n > kMaxGrid)
    return "'" + policy.substr(0, 40) + "' is not a crop policy: use center, five, resize224 or grid:N with N in [1, " +
           std::to_string(kMaxGrid) + "]";
  return "";
}

int grid_count(const std::string& policy) {
  if (!crop_policy_problem(policy).empty() || policy.rfind("grid:", 0) != 0) return 0;
  return std::stoi(policy.substr(5));
}

std::string relpath_problem(const std::string& name) {
  if (name == kManifestName) return "'" + name + "' is the manifest itself and cannot be listed in files";
  if (name.find('\0') != std::string::npos) return "'" + name + "' contains a NUL character";
  if (name.empty() || name[0] == '/' || name.find('\\') != std::string::npos ||
      (name.size() >= 2 && name[1] == ':' && ((name[0] >= 'A' && name[0] <= 'Z') || (name[0] >= 'a' && name[0] <= 'z'))))
    return "'" + name + "' is not a relative '/'-separated path";
  std::size_t start = 0;
  for (;;) {
    std::size_t slash = name.find('/', start);
    std::string part = name.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
    if (part.empty() || part == "." || part == "..") return "'" + name + "' has an empty, '.' or '..' segment";
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  return "";
}

Bundle load_bundle(const std::string& dir, bool verify_hashes) {
  std::string root = dir;
  while (root.size() > 1 && root.back() == '/') root.pop_back();
  struct stat st {};
  const std::string suffix = std::string("/") + kManifestName;
  if ((root == kManifestName || (root.size() > suffix.size() &&
                                 root.compare(root.size() - suffix.size(), suffix.size(), suffix) == 0)) &&
      ::stat(root.c_str(), &st) == 0 && !S_ISDIR(st.st_mode))
    root = root == kManifestName ? "." : root.substr(0, root.size() - suffix.size());
  if (::stat(root.c_str(), &st) != 0)
    throw std::runtime_error("no bundle at " + root + ": the directory does not exist; build one with "
                             "`diffv2iqa-trt build --out " + root + "`");
  if (!S_ISDIR(st.st_mode))
    throw std::runtime_error(root + " is not a bundle directory (a bundle is a directory holding " + kManifestName +
                             ")");

  const std::string manifest_path = root + "/" + kManifestName;
  const std::string text = read_manifest_text(manifest_path);
  Value doc;
  try {
    doc = json::parse(text);
  } catch (const json::ParseError& e) {
    throw std::runtime_error(manifest_path + " is not valid JSON (" + e.what() + "); " + kRebuild);
  }
  std::string header = header_check(doc, manifest_path);
  if (!header.empty()) throw std::runtime_error(header);

  Reader r(manifest_path);
  Bundle b;
  b.root = root;
  b.schema = kSchemaName;
  b.schema_version = kSchemaVersion;
  b.toolkit_version = r.string(doc, "toolkit_version", "$");
  b.pipeline = read_pipeline(r, doc);

  const Value& files = r.object(doc, "files", "$");
  for (std::size_t i = 0; i < files.keys.size(); ++i) {
    const std::string& name = files.keys[i];
    std::string why = relpath_problem(name);
    if (!why.empty()) r.bad("$.files", why);
    const std::string w = "$.files['" + name + "']";
    const Value& e = files.values[i];
    FileEntry entry;
    entry.sha256 = r.string(e, "sha256", w);
    if (!is_hex64(entry.sha256)) r.bad(w + ".sha256", "not 64 lowercase hexadecimal digits");
    entry.bytes = static_cast<std::uint64_t>(r.integer(e, "bytes", w, 0, INT64_MAX));
    b.files[name] = entry;
  }

  const Value& graphs = r.object(doc, "graphs", "$");
  for (const char* gname : kGraphNames) {
    const std::string w = std::string("$.graphs.") + gname;
    const Value& g = r.object(graphs, gname, "$.graphs");
    GraphEntry graph;
    graph.name = gname;
    for (const char* kind : {"inputs", "outputs"}) {
      const Value& list = r.array(g, kind, w);
      for (std::size_t i = 0; i < list.items.size(); ++i) {
        std::string name = r.string(list.items[i], "name", w + "." + kind + "[" + std::to_string(i) + "]");
        (std::string(kind) == "inputs" ? graph.inputs : graph.outputs).push_back(name);
      }
    }
    // The backends bind the contract's tensor names (backend.hpp graph_tensors): a manifest that names others
    // describes graphs this reader cannot run, so it is refused here rather than failing at the first bind.
    std::vector<std::string> want_inputs, want_outputs;
    for (const TensorSpec& t : graph_tensors(graph_of(gname)))
      (t.is_input ? want_inputs : want_outputs).push_back(t.name);
    for (const char* kind : {"inputs", "outputs"}) {
      const bool in = std::string(kind) == "inputs";
      const std::vector<std::string>& have = in ? graph.inputs : graph.outputs;
      const std::vector<std::string>& want = in ? want_inputs : want_outputs;
      if (have != want)
        r.bad(w + "." + kind, "names " + name_list(have) + ", the contract's are " + name_list(want) +
                                  " (in this order); rebuild the bundle with this toolkit");
    }
    for (const char* kind : {"variants", "engines"}) {
      const Value& entries = r.object(g, kind, w);
      for (std::size_t i = 0; i < entries.keys.size(); ++i) {
        const std::string ew = w + "." + kind + "." + entries.keys[i];
        std::string file = r.string(entries.values[i], "file", ew);
        if (b.files.find(file) == b.files.end()) r.bad(ew + ".file", "'" + file + "' is not listed in $.files");
        const Value* sha = entries.values[i].find("sha256");
        if (sha && (!sha->is_string() || sha->string != b.files[file].sha256))
          r.bad(ew + ".sha256", "differs from $.files['" + file + "'].sha256");
        (std::string(kind) == "variants" ? graph.variants : graph.engines)[entries.keys[i]] = file;
      }
    }
    auto fp32 = graph.variants.find("fp32");
    if (fp32 == graph.variants.end()) r.bad(w + ".variants", "no fp32 variant");
    graph.fp32_file = fp32->second;
    graph.fp32_path = b.path_of(graph.fp32_file);
    b.graphs[gname] = graph;
  }

  const Value& golden = r.member(doc, "golden", "$");
  if (!golden.is_null()) {
    const std::string gw = "$.golden";
    if (!golden.is_object()) r.bad(gw, std::string("expected null or an object, found ") + json::type_name(golden.type));
    b.golden.present = true;
    b.golden.runtime = r.string(golden, "runtime", gw);
    b.golden.noise_seed = r.uinteger(golden, "noise_seed", gw);
    const Value& images = r.array(golden, "images", gw);
    if (images.items.size() > 16) r.bad(gw + ".images", "more than 16 images");
    for (std::size_t i = 0; i < images.items.size(); ++i) {
      const std::string iw = gw + ".images[" + std::to_string(i) + "]";
      const Value& im = images.items[i];
      GoldenImage image;
      image.file = r.string(im, "file", iw);
      if (b.files.find(image.file) == b.files.end())
        r.bad(iw + ".file", "'" + image.file.substr(0, 80) + "' is not listed in $.files");
      image.height = r.integer(im, "height", iw, 1, 65535);
      image.width = r.integer(im, "width", iw, 1, 65535);
      const Value& scores = r.array(im, "scores", iw);
      if (scores.items.empty()) r.bad(iw + ".scores", "no score");
      for (std::size_t k = 0; k < scores.items.size(); ++k) {
        const std::string sw = iw + ".scores[" + std::to_string(k) + "]";
        const Value& sc = scores.items[k];
        GoldenScore gs;
        gs.mode = r.string(sc, "mode", sw);
        if (gs.mode != "crops" && gs.mode != "faithful") r.bad(sw + ".mode", "neither 'crops' nor 'faithful'");
        gs.crops = r.string(sc, "crops", sw);
        std::string why = crop_policy_problem(gs.crops);
        if (!why.empty()) r.bad(sw + ".crops", why);
        gs.score = r.number(r.member(sc, "score", sw), sw + ".score");
        for (const char* branch : {"vcg", "vda"}) {
          const Value& v = r.member(sc, branch, sw);
          bool has = !v.is_null();
          double value = has ? r.number(v, sw + "." + branch) : 0.0;
          if (std::string(branch) == "vcg") {
            gs.has_vcg = has;
            gs.vcg = value;
          } else {
            gs.has_vda = has;
            gs.vda = value;
          }
        }
        gs.crop_count = r.integer(sc, "crop_count", sw, 1, INT64_MAX);
        image.scores.push_back(gs);
      }
      b.golden.images.push_back(image);
    }
  }

  // Every listed file: regular, inside the bundle, of the listed size and (verify_hashes) sha256. All problems are
  // collected, as the Python loader does.
  std::vector<std::string> problems;
  for (auto& kv : b.files) {
    const std::string& name = kv.first;
    FileEntry& entry = kv.second;
    const std::string path = b.path_of(name);
    try {
      struct stat est = entry_stat(root, name);
      std::uint64_t size = static_cast<std::uint64_t>(est.st_size);
      if (size == entry.bytes && verify_hashes) {
        struct stat fst {};
        Fd fd(open_regular(path, &fst));
        size = static_cast<std::uint64_t>(fst.st_size);
        if (size == entry.bytes) {
          std::uint64_t read_bytes = 0;
          entry.computed_sha256 = sha256_fd(fd.get(), path, &read_bytes);
          size = read_bytes;
        }
      }
      if (size != entry.bytes) {
        problems.push_back(path + " is " + std::to_string(size) + " bytes, the manifest says " +
                           std::to_string(entry.bytes) + ": the file is truncated or was replaced");
      } else if (verify_hashes && entry.computed_sha256 != entry.sha256) {
        problems.push_back(path + " has sha256 " + entry.computed_sha256.substr(0, 16) + "..., the manifest says " +
                           entry.sha256.substr(0, 16) + "...: the file was altered after the build");
      }
    } catch (const std::runtime_error& e) {  // Missing, Refused, read errors
      problems.push_back(e.what());
    }
  }
  if (!problems.empty()) {
    std::ostringstream msg;
    msg << "bundle " << root << " is damaged (" << kRebuild << ", or copy it again):";
    for (const std::string& p : problems) msg << "\n  " << p;
    throw std::runtime_error(msg.str());
  }

  // A graph reads only listed (so checked) bundle files: the rule of the Python loader's check_onnx_references.
  for (auto& kv : b.graphs) {
    GraphEntry& graph = kv.second;
    for (const auto& variant : graph.variants) {
      const std::string& file = variant.second;
      const std::string path = b.path_of(file);
      const std::string what = path + " (the " + variant.first + " " + graph.name + " graph)";
      std::vector<ExternalRef> refs;
      try {
        refs = onnx_external_refs(path);
      } catch (const OnnxFormatError& e) {
        throw std::runtime_error(what + " is not a readable ONNX model (" + e.what() + "); " + kRebuild);
      }
      std::vector<std::string>& names = graph.external_data[variant.first];
      for (const ExternalRef& ref : refs) {
        const std::string name = ref.has_location ? external_data_name(file, ref.location) : "";
        if (ref.has_location && ref.location == kOrtMemoryAddressTag)
          throw std::runtime_error(what + " loads external data from '" + ref.location + "', ONNX Runtime's tag for "
                                   "data at a memory address (the tensor's offset would be read as a pointer): a "
                                   "bundle's graphs may read only the bundle's own listed and hashed files; " +
                                   kRebuild);
        if (name.empty() || b.files.find(name) == b.files.end()) {
          std::string shown = ref.has_location ? "'" + ref.location.substr(0, 200) + "'"
                                               : "an external tensor without a location";
          for (char& c : shown)
            if (static_cast<unsigned char>(c) < 0x20) c = '?';
          throw std::runtime_error(what + " loads external data from " + shown + ", which is not a file listed in " +
                                   manifest_path + ": a bundle's graphs may read only the bundle's own listed and "
                                   "hashed files; " + kRebuild);
        }
        if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
      }
    }
  }
  return b;
}

}  // namespace diffv2iqa

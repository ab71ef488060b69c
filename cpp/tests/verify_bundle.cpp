// verify_bundle DIR: load a diffv2iqa-trt bundle with the C++ reader (every file's size and sha256 checked) and
// print a JSON summary on stdout; on any problem print the message on stderr and exit with status 2.
// Two helper modes for tests of the building blocks:
//   verify_bundle --sha256 FILE...  prints "<hex digest>  FILE" per file (streamed in 1 MiB chunks);
//   verify_bundle --json FILE       parses FILE with the strict reader (4 MiB, 32 levels, no duplicates, no NaN);
//                                   prints the value's type, and for a top-level string its bytes on a second line.
//   verify_bundle --onnx-refs FILE  the external-data references of an ONNX file (onnx_refs.hpp), one JSON string
//                                   per line (null for an external tensor without a location).
//
// Build: g++ -std=c++17 -O2 -Wall -Wextra -Werror -I cpp/include cpp/tests/verify_bundle.cpp cpp/src/manifest.cpp
//        cpp/src/onnx_refs.cpp
#include <cstdio>
#include <exception>
#include <string>

#include "diffv2iqa/json.hpp"
#include "diffv2iqa/manifest.hpp"
#include "diffv2iqa/onnx_refs.hpp"
#include "diffv2iqa/sha256.hpp"

namespace {

using diffv2iqa::json::quote;

std::string num(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*g", digits, v);
  return buf;
}

std::string read_all(const char* path) {
  std::FILE* f = std::fopen(path, "rb");
  if (!f) throw std::runtime_error(std::string(path) + " cannot be opened");
  std::string text;
  char buf[65536];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) text.append(buf, n);
  std::fclose(f);
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  const bool usage_ok = mode == "--sha256" ? argc >= 3 : mode == "--json" || mode == "--onnx-refs" ? argc == 3 : argc == 2;
  if (!usage_ok) {
    std::fprintf(stderr, "usage: %s BUNDLE_DIR | --sha256 FILE... | --json FILE | --onnx-refs FILE\n",
                 argc > 0 ? argv[0] : "verify_bundle");
    return 2;
  }
  try {
    if (mode == "--sha256") {
      for (int i = 2; i < argc; ++i) std::printf("%s  %s\n", diffv2iqa::sha256_file(argv[i]).c_str(), argv[i]);
      return 0;
    }
    if (mode == "--json") {
      const diffv2iqa::json::Value v = diffv2iqa::json::parse(read_all(argv[2]));
      std::printf("%s\n", diffv2iqa::json::type_name(v.type));
      if (v.is_string()) std::fwrite(v.string.data(), 1, v.string.size(), stdout);
      if (v.is_number()) std::printf("%s %s %s\n", num(v.number, 17).c_str(),
                                     v.integral ? std::to_string(v.integer).c_str() : "-",
                                     v.unsigned_integral ? std::to_string(v.uinteger).c_str() : "-");
      return 0;
    }
    if (mode == "--onnx-refs") {
      for (const diffv2iqa::ExternalRef& ref : diffv2iqa::onnx_external_refs(argv[2]))
        std::printf("%s\n", ref.has_location ? quote(ref.location).c_str() : "null");
      return 0;
    }
    const diffv2iqa::Bundle b = diffv2iqa::load_bundle(argv[1], true);
    const diffv2iqa::Pipeline& p = b.pipeline;
    std::string o = "{\n";
    o += "  \"schema\": " + quote(b.schema) + ",\n";
    o += "  \"schema_version\": " + std::to_string(b.schema_version) + ",\n";
    o += "  \"steps\": " + std::to_string(p.steps) + ",\n";
    o += "  \"crop_size\": " + std::to_string(p.crop_size) + ",\n";
    o += "  \"size_multiple\": " + std::to_string(p.size_multiple) + ",\n";
    o += "  \"capture_t1\": " + std::to_string(p.capture_t1) + ",\n";
    o += "  \"capture_t2\": " + std::to_string(p.capture_t2) + ",\n";
    o += "  \"crops\": " + quote(p.crops) + ",\n";
    o += "  \"mode\": " + quote(p.mode) + ",\n";
    const diffv2iqa::NoiseTestVectors& tv = p.noise.test_vectors;
    o += "  \"noise\": {\"generator\": " + quote(p.noise.generator) + ", \"seed\": " + std::to_string(p.noise.seed) +
         ", \"test_vectors\": {\"shape\": [" + std::to_string(tv.shape[0]) + ", " + std::to_string(tv.shape[1]) + ", " +
         std::to_string(tv.shape[2]) + "], \"first8_bits\": {";
    bool first_row = true;
    for (const auto& kv : tv.first8_bits) {
      o += std::string(first_row ? "" : ", ") + quote(std::to_string(kv.first)) + ": [";
      for (std::size_t i = 0; i < kv.second.size(); ++i) {
        char hex[16];
        std::snprintf(hex, sizeof hex, "0x%08x", kv.second[i]);
        o += (i ? ", " : "") + quote(hex);
      }
      o += "]";
      first_row = false;
    }
    o += "}, \"row_sha256\": [";
    for (std::size_t i = 0; i < tv.row_sha256.size(); ++i) o += (i ? ", " : "") + quote(tv.row_sha256[i]);
    o += "]}},\n";
    o += "  \"resize\": " + quote(p.resize) + ",\n";
    o += "  \"golden\": [";
    for (std::size_t i = 0; i < b.golden.images.size(); ++i)
      o += (i ? ", " : "") + quote(b.golden.images[i].file);
    o += "],\n";
    o += "  \"fusion\": {\"vcg_weight\": " + num(p.fusion.vcg_weight, 17) +
         ", \"vda_weight\": " + num(p.fusion.vda_weight, 17) + "},\n";
    o += "  \"normalisation\": {\"divisor\": " + num(p.normalisation.divisor, 17) +
         ", \"mean\": " + num(p.normalisation.mean, 17) + ", \"std\": " + num(p.normalisation.std, 17) + "},\n";
    o += std::string("  \"uint8_roundtrip\": ") + (p.uint8_roundtrip ? "true" : "false") + ",\n";
    o += "  \"coef_rows\": " + std::to_string(p.coef.size()) + ",\n";
    o += "  \"gamma_head\": [";
    for (std::size_t i = 0; i < p.gamma.size() && i < 3; ++i) o += (i ? ", " : "") + quote(num(p.gamma[i], 9));
    o += "],\n  \"graphs\": {";
    bool first = true;
    for (const auto& g : b.graphs) {
      o += std::string(first ? "" : ", ") + quote(g.first) + ": " + quote(g.second.fp32_file);
      first = false;
    }
    o += "},\n  \"external_data\": {";
    first = true;
    for (const auto& g : b.graphs)
      for (const auto& v : g.second.external_data) {
        if (v.second.empty()) continue;
        o += std::string(first ? "" : ", ") + quote(g.second.variants.at(v.first)) + ": [";
        for (std::size_t i = 0; i < v.second.size(); ++i) o += (i ? ", " : "") + quote(v.second[i]);
        o += "]";
        first = false;
      }
    o += "},\n  \"files\": {";
    first = true;
    for (const auto& f : b.files) {
      o += std::string(first ? "\n" : ",\n") + "    " + quote(f.first) + ": {\"sha256\": " +
           quote(f.second.computed_sha256) + ", \"bytes\": " + std::to_string(f.second.bytes) + "}";
      first = false;
    }
    o += "\n  }\n}\n";
    std::fputs(o.c_str(), stdout);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "verify_bundle: %s\n", e.what());
    return 2;
  }
}

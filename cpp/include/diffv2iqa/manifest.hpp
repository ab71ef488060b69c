// Reading a diffv2iqa-trt bundle (manifest.json + listed files) from C++, with the checks of the Python loader
// (diffv2iqa_trt.bundle.load_bundle): schema name and version, strict bounded JSON, every listed file a regular file
// inside the bundle (no symbolic link on the way), of the listed size and sha256. See docs/bundle.md, "Reading a
// bundle from another language" and "Guarantees". POSIX only (lstat, O_NOFOLLOW). Implementation: src/manifest.cpp.
#pragma once

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace diffv2iqa {

constexpr const char* kSchemaName = "diffv2iqa-trt-bundle";
constexpr int kSchemaVersion = 3;
constexpr const char* kManifestName = "manifest.json";
constexpr const char* kRebuild = "rebuild the bundle with `diffv2iqa-trt build`";

struct FileEntry {
  std::string sha256;  // as listed in the manifest (64 lowercase hex digits)
  std::uint64_t bytes = 0;
  std::string computed_sha256;  // as this reader computed it (empty when hashes were not verified)
};

struct Noise {
  std::string generator;
  std::int64_t seed = 0;
};

struct Fusion {
  double vcg_weight = 0.0;
  double vda_weight = 0.0;
};

struct Normalisation {
  std::string formula;
  double divisor = 255.0;
  double mean = 0.5;
  double std = 0.5;
};

struct Pipeline {
  int steps = 0;
  std::vector<double> gamma;              // steps values (float32 values, exact in double)
  std::vector<std::vector<double>> coef;  // steps rows of coef_names.size() (5) values
  std::vector<std::string> coef_names;
  int capture_t1 = 0;
  int capture_t2 = 0;
  Noise noise;
  int crop_size = 0;
  int size_multiple = 0;
  std::string crops;
  std::string mode;
  Fusion fusion;
  Normalisation normalisation;
  bool uint8_roundtrip = false;
};

struct Graph {
  std::string name;
  std::map<std::string, std::string> variants;  // precision -> bundle-relative ONNX file
  std::map<std::string, std::string> engines;   // precision -> bundle-relative engine file
  std::string fp32_file;                        // bundle-relative path of the fp32 ONNX variant
  std::string fp32_path;                        // the same joined to the bundle directory
};

struct Bundle {
  std::string root;  // the directory as given
  std::string schema;
  int schema_version = 0;
  std::string toolkit_version;
  Pipeline pipeline;
  std::map<std::string, Graph> graphs;     // restore_step, vcg, vda
  std::map<std::string, FileEntry> files;  // bundle-relative name -> entry

  std::string path_of(const std::string& name) const { return root + "/" + name; }
};

// Load and check a bundle directory (a path to its manifest.json is accepted too). Throws std::runtime_error with a
// message naming the file and the problem: missing, not a regular file, a symbolic link, truncated (other size),
// altered (other sha256, only with verify_hashes), another schema or version (rebuild), a manifest that is not
// strict JSON within the bounds, or a pipeline outside the supported bounds.
Bundle load_bundle(const std::string& dir, bool verify_hashes = true);

// The problem with a bundle-relative file name, or "" when it is a plain relative '/'-separated path.
std::string relpath_problem(const std::string& name);

}  // namespace diffv2iqa

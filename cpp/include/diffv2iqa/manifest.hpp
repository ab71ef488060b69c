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
constexpr int kSchemaVersion = 4;
constexpr const char* kManifestName = "manifest.json";
constexpr const char* kRebuild = "rebuild the bundle with `diffv2iqa-trt build`";
// The only noise generator and resize of the scoring contract (runtime/philox.py GENERATOR, runtime/resize.py RESIZE).
constexpr const char* kNoiseGenerator =
    "philox4x32-10-key(seed)-counter(block,row,0,0)-boxmuller-f64(log,table1024+poly)-to-f32";
constexpr const char* kResize = "bicubic(a=-0.5,antialias)-width-then-height-f64-rint-uint8";

struct FileEntry {
  std::string sha256;  // as listed in the manifest (64 lowercase hex digits)
  std::uint64_t bytes = 0;
  std::string computed_sha256;  // as this reader computed it (empty when hashes were not verified)
};

// What a bundle ships to check a port of the noise generator: at shape (3, crop, crop), the float32 bits of the first
// 8 values of some rows (0 and T) and the sha256 of every row's little-endian float32 bytes (rows 0..T).
struct NoiseTestVectors {
  std::int64_t shape[3] = {0, 0, 0};
  std::map<std::uint32_t, std::vector<std::uint32_t>> first8_bits;  // row -> 8 float32 bit patterns
  std::vector<std::string> row_sha256;                              // rows 0..T
};

struct Noise {
  std::string generator;
  std::uint64_t seed = 0;  // up to 2**64-1
  NoiseTestVectors test_vectors;
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
  std::string resize;
  Fusion fusion;
  Normalisation normalisation;
  bool uint8_roundtrip = false;
};

struct GraphEntry {  // one graph of the manifest (backend.hpp's Graph is the enum of the three)
  std::string name;
  std::vector<std::string> inputs;   // tensor names as the manifest lists them (the contract's, in its order)
  std::vector<std::string> outputs;
  std::map<std::string, std::string> variants;  // precision -> bundle-relative ONNX file
  std::map<std::string, std::string> engines;   // precision -> bundle-relative engine file
  std::string fp32_file;                        // bundle-relative path of the fp32 ONNX variant
  std::string fp32_path;                        // the same joined to the bundle directory
  // precision -> the bundle files its ONNX variant reads as external data (each listed and checked; usually none)
  std::map<std::string, std::vector<std::string>> external_data;
};

// One recorded score of a golden input: the Python runtime's result in one mode and crop policy.
struct GoldenScore {
  std::string mode;
  std::string crops;
  double score = 0.0;
  bool has_vcg = false;  // false: the branch has fusion weight 0 and was not run (null in the manifest)
  double vcg = 0.0;
  bool has_vda = false;
  double vda = 0.0;
  std::int64_t crop_count = 0;
};

struct GoldenImage {
  std::string file;  // bundle-relative, listed in files (so its size and sha256 are checked)
  std::int64_t height = 0;
  std::int64_t width = 0;
  std::vector<GoldenScore> scores;
};

struct Golden {
  bool present = false;  // false: the manifest's golden is null (the build made none)
  std::string runtime;
  std::uint64_t noise_seed = 0;
  std::vector<GoldenImage> images;
};

struct Bundle {
  std::string root;  // the directory as given
  std::string schema;
  int schema_version = 0;
  std::string toolkit_version;
  Pipeline pipeline;
  std::map<std::string, GraphEntry> graphs;   // restore_step, vcg, vda
  std::map<std::string, FileEntry> files;  // bundle-relative name -> entry
  Golden golden;

  std::string path_of(const std::string& name) const { return root + "/" + name; }
};

// Load and check a bundle directory (a path to its manifest.json is accepted too). Throws std::runtime_error with a
// message naming the file and the problem: missing, not a regular file, a symbolic link, truncated (other size),
// altered (other sha256, only with verify_hashes), another schema or version (rebuild), a manifest that is not
// strict JSON within the bounds, a pipeline outside the supported bounds, or an ONNX variant that reads external data
// from anything but a listed bundle file (onnx_refs.hpp; checked for every variant, also without verify_hashes).
Bundle load_bundle(const std::string& dir, bool verify_hashes = true);

// "" for a crop policy the contract knows (center, five, resize224, grid:N with N in [1, 64]), else the reason.
std::string crop_policy_problem(const std::string& policy);
// N of a valid grid:N policy, 0 for any other policy.
int grid_count(const std::string& policy);

// The problem with a bundle-relative file name, or "" when it is a plain relative '/'-separated path.
std::string relpath_problem(const std::string& name);

}  // namespace diffv2iqa

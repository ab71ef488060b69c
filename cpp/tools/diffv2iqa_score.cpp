// diffv2iqa-score: score PNG/PPM images with a diffv2iqa-trt bundle on ONNX Runtime, as `diffv2iqa-trt score` does.
//
//   diffv2iqa-score --bundle B [--mode crops|faithful] [--crops center|five|grid:N|resize224] [--seed N]
//                   [--batch-size N] [--threads N] IMAGE.png|ppm ...
//   diffv2iqa-score --bundle B --check-golden [--batch-size N] [--threads N]
//
// Prints JSON on stdout. Exit 0: every image scored (or the golden check passed); 1: some image could not be scored
// (its row has an error, the others are scored) or the golden check failed; 2: bad usage or a bad bundle.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "diffv2iqa/contract.hpp"
#include "diffv2iqa/image.hpp"
#include "diffv2iqa/json.hpp"
#include "diffv2iqa/manifest.hpp"
#include "diffv2iqa/onnxruntime_backend.hpp"
#include "diffv2iqa/philox.hpp"
#include "diffv2iqa/scorer.hpp"
#include "diffv2iqa/sha256.hpp"

namespace {

using diffv2iqa::json::quote;

using namespace diffv2iqa;

constexpr double kGoldenTolerance = 1e-6;
constexpr std::size_t kImagesPerChunk = 16;  // runtime/scoring.py DEFAULT_IMAGES_PER_CHUNK: scored together
constexpr int kMaxBatch = 4096;
constexpr int kMaxThreads = 1024;

const char* const kUsage =
    "usage: diffv2iqa-score --bundle DIR [--mode crops|faithful] [--crops center|five|grid:N|resize224]\n"
    "                       [--seed N] [--batch-size N] [--threads N] IMAGE.png|ppm ...\n"
    "       diffv2iqa-score --bundle DIR --check-golden [--batch-size N] [--threads N]\n"
    "Scores images as `diffv2iqa-trt score --backend onnxruntime` does (fp32 graphs, CPU); JSON on stdout.\n"
    "Defaults: the bundle's mode, crop policy and noise seed; batch size 8; ONNX Runtime's thread count.\n"
    "--check-golden scores the bundle's golden inputs in their recorded modes, checks the noise test vectors, and\n"
    "exits 1 when a score differs from the recorded one by more than 1e-6.\n";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Full precision (a float64 printed with 17 significant digits reads back exactly); null for none or non-finite.
std::string num(double v, bool present = true) {
  if (!present || !std::isfinite(v)) return "null";
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

std::uint64_t parse_uint(const std::string& option, const std::string& text, std::uint64_t lo, std::uint64_t hi) {
  bool ok = !text.empty() && text.size() <= 20;
  std::uint64_t v = 0;
  for (char c : text) {
    if (!ok || c < '0' || c > '9') {
      ok = false;
      break;
    }
    std::uint64_t d = static_cast<std::uint64_t>(c - '0');
    if (v > (~std::uint64_t{0} - d) / 10) {
      ok = false;
      break;
    }
    v = v * 10 + d;
  }
  if (!ok || v < lo || v > hi)
    throw UsageError(option + " must be an integer between " + std::to_string(lo) + " and " + std::to_string(hi) +
                     ", got '" + text + "'");
  return v;
}

struct Args {
  std::string bundle;
  std::string mode, crops;
  bool has_seed = false;
  std::uint64_t seed = 0;
  int batch_size = 8;
  int threads = 0;
  bool check_golden = false;
  std::vector<std::string> images;
};

Args parse_args(int argc, char** argv) {
  Args a;
  bool options_done = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (options_done || arg.empty() || arg[0] != '-' || arg == "-") {
      a.images.push_back(arg);
      continue;
    }
    if (arg == "--") {
      options_done = true;
      continue;
    }
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    if (arg == "--check-golden") {
      a.check_golden = true;
      continue;
    }
    std::string value;
    const std::size_t eq = arg.find('=');
    const std::string name = arg.substr(0, eq);
    const char* const valued[] = {"--bundle", "--mode", "--crops", "--seed", "--batch-size", "--threads"};
    bool known = false;
    for (const char* v : valued) known = known || name == v;
    if (!known) throw UsageError("unknown option '" + arg + "'");
    if (eq != std::string::npos) {
      value = arg.substr(eq + 1);
    } else {
      if (i + 1 >= argc) throw UsageError(name + " needs a value");
      value = argv[++i];
    }
    if (name == "--bundle") {
      a.bundle = value;
    } else if (name == "--mode") {
      if (value != "crops" && value != "faithful")
        throw UsageError("--mode must be crops or faithful, got '" + value + "'");
      a.mode = value;
    } else if (name == "--crops") {
      std::string why = crop_policy_problem(value);
      if (!why.empty()) throw UsageError("--crops: " + why);
      a.crops = value;
    } else if (name == "--seed") {
      a.has_seed = true;
      a.seed = parse_uint(name, value, 0, ~std::uint64_t{0});
    } else if (name == "--batch-size") {
      a.batch_size = static_cast<int>(parse_uint(name, value, 1, kMaxBatch));
    } else {
      a.threads = static_cast<int>(parse_uint(name, value, 1, kMaxThreads));
    }
  }
  if (a.bundle.empty()) throw UsageError("--bundle DIR is required");
  if (a.check_golden && !a.images.empty())
    throw UsageError("--check-golden scores the bundle's own inputs: give no IMAGE");
  if (a.check_golden && (!a.mode.empty() || !a.crops.empty() || a.has_seed))
    throw UsageError("--check-golden uses the recorded modes, crop policies and seed: drop --mode, --crops, --seed");
  if (!a.check_golden && a.images.empty()) throw UsageError("no IMAGE given");
  return a;
}

struct Row {
  std::string path;
  bool ok = false;
  ImageScore score;
  std::string error;
};

// Score files in chunks of kImagesPerChunk (as the Python CLI does); a file that fails is its own error row.
std::vector<Row> score_files(Scorer& scorer, const std::vector<std::string>& files) {
  std::vector<Row> rows(files.size());
  std::size_t start = 0;
  while (start < files.size()) {
    const std::size_t end = std::min(files.size(), start + kImagesPerChunk);
    std::vector<std::size_t> which;
    std::vector<std::vector<WorkUnit>> prepared;
    for (std::size_t i = start; i < end; ++i) {
      rows[i].path = files[i];
      try {
        prepared.push_back(scorer.prepare(read_image(files[i])));
        which.push_back(i);
      } catch (const ImageError& e) {
        rows[i].error = e.reason();
      } catch (const ImageSizeError& e) {
        rows[i].error = e.what();
      } catch (const std::bad_alloc&) {  // that file's pixels and work units; the others are still scored
        rows[i].error = "not enough memory to decode and prepare this image; lower its size or free memory";
      }
    }
    std::vector<ImageScore> scores = scorer.score_prepared(prepared);
    for (std::size_t k = 0; k < which.size(); ++k) {
      Row& r = rows[which[k]];
      const ImageScore& s = scores[k];
      const bool finite = std::isfinite(s.score) && (!s.has_vcg || std::isfinite(s.vcg)) &&
                          (!s.has_vda || std::isfinite(s.vda));
      if (finite) {
        r.ok = true;
        r.score = s;
      } else {
        double bad = !std::isfinite(s.score) ? s.score : s.has_vcg && !std::isfinite(s.vcg) ? s.vcg : s.vda;
        r.error = "the model produced a non-finite score (" + std::string(std::isnan(bad) ? "nan" : bad > 0 ? "inf"
                                                                                                          : "-inf") +
                  "); the weights or the bundle's graphs are broken for this input";
      }
    }
    start = end;
  }
  return rows;
}

std::string hex32(std::uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

// The noise test vectors of the manifest recomputed with philox.hpp: JSON text, and whether all of them match.
std::string check_noise(const Bundle& b, bool* ok) {
  const NoiseTestVectors& tv = b.pipeline.noise.test_vectors;
  const std::size_t count = static_cast<std::size_t>(tv.shape[0] * tv.shape[1] * tv.shape[2]);
  const std::uint32_t rows = static_cast<std::uint32_t>(b.pipeline.steps) + 1;
  std::string hashes, first;
  std::size_t matching = 0;
  bool first_ok = !tv.first8_bits.empty();
  *ok = tv.row_sha256.size() == rows;
  for (std::uint32_t r = 0; r < rows; ++r) {
    const std::vector<float> values = normal_row(b.pipeline.noise.seed, r, count);
    std::vector<unsigned char> bytes(values.size() * 4);
    for (std::size_t i = 0; i < values.size(); ++i) {
      std::uint32_t bits;
      std::memcpy(&bits, &values[i], 4);
      for (int k = 0; k < 4; ++k) bytes[4 * i + static_cast<std::size_t>(k)] = static_cast<unsigned char>(bits >> (8 * k));
    }
    Sha256 h;
    h.update(bytes.data(), bytes.size());
    const std::string digest = h.finish_hex();
    hashes += (r ? ", " : "") + quote(digest);
    if (r < tv.row_sha256.size() && tv.row_sha256[r] == digest) ++matching;
    auto want = tv.first8_bits.find(r);
    if (want != tv.first8_bits.end()) {
      first += std::string(first.empty() ? "" : ", ") + quote(std::to_string(r)) + ": [";
      for (std::size_t i = 0; i < 8; ++i) {
        std::uint32_t bits = 0;
        if (i < values.size()) std::memcpy(&bits, &values[i], 4);
        first += (i ? ", " : "") + quote(hex32(bits));
        first_ok = first_ok && i < want->second.size() && want->second[i] == bits;
      }
      first += "]";
    }
  }
  for (const auto& kv : tv.first8_bits) first_ok = first_ok && kv.first < rows;
  *ok = *ok && matching == rows && first_ok;
  return "{\"seed\": " + std::to_string(b.pipeline.noise.seed) + ", \"shape\": [" + std::to_string(tv.shape[0]) +
         ", " + std::to_string(tv.shape[1]) + ", " + std::to_string(tv.shape[2]) + "], \"rows\": " +
         std::to_string(rows) + ", \"rows_matching\": " + std::to_string(matching) + ", \"first8_bits_match\": " +
         (first_ok ? "true" : "false") + ", \"ok\": " + (*ok ? "true" : "false") + ",\n    \"first8_bits\": {" + first +
         "},\n    \"row_sha256\": [" + hashes + "]}";
}

int check_golden(const Bundle& b, GraphBackend& backend, const Args& args) {
  if (!b.golden.present || b.golden.images.empty()) {
    std::fprintf(stderr, "diffv2iqa-score: %s has no golden inputs (its manifest's golden is null): rebuild it with "
                         "`diffv2iqa-trt build`\n", b.root.c_str());
    return 1;
  }
  bool noise_ok = false;
  const std::string noise = check_noise(b, &noise_ok);
  double max_diff = 0.0;
  bool ok = noise_ok;
  std::string cases;
  // Noise that differs from the recorded rows cannot give the recorded scores: say so without scoring (a hostile
  // manifest cannot make the check score anything when its vectors are wrong).
  for (const GoldenImage& g : noise_ok ? b.golden.images : std::vector<GoldenImage>{}) {
    RgbImage image = read_image(b.path_of(g.file));
    if (image.height != g.height || image.width != g.width)
      throw std::runtime_error(b.path_of(g.file) + " is " + std::to_string(image.width) + "x" +
                               std::to_string(image.height) + " pixels, the manifest says " +
                               std::to_string(g.width) + "x" + std::to_string(g.height));
    for (const GoldenScore& want : g.scores) {
      ScoreOptions o;
      o.mode = want.mode;
      o.crops = want.crops;
      o.seed = b.golden.noise_seed;
      o.batch_size = args.batch_size;
      Scorer scorer(b.pipeline, backend, o);
      const ImageScore got = scorer.score_prepared({scorer.prepare(image)})[0];
      double diff = std::fabs(got.score - want.score);
      bool same = got.crops == want.crop_count && got.has_vcg == want.has_vcg && got.has_vda == want.has_vda;
      if (want.has_vcg) diff = std::max(diff, std::fabs(got.vcg - want.vcg));
      if (want.has_vda) diff = std::max(diff, std::fabs(got.vda - want.vda));
      if (!(diff <= kGoldenTolerance)) same = false;  // NaN fails too
      ok = ok && same;
      max_diff = std::isnan(diff) || diff > max_diff ? diff : max_diff;
      cases += std::string(cases.empty() ? "" : ",\n") + "    {\"file\": " + quote(g.file) + ", \"mode\": " +
               quote(want.mode) + ", \"crops\": " + quote(want.crops) + ", \"score\": " + num(got.score) +
               ", \"expected_score\": " + num(want.score) + ", \"vcg\": " + num(got.vcg, got.has_vcg) +
               ", \"expected_vcg\": " + num(want.vcg, want.has_vcg) + ", \"vda\": " + num(got.vda, got.has_vda) +
               ", \"expected_vda\": " + num(want.vda, want.has_vda) + ", \"crop_count\": " +
               std::to_string(got.crops) + ", \"expected_crop_count\": " + std::to_string(want.crop_count) +
               ", \"abs_diff\": " + num(diff) + ", \"ok\": " + (same ? "true" : "false") + "}";
    }
  }
  std::printf("{\n  \"bundle\": %s,\n  \"runtime\": %s,\n  \"golden_runtime\": %s,\n  \"noise\": %s,\n"
              "  \"golden\": [\n%s\n  ],\n  \"max_abs_diff\": %s,\n  \"tolerance\": %s,\n  \"ok\": %s\n}\n",
              quote(b.root).c_str(), quote(OnnxRuntimeBackend::version()).c_str(), quote(b.golden.runtime).c_str(),
              noise.c_str(), cases.c_str(), num(max_diff).c_str(), "1e-06",
              ok ? "true" : "false");
  if (noise_ok)
    std::fprintf(stderr, "diffv2iqa-score: golden check %s: max abs diff %.3g over %zu images (tolerance %g); noise "
                         "test vectors match\n", ok ? "passed" : "FAILED", max_diff, b.golden.images.size(),
                 kGoldenTolerance);
  else
    std::fprintf(stderr, "diffv2iqa-score: golden check FAILED: the noise test vectors DIFFER from this generator's "
                         "rows, so the golden inputs were not scored; the manifest's pipeline.noise was altered, or "
                         "this build's generator (philox.hpp, the platform's log) is wrong\n");
  return ok ? 0 : 1;
}

int run(int argc, char** argv) {
  Args args;
  try {
    args = parse_args(argc, argv);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "diffv2iqa-score: %s\n%s", e.what(), kUsage);
    return 2;
  }
  Bundle bundle;
  std::unique_ptr<OnnxRuntimeBackend> backend;
  try {
    bundle = load_bundle(args.bundle, true);
    backend.reset(new OnnxRuntimeBackend(bundle, args.threads));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "diffv2iqa-score: %s\n", e.what());
    return 2;
  }
  if (args.check_golden) return check_golden(bundle, *backend, args);

  ScoreOptions o = bundle_defaults(bundle.pipeline);
  if (!args.mode.empty()) o.mode = args.mode;
  if (!args.crops.empty()) o.crops = args.crops;
  if (args.has_seed) o.seed = args.seed;
  o.batch_size = args.batch_size;
  Scorer scorer(bundle.pipeline, *backend, o);
  const std::vector<Row> rows = score_files(scorer, args.images);
  bool all_ok = true;
  std::string out = "{\n  \"bundle\": " + quote(bundle.root) + ",\n  \"runtime\": " +
                    quote(OnnxRuntimeBackend::version()) + ",\n  \"mode\": " + quote(o.mode) + ",\n  \"crops\": " +
                    quote(o.crops) + ",\n  \"seed\": " + std::to_string(o.seed) + ",\n  \"batch_size\": " +
                    std::to_string(o.batch_size) + ",\n  \"results\": [";
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    all_ok = all_ok && r.ok;
    out += std::string(i ? ",\n" : "\n") + "    {\"path\": " + quote(r.path) + ", \"score\": " +
           num(r.score.score, r.ok) + ", \"vcg\": " + num(r.score.vcg, r.ok && r.score.has_vcg) + ", \"vda\": " +
           num(r.score.vda, r.ok && r.score.has_vda) + ", \"crops\": " + std::to_string(r.ok ? r.score.crops : 0) +
           ", \"error\": " + (r.ok ? "null" : quote(r.error)) + "}";
  }
  out += "\n  ]\n}\n";
  std::fputs(out.c_str(), stdout);
  for (const Row& r : rows)
    if (!r.ok) std::fprintf(stderr, "diffv2iqa-score: %s: %s\n", r.path.c_str(), r.error.c_str());
  return all_ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "diffv2iqa-score: %s\n", e.what());
    return 2;
  }
}

// The scoring loop of diffv2iqa_trt/runtime/pipeline.py over a host GraphBackend (one whose calls have finished when
// they return, such as the ONNX Runtime backend): noise bank per restoration size (philox.hpp), the fixed-step loop
// with its two snapshots, the crops cut from x, y0, y_t1 and y_t2, the branches in batches and the fusion.
//
// Batching follows the Python pipeline exactly (a graph's float32 results could depend on the batch it runs in):
// the work units of the images scored together are grouped by size in order of first appearance, restored in
// consecutive chunks of batch_size, and their crops scored in consecutive runs of batch_size in that order.
#pragma once

#include <cstdint>
#include <list>
#include <string>
#include <utility>
#include <vector>

#include "diffv2iqa/backend.hpp"
#include "diffv2iqa/contract.hpp"
#include "diffv2iqa/manifest.hpp"

namespace diffv2iqa {

struct ScoreOptions {
  std::string mode;    // crops or faithful
  std::string crops;   // center, five, grid:N or resize224
  std::uint64_t seed = 0;
  int batch_size = 8;  // crops per graph call
};

// The options a bundle's pipeline records (its mode, crop policy and noise seed; batch size 8).
ScoreOptions bundle_defaults(const Pipeline& pipeline);

struct ImageScore {
  double score = 0.0;
  bool has_vcg = false;  // false: fusion weight 0, the branch was not run
  double vcg = 0.0;
  bool has_vda = false;
  double vda = 0.0;
  int crops = 0;
};

class Scorer {
 public:
  // Throws std::invalid_argument for options the contract does not allow.
  Scorer(const Pipeline& pipeline, GraphBackend& backend, ScoreOptions options);

  const ScoreOptions& options() const { return options_; }
  // One decoded image's work units (ImageSizeError for an image the crop rules refuse).
  std::vector<WorkUnit> prepare(const RgbImage& image) const;
  // Score images already prepared; one result per image, in order.
  std::vector<ImageScore> score_prepared(const std::vector<std::vector<WorkUnit>>& images);

  // Row r (0..T) of the noise bank at (3, height, width): its first 3*height*width floats.
  const std::vector<float>& noise_bank(int height, int width);

 private:
  struct Snapshots {
    std::vector<float> y0, yt1, yt2;
  };
  Snapshots restore(const std::vector<float>& x, int batch, int height, int width);
  void score_branches(std::vector<float> (&pending)[4], int count, std::vector<float>& vcg, std::vector<float>& vda);

  const Pipeline& pipeline_;
  GraphBackend& backend_;
  ScoreOptions options_;
  std::list<std::pair<std::pair<int, int>, std::vector<float>>> banks_;  // most recently used first
};

}  // namespace diffv2iqa

// The scoring contract's preprocessing and aggregation, as diffv2iqa_trt/runtime/crops.py, contract.py and
// pipeline.py compute them (the code is the reference; docs/bundle.md, "The scoring contract", describes it):
// the small-image upscale, crop boxes of every policy, the two modes, the input normalisation, the crop mean and the
// fusion. Implementation: src/contract.cpp (compiled with -ffp-contract=off).
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

#include "diffv2iqa/image.hpp"

namespace diffv2iqa {

constexpr int kMaxUpscale = 16;                                   // crops.MAX_UPSCALE
constexpr int kMaxUpscaleAspect = 32;                             // crops.MAX_UPSCALE_ASPECT
constexpr long long kMaxFaithfulPixels = 2048LL * 2048LL;         // crops.MAX_FAITHFUL_PIXELS

// An image the crop rules refuse (too small or thin to upscale, too large for faithful mode): that image's error.
class ImageSizeError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Box {
  int top = 0;
  int left = 0;
};

// A restoration input (uint8, normalised when restored) and the crop_size x crop_size boxes cut from it afterwards.
struct WorkUnit {
  RgbImage pixels;
  std::vector<Box> boxes;
};

// ImageSizeError when an image this small or thin cannot be upscaled to `size` within the bounds.
void check_upscale(int height, int width, int size);
// Short side below `size`: resized so it equals `size`, aspect kept (scale = size / short in float64, each side
// max(size, rint(side * scale)) with ties to even); otherwise returned unchanged.
RgbImage upscale_to_fit(const RgbImage& image, int size);
// Top-left corners of the crops of `policy` in an image of at least size x size (std::invalid_argument otherwise).
std::vector<Box> crop_boxes(const std::string& policy, int height, int width, int size);
// One decoded image's work units for `policy` and `mode` ("crops" or "faithful").
std::vector<WorkUnit> prepare(const RgbImage& image, const std::string& policy, const std::string& mode, int crop_size,
                              int size_multiple);

// uint8 (H, W, 3) -> float32 (3, H, W): x = (float32(v) / 255 - 0.5) / 0.5 in float32, into `out` (3*H*W floats).
void normalise(const RgbImage& image, float* out);

// The crop scores of one image averaged: float64 sum left to right in crop order, divided by the count (NaN if none).
double crop_mean(const std::vector<float>& values);
// score = vcg_weight * mean_vcg + vda_weight * mean_vda in float64; a term whose weight is 0 is 0.0.
double fuse(double vcg_weight, double mean_vcg, double vda_weight, double mean_vda);

}  // namespace diffv2iqa

// The scoring contract's resize, bit for bit with diffv2iqa_trt/runtime/resize.py (whose docstring is the
// specification; docs/bundle.md states it too): separable bicubic (Keys, a = -0.5) with Pillow's support rule and
// antialiasing, width pass then height pass in float64, every product and sum rounded on its own in the written
// order, then rint (half to even) and clamp to uint8. Implementation: src/resize.cpp, compiled with
// -ffp-contract=off (a fused multiply-add would change the sums).
#pragma once

#include <vector>

#include "diffv2iqa/image.hpp"

namespace diffv2iqa {

// The id the bundle manifest records for this resize (pipeline.resize).
constexpr const char* kResizeId = "bicubic(a=-0.5,antialias)-width-then-height-f64-rint-uint8";

// Keys' cubic with a = -0.5.
double cubic(double x);

// The taps of a pass from n to size samples: output i reads inputs first[i] .. first[i] + weights[i].size() - 1.
struct Taps {
  std::vector<int> first;
  std::vector<std::vector<double>> weights;
};
Taps resize_taps(int n, int size);

// uint8 RGB (h, w) -> (height, width); a copy when the size is unchanged. std::invalid_argument for a size below 1.
RgbImage resize_rgb(const RgbImage& image, int height, int width);

}  // namespace diffv2iqa

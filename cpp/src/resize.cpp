// The contract's bicubic resize: include/diffv2iqa/resize.hpp and diffv2iqa_trt/runtime/resize.py.
#include "diffv2iqa/resize.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace diffv2iqa {

double cubic(double x) {
  const double t = std::fabs(x);
  if (t < 1.0) return ((1.5 * t - 2.5) * t) * t + 1.0;
  if (t < 2.0) return ((-0.5 * t + 2.5) * t - 4.0) * t + 2.0;
  return 0.0;
}

Taps resize_taps(int n, int size) {
  if (n < 1 || size < 1)
    throw std::invalid_argument("cannot resize " + std::to_string(n) + " samples to " + std::to_string(size));
  const double scale = static_cast<double>(n) / static_cast<double>(size);
  const double fscale = std::max(scale, 1.0);
  const double support = 2.0 * fscale;
  Taps taps;
  taps.first.resize(static_cast<std::size_t>(size));
  taps.weights.resize(static_cast<std::size_t>(size));
  for (int i = 0; i < size; ++i) {
    const double centre = (static_cast<double>(i) + 0.5) * scale;
    const long lo = std::max(0L, static_cast<long>(std::floor((centre - support) + 0.5)));
    const long hi = std::min(static_cast<long>(n), static_cast<long>(std::floor((centre + support) + 0.5)));
    std::vector<double>& w = taps.weights[static_cast<std::size_t>(i)];
    double total = 0.0;
    for (long j = lo; j < hi; ++j) {
      w.push_back(cubic(((static_cast<double>(j) - centre) + 0.5) / fscale));
      total += w.back();
    }
    for (double& v : w) v = v / total;
    taps.first[static_cast<std::size_t>(i)] = static_cast<int>(lo);
  }
  return taps;
}

namespace {

// One pass over float64 values laid out (outer, n, inner): resample the middle axis from n to size samples.
std::vector<double> resample(const std::vector<double>& in, std::size_t outer, int n, std::size_t inner, int size) {
  const Taps taps = resize_taps(n, size);
  std::vector<double> out(outer * static_cast<std::size_t>(size) * inner);
  for (std::size_t o = 0; o < outer; ++o) {
    const double* src = in.data() + o * static_cast<std::size_t>(n) * inner;
    double* dst = out.data() + o * static_cast<std::size_t>(size) * inner;
    for (int i = 0; i < size; ++i) {
      const std::vector<double>& w = taps.weights[static_cast<std::size_t>(i)];
      const std::size_t first = static_cast<std::size_t>(taps.first[static_cast<std::size_t>(i)]);
      for (std::size_t e = 0; e < inner; ++e) {
        double acc = 0.0;  // products summed left to right, as the specification writes them
        for (std::size_t k = 0; k < w.size(); ++k) acc += w[k] * src[(first + k) * inner + e];
        dst[static_cast<std::size_t>(i) * inner + e] = acc;
      }
    }
  }
  return out;
}

}  // namespace

RgbImage resize_rgb(const RgbImage& image, int height, int width) {
  if (height < 1 || width < 1)
    throw std::invalid_argument("cannot resize to " + std::to_string(width) + "x" + std::to_string(height));
  if (image.height == height && image.width == width) return image;
  std::vector<double> values(image.data.begin(), image.data.end());
  std::size_t h = static_cast<std::size_t>(image.height);
  if (width != image.width) values = resample(values, h, image.width, 3, width);  // rows: (h, w, 3) -> (h, W, 3)
  if (height != image.height)
    values = resample(values, 1, image.height, static_cast<std::size_t>(width) * 3, height);  // (h, W*3) -> (H, W*3)
  RgbImage out(height, width);
  for (std::size_t k = 0; k < values.size(); ++k) {
    const double v = std::nearbyint(values[k]);  // default rounding mode: half to even, as np.rint
    out.data[k] = static_cast<std::uint8_t>(v < 0.0 ? 0.0 : v > 255.0 ? 255.0 : v);
  }
  return out;
}

}  // namespace diffv2iqa

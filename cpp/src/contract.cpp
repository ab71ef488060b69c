// The scoring contract's preprocessing and aggregation: include/diffv2iqa/contract.hpp.
#include "diffv2iqa/contract.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "diffv2iqa/manifest.hpp"
#include "diffv2iqa/resize.hpp"

namespace diffv2iqa {

namespace {
std::string size_text(int height, int width) { return std::to_string(width) + "x" + std::to_string(height); }
}  // namespace

void check_upscale(int height, int width, int size) {
  const int shorter = std::min(height, width), longer = std::max(height, width);
  if (shorter >= size) return;
  if (static_cast<long long>(shorter) * kMaxUpscale < size)
    throw ImageSizeError("image of " + size_text(height, width) +
                         " pixels is too small: its short side must be at least " +
                         std::to_string((size + kMaxUpscale - 1) / kMaxUpscale) + " pixels (it is upscaled to the " +
                         std::to_string(size) + "-pixel crop, at most " + std::to_string(kMaxUpscale) + "x)");
  if (static_cast<long long>(longer) > static_cast<long long>(shorter) * kMaxUpscaleAspect)
    throw ImageSizeError("image of " + size_text(height, width) + " pixels is too thin to upscale to the " +
                         std::to_string(size) + "-pixel crop: its long side may be at most " +
                         std::to_string(kMaxUpscaleAspect) +
                         " times its short side; crop it or use --crops resize224");
}

RgbImage upscale_to_fit(const RgbImage& image, int size) {
  const int shorter = std::min(image.height, image.width);
  if (shorter >= size) return image;
  check_upscale(image.height, image.width, size);
  const double scale = static_cast<double>(size) / static_cast<double>(shorter);
  // Python's round() of a float: to nearest, ties to even (nearbyint in the default rounding mode).
  const int h = std::max(size, static_cast<int>(std::nearbyint(static_cast<double>(image.height) * scale)));
  const int w = std::max(size, static_cast<int>(std::nearbyint(static_cast<double>(image.width) * scale)));
  return resize_rgb(image, h, w);
}

namespace {
// np.rint(np.linspace(0, stop, n)) for n >= 2: i * (stop / (n - 1)) rounded half to even, the last exactly stop.
std::vector<int> spaced(int stop, int n) {
  std::vector<int> out;
  const double step = static_cast<double>(stop) / static_cast<double>(n - 1);
  for (int i = 0; i < n; ++i)
    out.push_back(i == n - 1 ? stop : static_cast<int>(std::nearbyint(static_cast<double>(i) * step)));
  return out;
}
}  // namespace

std::vector<Box> crop_boxes(const std::string& policy, int height, int width, int size) {
  std::string why = crop_policy_problem(policy);
  if (!why.empty()) throw std::invalid_argument(why);
  if (height < size || width < size)
    throw std::invalid_argument("image " + std::to_string(height) + "x" + std::to_string(width) +
                                " is smaller than the crop size " + std::to_string(size));
  const int bottom = height - size, right = width - size;
  const Box center{bottom / 2, right / 2};
  if (policy == "center" || policy == "resize224") return {center};
  if (policy == "five") return {{0, 0}, {0, right}, {bottom, 0}, {bottom, right}, center};
  const int n = grid_count(policy);
  const std::vector<int> tops = n > 1 ? spaced(bottom, n) : std::vector<int>{bottom / 2};
  const std::vector<int> lefts = n > 1 ? spaced(right, n) : std::vector<int>{right / 2};
  std::vector<Box> boxes;
  for (int t : tops)
    for (int l : lefts) boxes.push_back({t, l});
  return boxes;
}

std::vector<WorkUnit> prepare(const RgbImage& image, const std::string& policy, const std::string& mode, int crop_size,
                              int size_multiple) {
  if (crop_size < 1 || size_multiple < 1 || crop_size % size_multiple)
    throw std::invalid_argument("crop size " + std::to_string(crop_size) + " must be a positive multiple of " +
                                std::to_string(size_multiple));
  std::string why = crop_policy_problem(policy);
  if (!why.empty()) throw std::invalid_argument(why);
  if (mode != "crops" && mode != "faithful")
    throw std::invalid_argument("unknown mode '" + mode + "'; use crops or faithful");
  if (policy == "resize224") return {WorkUnit{resize_rgb(image, crop_size, crop_size), {{0, 0}}}};
  const RgbImage rgb = upscale_to_fit(image, crop_size);
  std::vector<WorkUnit> units;
  if (mode == "crops") {
    for (const Box& b : crop_boxes(policy, rgb.height, rgb.width, crop_size))
      units.push_back(WorkUnit{rgb.crop(b.top, b.left, crop_size, crop_size), {{0, 0}}});
    return units;
  }
  const int h = rgb.height / size_multiple * size_multiple, w = rgb.width / size_multiple * size_multiple;
  if (static_cast<long long>(h) * w > kMaxFaithfulPixels) {
    char megapixels[32];
    std::snprintf(megapixels, sizeof megapixels, "%.1f", static_cast<double>(kMaxFaithfulPixels) / 1e6);
    throw ImageSizeError("image of " + size_text(rgb.height, rgb.width) +
                         " pixels is too large for faithful mode (it restores the whole image; at most " + megapixels +
                         " megapixels); use --mode crops or downscale the image");
  }
  units.push_back(WorkUnit{resize_rgb(rgb, h, w), crop_boxes(policy, h, w, crop_size)});
  return units;
}

void normalise(const RgbImage& image, float* out) {
  const std::size_t plane = static_cast<std::size_t>(image.height) * static_cast<std::size_t>(image.width);
  for (std::size_t p = 0; p < plane; ++p)
    for (std::size_t c = 0; c < 3; ++c) {
      const float v = static_cast<float>(image.data[p * 3 + c]);
      out[c * plane + p] = (v / 255.0f - 0.5f) / 0.5f;
    }
}

double crop_mean(const std::vector<float>& values) {
  if (values.empty()) return std::nan("");
  double total = 0.0;
  for (float v : values) total += static_cast<double>(v);
  return total / static_cast<double>(values.size());
}

double fuse(double vcg_weight, double mean_vcg, double vda_weight, double mean_vda) {
  const double a = vcg_weight != 0.0 ? vcg_weight * mean_vcg : 0.0;
  const double b = vda_weight != 0.0 ? vda_weight * mean_vda : 0.0;
  return a + b;
}

}  // namespace diffv2iqa

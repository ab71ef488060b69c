// The scoring loop: include/diffv2iqa/scorer.hpp and diffv2iqa_trt/runtime/pipeline.py.
#include "diffv2iqa/scorer.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <stdexcept>

#include "diffv2iqa/philox.hpp"

namespace diffv2iqa {

namespace {
constexpr std::size_t kNoiseBanks = 4;  // pipeline.DEFAULT_NOISE_BANKS: faithful mode meets a size per image

std::size_t plane_of(int height, int width) {
  return static_cast<std::size_t>(height) * static_cast<std::size_t>(width);
}
}  // namespace

ScoreOptions bundle_defaults(const Pipeline& pipeline) {
  ScoreOptions o;
  o.mode = pipeline.mode;
  o.crops = pipeline.crops;
  o.seed = pipeline.noise.seed;
  o.batch_size = 8;
  return o;
}

Scorer::Scorer(const Pipeline& pipeline, GraphBackend& backend, ScoreOptions options)
    : pipeline_(pipeline), backend_(backend), options_(std::move(options)) {
  if (options_.mode != "crops" && options_.mode != "faithful")
    throw std::invalid_argument("unknown mode '" + options_.mode + "'; use crops or faithful");
  std::string why = crop_policy_problem(options_.crops);
  if (!why.empty()) throw std::invalid_argument(why);
  if (options_.batch_size < 1) throw std::invalid_argument("the batch size must be at least 1");
}

std::vector<WorkUnit> Scorer::prepare(const RgbImage& image) const {
  return diffv2iqa::prepare(image, options_.crops, options_.mode, pipeline_.crop_size, pipeline_.size_multiple);
}

const std::vector<float>& Scorer::noise_bank(int height, int width) {
  const std::pair<int, int> key{height, width};
  for (auto it = banks_.begin(); it != banks_.end(); ++it)
    if (it->first == key) {
      banks_.splice(banks_.begin(), banks_, it);
      return banks_.front().second;
    }
  const std::size_t row = 3 * plane_of(height, width);
  const int steps = pipeline_.steps;
  std::vector<float> bank(row * static_cast<std::size_t>(steps + 1));
  for (int r = 0; r <= steps; ++r)
    fill_normal_row(options_.seed, static_cast<std::uint32_t>(r), bank.data() + row * static_cast<std::size_t>(r), row);
  banks_.emplace_front(key, std::move(bank));
  while (banks_.size() > kNoiseBanks) banks_.pop_back();
  return banks_.front().second;
}

Scorer::Snapshots Scorer::restore(const std::vector<float>& x, int batch, int height, int width) {
  const int steps = pipeline_.steps;
  const std::size_t row = 3 * plane_of(height, width);
  const std::vector<float>& bank = noise_bank(height, width);
  // y_T: row T of the bank, the same for every sample of the batch.
  std::vector<float> y(row * static_cast<std::size_t>(batch)), next(y.size());
  for (int b = 0; b < batch; ++b)
    std::memcpy(y.data() + row * static_cast<std::size_t>(b), bank.data() + row * static_cast<std::size_t>(steps),
                row * sizeof(float));
  std::vector<float> gamma(static_cast<std::size_t>(batch)), coef(static_cast<std::size_t>(batch) * kCoefWidth);
  Snapshots snaps;
  const std::int64_t B = batch, H = height, W = width;
  float* xp = const_cast<float*>(x.data());  // the backends only read their inputs
  for (int i = steps - 1; i >= 0; --i) {
    const std::vector<double>& c = pipeline_.coef[static_cast<std::size_t>(i)];
    for (int b = 0; b < batch; ++b) {
      gamma[static_cast<std::size_t>(b)] = static_cast<float>(pipeline_.gamma[static_cast<std::size_t>(i)]);
      for (std::size_t k = 0; k < static_cast<std::size_t>(kCoefWidth); ++k)
        coef[static_cast<std::size_t>(b) * kCoefWidth + k] = static_cast<float>(c[k]);
    }
    float* z = const_cast<float*>(bank.data()) + row * static_cast<std::size_t>(i);
    DeviceTensor out = device_tensor(next.data(), {B, kChannels, H, W});
    backend_.restore_step(device_tensor(xp, {B, kChannels, H, W}), device_tensor(y.data(), {B, kChannels, H, W}),
                          device_tensor(gamma.data(), {B}), device_tensor(coef.data(), {B, kCoefWidth}),
                          device_tensor(z, {1, kChannels, H, W}), out, Stream{});
    std::swap(y, next);
    if (i == pipeline_.capture_t1) snaps.yt1 = y;
    if (i == pipeline_.capture_t2) snaps.yt2 = y;
  }
  snaps.y0 = std::move(y);
  return snaps;
}

void Scorer::score_branches(std::vector<float> (&pending)[4], int count, std::vector<float>& vcg,
                            std::vector<float>& vda) {
  const std::int64_t S = pipeline_.crop_size;
  const std::size_t crop = 3 * plane_of(pipeline_.crop_size, pipeline_.crop_size);
  std::vector<float> batch[4];
  for (int k = 0; k < 4; ++k) {
    batch[k].assign(pending[k].begin(), pending[k].begin() + static_cast<std::ptrdiff_t>(crop * count));
    pending[k].erase(pending[k].begin(), pending[k].begin() + static_cast<std::ptrdiff_t>(crop * count));
  }
  DeviceTensor t[4];
  for (int k = 0; k < 4; ++k) t[k] = device_tensor(batch[k].data(), {count, kChannels, S, S});
  std::vector<float> out(static_cast<std::size_t>(count));
  DeviceTensor score = device_tensor(out.data(), {count});
  const bool run_vcg = pipeline_.fusion.vcg_weight != 0.0, run_vda = pipeline_.fusion.vda_weight != 0.0;
  if (run_vcg) backend_.vcg(t[0], t[1], t[2], t[3], score, Stream{});
  vcg.insert(vcg.end(), out.begin(), out.end());
  if (!run_vcg) std::fill(vcg.end() - count, vcg.end(), std::nanf(""));
  if (run_vda) backend_.vda(t[0], t[1], t[2], t[3], score, Stream{});
  vda.insert(vda.end(), out.begin(), out.end());
  if (!run_vda) std::fill(vda.end() - count, vda.end(), std::nanf(""));
}

std::vector<ImageScore> Scorer::score_prepared(const std::vector<std::vector<WorkUnit>>& images) {
  // Units grouped by size, in order of first appearance (Python: a dict keyed by shape).
  std::vector<std::pair<std::pair<int, int>, std::vector<std::pair<int, const WorkUnit*>>>> groups;
  for (std::size_t owner = 0; owner < images.size(); ++owner)
    for (const WorkUnit& u : images[owner]) {
      const std::pair<int, int> key{u.pixels.height, u.pixels.width};
      auto g = std::find_if(groups.begin(), groups.end(), [&](const auto& e) { return e.first == key; });
      if (g == groups.end()) {
        groups.push_back({key, {}});
        g = groups.end() - 1;
      }
      g->second.push_back({static_cast<int>(owner), &u});
    }
  const int S = pipeline_.crop_size, batch_size = options_.batch_size;
  const std::size_t crop = 3 * plane_of(S, S);
  std::vector<int> owners;
  std::vector<float> pending[4], vcg, vda;
  for (const auto& group : groups) {
    const int height = group.first.first, width = group.first.second;
    const std::size_t sample = 3 * plane_of(height, width), plane = plane_of(height, width);
    const auto& units = group.second;
    for (std::size_t start = 0; start < units.size(); start += static_cast<std::size_t>(batch_size)) {
      const int count = static_cast<int>(std::min(units.size() - start, static_cast<std::size_t>(batch_size)));
      std::vector<float> x(sample * static_cast<std::size_t>(count));
      for (int j = 0; j < count; ++j) normalise(units[start + static_cast<std::size_t>(j)].second->pixels,
                                                x.data() + sample * static_cast<std::size_t>(j));
      Snapshots snaps = restore(x, count, height, width);
      const std::vector<float>* arrays[4] = {&x, &snaps.y0, &snaps.yt1, &snaps.yt2};
      for (int j = 0; j < count; ++j) {
        const auto& item = units[start + static_cast<std::size_t>(j)];
        for (const Box& box : item.second->boxes) {
          for (int k = 0; k < 4; ++k) {
            const float* src = arrays[k]->data() + sample * static_cast<std::size_t>(j);
            for (int c = 0; c < 3; ++c)
              for (int r = 0; r < S; ++r) {
                const float* line = src + static_cast<std::size_t>(c) * plane +
                                    static_cast<std::size_t>(box.top + r) * static_cast<std::size_t>(width) +
                                    static_cast<std::size_t>(box.left);
                pending[k].insert(pending[k].end(), line, line + S);
              }
          }
          owners.push_back(item.first);
          if (pending[0].size() >= crop * static_cast<std::size_t>(batch_size))
            score_branches(pending, batch_size, vcg, vda);
        }
      }
    }
  }
  if (!pending[0].empty()) score_branches(pending, static_cast<int>(pending[0].size() / crop), vcg, vda);

  std::vector<ImageScore> out(images.size());
  for (std::size_t index = 0; index < images.size(); ++index) {
    std::vector<float> v, d;
    for (std::size_t k = 0; k < owners.size(); ++k)
      if (owners[k] == static_cast<int>(index)) {
        v.push_back(vcg[k]);
        d.push_back(vda[k]);
      }
    ImageScore& s = out[index];
    const double mv = crop_mean(v), md = crop_mean(d);
    s.score = fuse(pipeline_.fusion.vcg_weight, mv, pipeline_.fusion.vda_weight, md);
    s.has_vcg = pipeline_.fusion.vcg_weight != 0.0;
    s.vcg = mv;
    s.has_vda = pipeline_.fusion.vda_weight != 0.0;
    s.vda = md;
    s.crops = static_cast<int>(v.size());
  }
  return out;
}

}  // namespace diffv2iqa

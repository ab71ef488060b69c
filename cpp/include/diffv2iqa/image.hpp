// Decoded images for the C++ scorer: 8-bit RGB, row-major (H, W, 3), as the Python runtime's decoder
// (diffv2iqa_trt/runtime/images.py) gives them. Two formats only (cpp/README.md, "Image input"):
//   - binary PPM (P6, maxval 255), read by hand: exactly the bytes of the golden inputs;
//   - PNG through libpng, converted the way the Python decoder (Pillow) converts:
//       8-bit RGB as is; gray (1, 2, 4, 8 bits) replicated to three channels; palette expanded; RGBA, gray+alpha and
//       palette with transparency composited over WHITE with Pillow's integer formula (Image.alpha_composite); a tRNS
//       colour key on a gray or RGB image is ignored (Pillow ignores it too);
//       16-bit gray scaled as rint(v / 65535 * 255) in float64; 16-bit RGB, RGBA and gray+alpha keep the high byte of
//       each sample (Pillow's 16-bit colour unpackers do that);
//       a PNG with EXIF orientation 2..8 (eXIf chunk, before or after the image data) is refused: the Python decoder
//       would rotate it;
//   - the rules both decoders follow where Pillow and libpng once disagreed (docs/bundle.md, "Decoding: one rule per
//     disagreement"): text and ICC chunks skipped unread, a tRNS of the wrong length refused, a P6 header's comments
//     only after whitespace and never after MAXVAL, nothing after a PPM's pixels.
// Files are read as streams through a 64 KiB buffer, never whole: an image costs the memory of the pixels its header
// declares (at most max_pixels), not of the file (a 20 GB file is refused at 64 KiB). A PPM whose size is not its
// header's plus width * height * 3 is refused from the file size before any pixel is read.
// Errors are ImageError, whose message names the file.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace diffv2iqa {

constexpr std::uint64_t kDefaultMaxPixels = 100000000;  // the Python decoder's DEFAULT_MAX_PIXELS

struct RgbImage {
  int height = 0;
  int width = 0;
  std::vector<std::uint8_t> data;  // height * width * 3 bytes, row-major, RGB

  RgbImage() = default;
  RgbImage(int h, int w) : height(h), width(w), data(static_cast<std::size_t>(h) * static_cast<std::size_t>(w) * 3) {}
  std::uint8_t* row(int y) { return data.data() + static_cast<std::size_t>(y) * static_cast<std::size_t>(width) * 3; }
  const std::uint8_t* row(int y) const {
    return data.data() + static_cast<std::size_t>(y) * static_cast<std::size_t>(width) * 3;
  }
  // The height x width window at (top, left), copied.
  RgbImage crop(int top, int left, int h, int w) const;
};

class ImageError : public std::runtime_error {
 public:
  ImageError(const std::string& path, const std::string& reason)
      : std::runtime_error(path + ": " + reason), reason_(reason) {}
  const std::string& reason() const noexcept { return reason_; }

 private:
  std::string reason_;
};

// PPM (P6, maxval 255; '#' comments allowed in the header) from its bytes; `path` only names it in errors.
RgbImage decode_ppm(const std::string& bytes, const std::string& path, std::uint64_t max_pixels = kDefaultMaxPixels);
// A PPM or PNG file, told apart by its first bytes.
RgbImage read_image(const std::string& path, std::uint64_t max_pixels = kDefaultMaxPixels);
void write_ppm(const std::string& path, const RgbImage& image);

// Pillow's Image.alpha_composite of an RGBA pixel over opaque white, for one 8-bit channel value.
std::uint8_t over_white(std::uint8_t value, std::uint8_t alpha);

}  // namespace diffv2iqa

// PPM and PNG input: see include/diffv2iqa/image.hpp for the conversions and why.
#include "diffv2iqa/image.hpp"

#include <fcntl.h>
#include <png.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>

namespace diffv2iqa {

RgbImage RgbImage::crop(int top, int left, int h, int w) const {
  if (top < 0 || left < 0 || h < 0 || w < 0 || top + h > height || left + w > width)
    throw std::out_of_range("crop outside the image");
  RgbImage out(h, w);
  for (int y = 0; y < h; ++y)
    std::memcpy(out.row(y), row(top + y) + static_cast<std::size_t>(left) * 3, static_cast<std::size_t>(w) * 3);
  return out;
}

std::uint8_t over_white(std::uint8_t value, std::uint8_t alpha) {
  if (alpha == 0) return 255;
  // Pillow's AlphaComposite with an opaque white destination: coef1 = alpha * 128, coef2 = (255 - alpha) * 128
  // (7 extra bits), then its rounded division by 255 done with two shifts.
  const std::uint32_t a = alpha;
  const std::uint32_t tmp = value * a * 128u + 255u * (255u - a) * 128u + (0x80u << 7);
  return static_cast<std::uint8_t>(((((tmp >> 8) + tmp) >> 8)) >> 7);
}

namespace {

bool is_space(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// An image file read in order, through a 64 KiB buffer: the decoders take the bytes they need and no file is ever
// read whole, so the memory a file costs is bounded by the pixels its header declares (at most max_pixels), not by its
// size (a 20 GB file costs 64 KiB until a decoder refuses it). Also serves bytes already in memory (decode_ppm).
// Never throws (libpng calls read() from C frames): a read error ends the stream and is kept in error().
class ByteSource {
 public:
  ByteSource(int fd, std::uint64_t size) : fd_(fd), size_(size), storage_(kBuffer) {}
  ByteSource(const char* data, std::size_t size) : size_(size), data_(data), len_(size) {}
  ByteSource(const ByteSource&) = delete;
  ByteSource& operator=(const ByteSource&) = delete;

  // Up to n bytes into out; fewer only at the end of the file or on a read error.
  std::size_t read(void* out, std::size_t n) {
    auto* dst = static_cast<unsigned char*>(out);
    std::size_t done = 0;
    while (done < n) {
      if (pos_ == len_) {
        if (n - done >= kBuffer && fd_ >= 0) {  // a large read (PPM pixels) goes straight to its destination
          const std::size_t got = read_fd(dst + done, n - done);
          done += got;
          consumed_ += got;
          return done;
        }
        if (!refill()) break;
      }
      const std::size_t take = std::min(n - done, len_ - pos_);
      std::memcpy(dst + done, data_ + pos_, take);
      pos_ += take;
      done += take;
      consumed_ += take;
    }
    return done;
  }
  // The next byte, or -1 at the end.
  int get() {
    if (pos_ == len_ && !refill()) return -1;
    ++consumed_;
    return static_cast<unsigned char>(data_[pos_++]);
  }
  // Up to n (<= 64 KiB) bytes from the current position into out, without consuming them.
  std::size_t peek(void* out, std::size_t n) {
    if (len_ - pos_ < n && fd_ >= 0) {  // move what is left to the front and top the buffer up
      if (len_ > pos_) std::memmove(storage_.data(), data_ + pos_, len_ - pos_);
      len_ -= pos_;
      pos_ = 0;
      data_ = storage_.data();
      len_ += read_fd(reinterpret_cast<unsigned char*>(storage_.data()) + len_, std::min(n, kBuffer) - len_);
    }
    const std::size_t take = std::min(n, len_ - pos_);
    std::memcpy(out, data_ + pos_, take);
    return take;
  }
  std::uint64_t size() const { return size_; }          // the file's size when opened
  std::uint64_t consumed() const { return consumed_; }  // bytes handed out so far
  const std::string& error() const { return error_; }

 private:
  static constexpr std::size_t kBuffer = std::size_t{1} << 16;

  bool refill() {
    if (fd_ < 0) return false;
    data_ = storage_.data();
    pos_ = 0;
    len_ = read_fd(reinterpret_cast<unsigned char*>(storage_.data()), kBuffer);
    return len_ > 0;
  }
  std::size_t read_fd(unsigned char* out, std::size_t n) {
    std::size_t done = 0;
    while (done < n && error_.empty()) {
      const ssize_t got = ::read(fd_, out + done, n - done);
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) error_ = std::string("cannot read the file (") + std::strerror(errno) + ")";
      if (got <= 0) break;
      done += static_cast<std::size_t>(got);
    }
    return done;
  }

  int fd_ = -1;
  std::uint64_t size_ = 0;
  std::vector<char> storage_;
  const char* data_ = nullptr;  // storage_ for a file, the caller's bytes for memory
  std::size_t pos_ = 0, len_ = 0;
  std::uint64_t consumed_ = 0;
  std::string error_;
};

std::string too_large(std::uint64_t w, std::uint64_t h, std::uint64_t max_pixels) {
  return "image is " + std::to_string(w) + "x" + std::to_string(h) + " pixels, above the limit of " +
         std::to_string(max_pixels) + " pixels";
}

// ---- PNG ---------------------------------------------------------------------------------------------------------

struct PngReader {
  ByteSource& source;
  std::string error;
  std::string trns;  // libpng's complaint about a tRNS chunk it discarded (refused: docs/bundle.md, "Decoding")
};

void png_read_bytes(png_structp png, png_bytep out, png_size_t count) {
  auto* r = static_cast<PngReader*>(png_get_io_ptr(png));
  if (r->source.read(out, count) != count)
    png_error(png, r->source.error().empty() ? "truncated PNG (the file ends early)" : r->source.error().c_str());
}

void png_fail(png_structp png, png_const_charp message) {
  auto* r = static_cast<PngReader*>(png_get_error_ptr(png));
  r->error = message ? message : "libpng error";
  png_longjmp(png, 1);
}

// Defects libpng works around are ignored, except a tRNS chunk it discards ("tRNS: invalid", ...): Pillow would use
// or refuse it, so both decoders refuse it (docs/bundle.md, "Decoding").
void png_warn(png_structp png, png_const_charp message) {
  auto* r = static_cast<PngReader*>(png_get_error_ptr(png));
  if (message && std::strncmp(message, "tRNS", 4) == 0 && r->trns.empty()) r->trns = message;
}

// EXIF orientation from an eXIf chunk (a TIFF structure), 1 when absent or unreadable (Pillow treats those as 1).
int exif_orientation(const unsigned char* p, std::size_t n) {
  if (n < 8) return 1;
  bool le = p[0] == 'I' && p[1] == 'I';
  if (!le && !(p[0] == 'M' && p[1] == 'M')) return 1;
  auto u16 = [&](std::size_t o) -> unsigned { return le ? p[o] | p[o + 1] << 8 : p[o] << 8 | p[o + 1]; };
  auto u32 = [&](std::size_t o) -> std::uint32_t {
    return le ? std::uint32_t(p[o]) | std::uint32_t(p[o + 1]) << 8 | std::uint32_t(p[o + 2]) << 16 |
                    std::uint32_t(p[o + 3]) << 24
              : std::uint32_t(p[o]) << 24 | std::uint32_t(p[o + 1]) << 16 | std::uint32_t(p[o + 2]) << 8 | p[o + 3];
  };
  std::uint32_t ifd = u32(4);
  if (ifd > n - 2) return 1;
  unsigned count = u16(ifd);
  for (unsigned i = 0; i < count; ++i) {
    std::size_t e = ifd + 2 + 12 * static_cast<std::size_t>(i);
    if (e + 12 > n) return 1;
    if (u16(e) == 0x0112) return static_cast<int>(u16(e + 8));
  }
  return 1;
}

// The PNG after its 8-byte signature (read_image has checked and consumed it).
RgbImage decode_png(ByteSource& source, const std::string& path, std::uint64_t max_pixels) {
  PngReader reader{source, "", ""};
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &reader, png_fail, png_warn);
  if (!png) throw ImageError(path, "out of memory creating the PNG reader");
  png_infop info = png_create_info_struct(png);
  if (!info) {
    png_destroy_read_struct(&png, nullptr, nullptr);
    throw ImageError(path, "out of memory creating the PNG reader");
  }
  // Everything libpng allocates is freed on every path; the rows live in C++ containers declared before setjmp.
  std::vector<std::uint8_t> pixels;
  std::vector<png_bytep> rows;
  std::string refused;
  png_uint_32 w = 0, h = 0;
  int depth = 0, color = 0, interlace = 0;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    throw ImageError(path, refused.empty() ? "corrupt or truncated PNG (" + reader.error + ")" : refused);
  }
  png_set_read_fn(png, &reader, png_read_bytes);
  png_set_sig_bytes(png, 8);
  png_set_user_limits(png, 0x7fffffff, 0x7fffffff);
  // Text and ICC profiles never change the pixels: skipped unread, whatever their size (Pillow is shown the file
  // without them too), so a 200 MB zTXt costs neither decoder its inflation.
  static const png_byte kIgnored[] = "tEXt\0zTXt\0iTXt\0iCCP";
  png_set_keep_unknown_chunks(png, PNG_HANDLE_CHUNK_NEVER, kIgnored, 4);
  png_read_info(png, info);
  if (!reader.trns.empty()) {
    refused = "the PNG's tRNS chunk breaks the PNG specification (libpng: " + reader.trns +
              "; a palette's has 1 to its size entries, grey's 2 bytes, RGB's 6, none with alpha)";
    png_error(png, "tRNS");
  }
  png_get_IHDR(png, info, &w, &h, &depth, &color, &interlace, nullptr, nullptr);
  if (static_cast<std::uint64_t>(w) * h > max_pixels) {
    refused = too_large(w, h, max_pixels);
    png_error(png, "too large");
  }
  auto check_orientation = [&]() {
    png_bytep exif = nullptr;
    png_uint_32 exif_size = 0;
    const int o = png_get_eXIf_1(png, info, &exif_size, &exif) && exif ? exif_orientation(exif, exif_size) : 1;
    if (o >= 2 && o <= 8) {  // Pillow's exif_transpose ignores other values
      refused = "the PNG has an EXIF orientation (" + std::to_string(o) +
                ") that the Python decoder would apply; this decoder does not rotate images: save it upright";
      png_error(png, "orientation");
    }
  };
  check_orientation();
  const bool gray16 = depth == 16 && color == PNG_COLOR_TYPE_GRAY;
  if (color == PNG_COLOR_TYPE_PALETTE) {
    png_set_palette_to_rgb(png);
    if (png_get_valid(png, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);  // Pillow: P with transparency -> RGBA
  }
  if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (depth == 16 && !gray16) png_set_strip_16(png);  // high byte, as Pillow's RGB;16B, RGBA;16B, LA;16B unpackers
  if (gray16) png_set_swap(png);                        // host order for the 16-bit values read below
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  const std::size_t stride = png_get_rowbytes(png, info);
  const int channels = png_get_channels(png, info);
  pixels.resize(stride * h);
  rows.resize(h);
  for (png_uint_32 y = 0; y < h; ++y) rows[y] = pixels.data() + stride * y;
  png_read_image(png, rows.data());
  png_read_end(png, info);  // an eXIf after the image data counts too (Pillow reads it)
  if (!reader.trns.empty()) {
    refused = "the PNG's tRNS chunk breaks the PNG specification (libpng: " + reader.trns + ")";
    png_error(png, "tRNS");
  }
  check_orientation();
  png_destroy_read_struct(&png, &info, nullptr);

  RgbImage out(static_cast<int>(h), static_cast<int>(w));
  for (png_uint_32 y = 0; y < h; ++y) {
    const std::uint8_t* src = rows[y];
    std::uint8_t* dst = out.row(static_cast<int>(y));
    for (png_uint_32 x = 0; x < w; ++x, dst += 3) {
      if (gray16) {
        std::uint16_t v;
        std::memcpy(&v, src + 2 * x, 2);
        // Pillow's I;16 -> the Python decoder: rint(v / 65535 * 255) in float64.
        double g = std::nearbyint(static_cast<double>(v) / 65535.0 * 255.0);
        dst[0] = dst[1] = dst[2] = static_cast<std::uint8_t>(g < 0 ? 0 : g > 255 ? 255 : g);
        continue;
      }
      const std::uint8_t* s = src + static_cast<std::size_t>(channels) * x;
      switch (channels) {
        case 1: dst[0] = dst[1] = dst[2] = s[0]; break;
        case 2: dst[0] = dst[1] = dst[2] = over_white(s[0], s[1]); break;
        case 3: dst[0] = s[0], dst[1] = s[1], dst[2] = s[2]; break;
        default:
          for (int c = 0; c < 3; ++c) dst[c] = over_white(s[c], s[3]);
      }
    }
  }
  return out;
}

}  // namespace

namespace {

// A binary PPM from its first byte: the header is parsed byte by byte, the pixel count checked against max_pixels and
// the file's size against the header before any pixel is read; then exactly width x height x 3 bytes are read.
RgbImage decode_ppm(ByteSource& source, const std::string& path, std::uint64_t max_pixels) {
  const int p = source.get(), six = source.get();
  if (p != 'P' || six != '6') throw ImageError(path, "not a binary PPM (P6)");
  const std::string malformed = "not a binary PPM: its header (P6 WIDTH HEIGHT 255) is malformed";
  std::uint64_t fields[3] = {0, 0, 0};  // width, height, maxval
  int c = source.get();
  for (std::uint64_t& field : fields) {
    // at least one whitespace byte, then whitespace and comments ('#' through CR or LF), then decimal digits: a '#'
    // right after the magic number or a digit is refused (Pillow reads "2#c\n2" as 22; docs/bundle.md, "Decoding")
    if (c < 0 || !is_space(static_cast<unsigned char>(c))) throw ImageError(path, malformed);
    for (;;) {
      while (c >= 0 && is_space(static_cast<unsigned char>(c))) c = source.get();
      if (c == '#') {
        while (c >= 0 && c != '\n' && c != '\r') c = source.get();
        continue;
      }
      break;
    }
    int digits = 0;
    while (c >= '0' && c <= '9' && digits < 9) {
      field = field * 10 + static_cast<std::uint64_t>(c - '0');
      ++digits;
      c = source.get();
    }
    if (digits == 0 || (c >= '0' && c <= '9')) throw ImageError(path, malformed);
  }
  if (c < 0 || !is_space(static_cast<unsigned char>(c))) throw ImageError(path, malformed);
  // exactly one whitespace byte ends the header: it was consumed by the last get()
  const std::uint64_t w = fields[0], h = fields[1];
  if (fields[2] != 255) throw ImageError(path, "PPM with maxval " + std::to_string(fields[2]) + ": only 255 is read");
  if (w == 0 || h == 0 || w > 65535 || h > 65535)
    throw ImageError(path, "PPM of " + std::to_string(w) + "x" + std::to_string(h) + " pixels: sides must be 1..65535");
  if (w * h > max_pixels) throw ImageError(path, too_large(w, h, max_pixels));
  const std::uint64_t have = source.size() - std::min(source.size(), source.consumed());
  if (have != w * h * 3)
    throw ImageError(path, "PPM of " + std::to_string(w) + "x" + std::to_string(h) + " pixels has " +
                               std::to_string(have) + " bytes of pixels, expected " + std::to_string(w * h * 3));
  RgbImage out(static_cast<int>(h), static_cast<int>(w));
  if (source.read(out.data.data(), out.data.size()) != out.data.size())
    throw ImageError(path, source.error().empty() ? "the file shrank while read" : source.error());
  return out;
}

struct Fd {
  int fd;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

RgbImage decode_ppm(const std::string& bytes, const std::string& path, std::uint64_t max_pixels) {
  ByteSource source(bytes.data(), bytes.size());
  return decode_ppm(source, path, max_pixels);
}

RgbImage read_image(const std::string& path, std::uint64_t max_pixels) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) throw ImageError(path, "file not found");
    throw ImageError(path, std::string("cannot read the file (") + std::strerror(errno) + ")");
  }
  if (S_ISDIR(st.st_mode)) throw ImageError(path, "is a directory, not an image");
  if (!S_ISREG(st.st_mode)) throw ImageError(path, "is not a regular file (a pipe, socket or device?)");
  // O_NONBLOCK: should the name be swapped for a FIFO after the stat, the open does not wait for a writer.
  Fd fd{::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK)};
  if (fd.fd < 0) {
    if (errno == ENOENT) throw ImageError(path, "file not found");
    throw ImageError(path, std::string("cannot read the file (") + std::strerror(errno) + ")");
  }
  if (::fstat(fd.fd, &st) != 0 || !S_ISREG(st.st_mode))
    throw ImageError(path, "is not a regular file (a pipe, socket or device?)");
  if (st.st_size == 0) throw ImageError(path, "not an image file (the file is empty)");
  ByteSource source(fd.fd, static_cast<std::uint64_t>(st.st_size));
  static const unsigned char kPng[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  unsigned char magic[8] = {0};
  const std::size_t n = source.peek(magic, 8);
  if (!source.error().empty()) throw ImageError(path, source.error());
  if (n == 8 && std::memcmp(magic, kPng, 8) == 0) {
    source.read(magic, 8);
    return decode_png(source, path, max_pixels);
  }
  if (n >= 2 && magic[0] == 'P' && magic[1] == '6') return decode_ppm(source, path, max_pixels);
  throw ImageError(path, "not a PNG or binary PPM (P6) file: this tool reads only those two formats");
}

void write_ppm(const std::string& path, const RgbImage& image) {
  std::ofstream out(path, std::ios::binary);
  out << "P6\n" << image.width << " " << image.height << "\n255\n";
  out.write(reinterpret_cast<const char*>(image.data.data()), static_cast<std::streamsize>(image.data.size()));
  if (!out) throw std::runtime_error(path + ": cannot write the file");
}

}  // namespace diffv2iqa

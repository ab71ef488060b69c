// SHA-256 (FIPS 180-4), header-only, C++17, no dependencies: incremental hashing and a streaming file digest.
#pragma once

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace diffv2iqa {

class Sha256 {
 public:
  using Digest = std::array<std::uint8_t, 32>;

  Sha256() { reset(); }

  void reset() {
    static const std::uint32_t init[8] = {0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au,
                                          0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u};
    std::memcpy(h_, init, sizeof(h_));
    total_ = 0;
    fill_ = 0;
  }

  void update(const void* data, std::size_t size) {
    const std::uint8_t* p = static_cast<const std::uint8_t*>(data);
    total_ += size;
    if (fill_ > 0) {
      std::size_t take = 64 - fill_ < size ? 64 - fill_ : size;
      std::memcpy(block_ + fill_, p, take);
      fill_ += take;
      p += take;
      size -= take;
      if (fill_ < 64) return;
      compress(block_);
      fill_ = 0;
    }
    while (size >= 64) {
      compress(p);
      p += 64;
      size -= 64;
    }
    if (size > 0) {
      std::memcpy(block_, p, size);
      fill_ = size;
    }
  }

  void update(const std::string& s) { update(s.data(), s.size()); }

  // The digest of everything given so far; the object is reset afterwards.
  Digest finish() {
    const std::uint64_t bits = total_ * 8;
    const std::uint8_t pad0 = 0x80;
    const std::uint8_t zeros[64] = {};
    update(&pad0, 1);
    std::size_t pad = fill_ <= 56 ? 56 - fill_ : 120 - fill_;
    update(zeros, pad);
    std::uint8_t len[8];
    for (int k = 0; k < 8; ++k) len[k] = static_cast<std::uint8_t>(bits >> (56 - 8 * k));
    update(len, 8);
    Digest out{};
    for (int k = 0; k < 8; ++k)
      for (int b = 0; b < 4; ++b) out[static_cast<std::size_t>(4 * k + b)] = static_cast<std::uint8_t>(h_[k] >> (24 - 8 * b));
    reset();
    return out;
  }

  std::string finish_hex() { return to_hex(finish()); }

  static std::string to_hex(const Digest& d) {
    static const char digits[] = "0123456789abcdef";
    std::string s;
    s.reserve(64);
    for (std::uint8_t b : d) {
      s += digits[b >> 4];
      s += digits[b & 15];
    }
    return s;
  }

 private:
  std::uint32_t h_[8];
  std::uint64_t total_;
  std::uint8_t block_[64];
  std::size_t fill_;

  static std::uint32_t rotr(std::uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

  void compress(const std::uint8_t* m) {
    static const std::uint32_t k[64] = {
        0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u, 0xab1c5ed5u,
        0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu, 0x9bdc06a7u, 0xc19bf174u,
        0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu, 0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau,
        0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u, 0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u,
        0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu, 0x53380d13u, 0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u,
        0xa2bfe8a1u, 0xa81a664bu, 0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u,
        0x19a4c116u, 0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
        0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u, 0x90befffau, 0xa4506cebu, 0xbef9a3f7u, 0xc67178f2u};
    std::uint32_t w[64];
    for (int t = 0; t < 16; ++t)
      w[t] = (std::uint32_t{m[4 * t]} << 24) | (std::uint32_t{m[4 * t + 1]} << 16) |
             (std::uint32_t{m[4 * t + 2]} << 8) | std::uint32_t{m[4 * t + 3]};
    for (int t = 16; t < 64; ++t) {
      std::uint32_t s0 = rotr(w[t - 15], 7) ^ rotr(w[t - 15], 18) ^ (w[t - 15] >> 3);
      std::uint32_t s1 = rotr(w[t - 2], 17) ^ rotr(w[t - 2], 19) ^ (w[t - 2] >> 10);
      w[t] = w[t - 16] + s0 + w[t - 7] + s1;
    }
    std::uint32_t a = h_[0], b = h_[1], c = h_[2], d = h_[3], e = h_[4], f = h_[5], g = h_[6], h = h_[7];
    for (int t = 0; t < 64; ++t) {
      std::uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[t] + w[t];
      std::uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      h = g;
      g = f;
      f = e;
      e = d + t1;
      d = c;
      c = b;
      b = a;
      a = t1 + t2;
    }
    h_[0] += a; h_[1] += b; h_[2] += c; h_[3] += d;
    h_[4] += e; h_[5] += f; h_[6] += g; h_[7] += h;
  }
};

inline std::string sha256_hex(const void* data, std::size_t size) {
  Sha256 h;
  h.update(data, size);
  return h.finish_hex();
}

inline std::string sha256_hex(const std::string& s) { return sha256_hex(s.data(), s.size()); }

// Hash an open stdio stream to its end in chunks of `chunk` bytes (1 MiB, as the Python toolkit); returns the hex
// digest and stores the byte count in *bytes_read when given. Throws std::runtime_error on a read error.
inline std::string sha256_stream(std::FILE* f, std::uint64_t* bytes_read = nullptr,
                                 std::size_t chunk = std::size_t{1} << 20) {
  std::vector<unsigned char> buf(chunk);
  Sha256 h;
  std::uint64_t total = 0;
  for (;;) {
    std::size_t n = std::fread(buf.data(), 1, buf.size(), f);
    if (n > 0) {
      h.update(buf.data(), n);
      total += n;
    }
    if (n < buf.size()) {
      if (std::ferror(f)) throw std::runtime_error(std::string("read error: ") + std::strerror(errno));
      break;
    }
  }
  if (bytes_read) *bytes_read = total;
  return h.finish_hex();
}

// Hash a file by path, streaming it in chunks. Throws std::runtime_error naming the file when it cannot be read.
inline std::string sha256_file(const std::string& path, std::uint64_t* bytes_read = nullptr) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw std::runtime_error(path + " cannot be opened: " + std::strerror(errno));
  try {
    std::string hex = sha256_stream(f, bytes_read);
    std::fclose(f);
    return hex;
  } catch (const std::runtime_error& e) {
    std::fclose(f);
    throw std::runtime_error(path + ": " + e.what());
  }
}

}  // namespace diffv2iqa

// Test driver for cpp/include/diffv2iqa/philox.hpp, run by tests/test_philox.py (which compares it with NumPy).
//
//   philox_test kat                          Random123's known-answer vectors; prints "kat ok", exit 1 on a mismatch
//   philox_test words < lines                each stdin line "c0 c1 c2 c3 k0 k1" (decimal) -> "x0 x1 x2 x3" (decimal)
//   philox_test normals SEED ROW COUNT FILE  normal_row(SEED, ROW, COUNT) as little-endian float32 bytes into FILE
//   philox_test pairs64 SEED ROW COUNT FILE  the same values before rounding to float32 (float64 bytes; COUNT % 4 == 0)
//   philox_test table FILE                   the 1024 {CT[j], ST[j]} pairs as little-endian float64 bytes into FILE
//
// Build: g++ -std=c++17 -O2 -I cpp/include cpp/tests/philox_test.cpp -o philox_test
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "diffv2iqa/philox.hpp"

namespace {

bool little_endian() {
    const std::uint32_t one = 1;
    unsigned char first = 0;
    std::memcpy(&first, &one, 1);
    return first == 1;
}

int kat() {
    struct Case {
        std::array<std::uint32_t, 4> ctr;
        std::array<std::uint32_t, 2> key;
        std::array<std::uint32_t, 4> expect;
    };
    const Case cases[] = {
        {{0u, 0u, 0u, 0u}, {0u, 0u}, {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
        {{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
         {0xffffffffu, 0xffffffffu},
         {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
        {{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
         {0xa4093822u, 0x299f31d0u},
         {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}},
    };
    int bad = 0;
    for (const auto& c : cases) {
        if (diffv2iqa::philox4x32_10(c.ctr, c.key) != c.expect) ++bad;
    }
    std::printf(bad ? "kat FAILED (%d)\n" : "kat ok\n", bad);
    return bad ? 1 : 0;
}

int words() {
    unsigned long long v[6];
    while (std::cin >> v[0] >> v[1] >> v[2] >> v[3] >> v[4] >> v[5]) {
        const auto x = diffv2iqa::philox4x32_10(
            {static_cast<std::uint32_t>(v[0]), static_cast<std::uint32_t>(v[1]), static_cast<std::uint32_t>(v[2]),
             static_cast<std::uint32_t>(v[3])},
            {static_cast<std::uint32_t>(v[4]), static_cast<std::uint32_t>(v[5])});
        std::printf("%u %u %u %u\n", x[0], x[1], x[2], x[3]);
    }
    return 0;
}

int write_file(const char* path, const void* data, std::size_t bytes) {
    std::FILE* f = std::fopen(path, "wb");
    if (!f) return 2;
    const std::size_t n = std::fwrite(data, 1, bytes, f);
    return (std::fclose(f) == 0 && n == bytes) ? 0 : 2;
}

}  // namespace

int main(int argc, char** argv) {
    if (!little_endian()) {
        std::fprintf(stderr, "this driver writes native byte order and expects a little-endian machine\n");
        return 3;
    }
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "kat") return kat();
    if (mode == "words") return words();
    if (mode == "normals" && argc == 6) {
        const std::uint64_t seed = std::strtoull(argv[2], nullptr, 10);
        const auto row = static_cast<std::uint32_t>(std::strtoul(argv[3], nullptr, 10));
        const std::size_t count = std::strtoull(argv[4], nullptr, 10);
        const std::vector<float> v = diffv2iqa::normal_row(seed, row, count);
        return write_file(argv[5], v.data(), v.size() * sizeof(float));
    }
    if (mode == "pairs64" && argc == 6) {
        const std::uint64_t seed = std::strtoull(argv[2], nullptr, 10);
        const auto row = static_cast<std::uint32_t>(std::strtoul(argv[3], nullptr, 10));
        const std::size_t blocks = std::strtoull(argv[4], nullptr, 10) / 4;
        const std::array<std::uint32_t, 2> key = {static_cast<std::uint32_t>(seed),
                                                  static_cast<std::uint32_t>(seed >> 32)};
        std::vector<double> v;
        v.reserve(4 * blocks);
        for (std::size_t i = 0; i < blocks; ++i) {
            const auto x = diffv2iqa::philox4x32_10({static_cast<std::uint32_t>(i), row, 0u, 0u}, key);
            for (const auto& p : {diffv2iqa::box_muller_pair64(x[0], x[1]), diffv2iqa::box_muller_pair64(x[2], x[3])}) {
                v.push_back(p[0]);
                v.push_back(p[1]);
            }
        }
        return write_file(argv[5], v.data(), v.size() * sizeof(double));
    }
    if (mode == "table" && argc == 3) {
        const auto& t = diffv2iqa::philox_detail::cos_sin_table();
        return write_file(argv[2], t.data(), sizeof(t));
    }
    std::fprintf(stderr, "usage: philox_test kat | words | normals|pairs64 SEED ROW COUNT FILE | table FILE\n");
    return 64;
}

// Test driver for the contract pieces of the C++ library, run by tests/test_cpp_score.py against the Python code:
//
//   contract_probe resize IN H W OUT.ppm      resize_rgb of IN (PNG or PPM) to H x W, written as binary PPM
//   contract_probe decode IN OUT.ppm          the decoded RGB of IN (PNG or PPM), written as binary PPM
//   contract_probe prepare IN POLICY MODE CROP MULTIPLE OUTDIR
//                                             the work units of IN: OUTDIR/unit-K.ppm, and one line per unit on stdout
//                                             "K HEIGHT WIDTH top,left top,left ..."
//
// Exit 1 with the message on stderr on any error.
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "diffv2iqa/contract.hpp"
#include "diffv2iqa/image.hpp"
#include "diffv2iqa/resize.hpp"

int main(int argc, char** argv) {
  using namespace diffv2iqa;
  try {
    const std::string cmd = argc > 1 ? argv[1] : "";
    if (cmd == "resize" && argc == 6) {
      write_ppm(argv[5], resize_rgb(read_image(argv[2]), std::atoi(argv[3]), std::atoi(argv[4])));
    } else if (cmd == "decode" && argc == 4) {
      write_ppm(argv[3], read_image(argv[2]));
    } else if (cmd == "prepare" && argc == 8) {
      const auto units = prepare(read_image(argv[2]), argv[3], argv[4], std::atoi(argv[5]), std::atoi(argv[6]));
      for (std::size_t k = 0; k < units.size(); ++k) {
        write_ppm(std::string(argv[7]) + "/unit-" + std::to_string(k) + ".ppm", units[k].pixels);
        std::printf("%zu %d %d", k, units[k].pixels.height, units[k].pixels.width);
        for (const Box& b : units[k].boxes) std::printf(" %d,%d", b.top, b.left);
        std::printf("\n");
      }
    } else {
      std::fprintf(stderr, "usage: contract_probe resize IN H W OUT | decode IN OUT | "
                           "prepare IN POLICY MODE CROP MULTIPLE OUTDIR\n");
      return 2;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "contract_probe: %s\n", e.what());
    return 1;
  }
  return 0;
}

// Fuzz target: the .npy reader (header parsing, dtypes, byte orders, Fortran order, sizes).
#include <headalign/io/npy.hpp>

#include "fuzz_common.hpp"

using namespace headalign;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string path = fuzz::scratch_file("array.npy", data, size);
  fuzz::expect_contract([&] {
    const io::NpyArray<double> a = io::read_npy<double>(path);
    if (a.data.size() != a.info.numel()) fuzz::finding("read_npy returned the wrong element count");
    const io::NpyArray<float> b = io::read_npy<float>(path);
    if (b.data.size() != a.data.size()) fuzz::finding("float and double reads differ in size");
  });
  fuzz::expect_contract([&] { (void)io::read_npy_matrix<double>(path); });
  return 0;
}

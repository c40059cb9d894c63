// Fuzz target: the safetensors reader (header validation, dtypes, bounds-checked reads through a
// mapping and through a stream).
#include <headalign/io/safetensors.hpp>

#include "fuzz_common.hpp"

#include <cmath>

using namespace headalign;

namespace {

void read_everything(io::SafetensorsReader& r) {
  for (const auto& name : r.names_in_file_order()) {
    const io::TensorInfo& info = r.info(name);
    const std::uint64_t n = info.numel();
    if (io::is_float(info.dtype)) {
      const std::vector<double> all = r.read_all<double>(name);
      if (all.size() != n) fuzz::finding("read_all returned the wrong element count");
      if (n > 2) {  // a window in the middle equals the same elements of the whole read
        std::vector<float> part(n - 2);
        r.read(name, 1, n - 2, part.data());
        for (std::uint64_t i = 0; i + 2 < n; ++i) {
          const float a = part[i], b = static_cast<float>(all[i + 1]);
          if (!(std::isnan(a) && std::isnan(b)) && a != b) fuzz::finding("a partial read differs from the whole read");
        }
      }
      // Past the end is an error, never a read.
      fuzz::expect_contract([&] {
        float x;
        r.read(name, n, 1, &x);
        fuzz::finding("a read past the tensor's end succeeded");
      });
    } else {
      (void)r.read_raw(name);
    }
  }
  for (const auto& kv : r.metadata()) (void)kv;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string path = fuzz::scratch_file("st.safetensors", data, size);
  for (bool mapped : {true, false}) {
    fuzz::expect_contract([&] {
      io::SafetensorsReader r(path, std::uint64_t(1) << 20, mapped);
      read_everything(r);
    });
  }
  return 0;
}

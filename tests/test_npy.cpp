// The .npy reader against files NumPy wrote (tests/data/make_npy_cases.py), crafted malformed
// files, and round trips through the writer.
#include <headalign/io/npy.hpp>

#include "test_util.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <fstream>
#include <string>

using namespace headalign;
using namespace headalign::io;

namespace {

std::string npy_case(const std::string& name) { return std::string(HEADALIGN_TEST_DATA_DIR) + "/npy/" + name; }

// The generator's values by C-order index (see make_npy_cases.py).
double float_value(std::size_t i) { return static_cast<double>(i % 7) - 3 + static_cast<double>(i) / 8; }
double int_value(std::size_t i) { return static_cast<double>(i % 7 + 2 * i); }

std::string bytes_of(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string write_bytes(const std::string& name, const std::string& bytes) {
  const std::string path = test::temp_path("npy_" + name);
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

// A version-1 file with the given header text (padded as numpy does) and data bytes.
std::string crafted(const std::string& header, const std::string& data, int version = 1) {
  std::string h = header;
  const std::size_t prefix = version == 1 ? 10 : 12;
  h.append((64 - (prefix + h.size() + 1) % 64) % 64, ' ');
  h += '\n';
  std::string out = std::string("\x93NUMPY", 6) + static_cast<char>(version) + '\0';
  std::uint64_t len = h.size();
  for (std::size_t i = 0; i < prefix - 8; ++i, len >>= 8) out += static_cast<char>(len & 0xff);
  return out + h + data;
}

std::string doubles(std::initializer_list<double> v) {
  std::string s;
  for (double x : v) s.append(reinterpret_cast<const char*>(&x), 8);
  return s;
}

}  // namespace

TEST_CASE("npy: files written by NumPy, every supported dtype, order and version", "[npy]") {
  struct Case {
    const char* file;
    std::vector<std::int64_t> shape;
    bool integer;
    int version;
  };
  const Case cases[] = {{"f4_2d.npy", {3, 5}, false, 1},         {"f8_big.npy", {4, 3}, false, 1},
                        {"f8_fortran_3d.npy", {2, 3, 4}, false, 1}, {"f4_v2.npy", {6}, false, 2},
                        {"f4_v3.npy", {2, 2}, false, 3},         {"f2.npy", {5}, false, 1},
                        {"i8.npy", {3}, true, 1},                {"i2_big.npy", {4}, true, 1},
                        {"u1.npy", {4}, true, 1},                {"scalar.npy", {}, false, 1},
                        {"empty.npy", {0, 3}, false, 1},
                        {"long_header.npy", {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2}, false, 1}};
  for (const Case& c : cases) {
    CAPTURE(c.file);
    const auto a = read_npy<double>(npy_case(c.file));
    CHECK(a.info.shape == c.shape);
    CHECK(a.info.major == c.version);
    REQUIRE(a.data.size() == a.info.numel());
    for (std::size_t i = 0; i < a.data.size(); ++i) CHECK(a.data[i] == (c.integer ? int_value(i) : float_value(i)));
  }
  CHECK(read_npy_info(npy_case("f8_big.npy")).big_endian);
  CHECK(read_npy_info(npy_case("f8_fortran_3d.npy")).fortran_order);
  CHECK(read_npy_info(npy_case("long_header.npy")).data_offset == 10 + 0xb6);
  const auto b = read_npy<float>(npy_case("b1.npy"));
  for (std::size_t i = 0; i < b.data.size(); ++i) CHECK(b.data[i] == (i % 3 == 0 ? 1.0f : 0.0f));
  // As an Eigen matrix: row-major values, 1-D as a column.
  const Matrix<float> m = read_npy_matrix<float>(npy_case("f4_2d.npy"));
  REQUIRE(m.rows() == 3);
  REQUIRE(m.cols() == 5);
  CHECK(m(1, 2) == static_cast<float>(float_value(7)));
  CHECK(read_npy_matrix<double>(npy_case("f4_v2.npy")).cols() == 1);
  CHECK_THROWS_WITH(read_npy_matrix<double>(npy_case("f8_fortran_3d.npy")), Catch::Contains("1-D or 2-D"));
}

TEST_CASE("npy: keys in any order; malformed, truncated and hostile files are rejected", "[npy][errors]") {
  // Any key order, double quotes, no trailing comma: still the same array.
  const std::string ok = crafted("{\"shape\": (1, 2), 'fortran_order': False, 'descr': '<f8'}", doubles({1.5, -2}));
  const auto a = read_npy<double>(write_bytes("order.npy", ok));
  CHECK(a.data == std::vector<double>{1.5, -2});

  const std::string good = bytes_of(npy_case("f4_2d.npy"));
  struct Bad {
    const char* name;
    std::string bytes;
    const char* message;
  };
  std::string bad_magic = good, version4 = good, long_len = good;
  bad_magic[1] = 'X';
  version4[6] = 4;
  long_len[8] = '\xff';
  long_len[9] = '\x7f';
  const Bad bad[] = {
      {"empty", "", "bad magic"},
      {"magic", bad_magic, "bad magic"},
      {"version", version4, "unsupported format version 4.0"},
      {"header_len", long_len, "exceeds the limit"},
      {"truncated_header", good.substr(0, 40), "truncated header"},
      {"truncated_data", good.substr(0, good.size() - 1), "truncated: the header announces 60 data bytes, the file has 59"},
      {"trailing", good + "x", "1 bytes after the announced data"},
      {"missing_key", crafted("{'descr': '<f8', 'shape': (1,)}", doubles({1})), "needs the keys"},
      {"extra_key", crafted("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), 'x': 1}", doubles({1})),
       "unexpected header key 'x'"},
      {"twice", crafted("{'descr': '<f8', 'descr': '<f8', 'fortran_order': False, 'shape': (1,)}", doubles({1})),
       "'descr' given twice"},
      {"structured", crafted("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,)}", "abcd"),
       "structured dtypes"},
      {"object", crafted("{'descr': '|O', 'fortran_order': False, 'shape': (1,)}", "12345678"), "unsupported dtype '|O'"},
      {"complex", crafted("{'descr': '<c8', 'fortran_order': False, 'shape': (1,)}", "12345678"), "unsupported dtype"},
      {"unicode", crafted("{'descr': '<U4', 'fortran_order': False, 'shape': (1,)}", std::string(16, 'a')),
       "unsupported dtype"},
      {"no_byte_order", crafted("{'descr': '|f8', 'fortran_order': False, 'shape': (1,)}", doubles({1})), "no byte order"},
      {"order_value", crafted("{'descr': '<f8', 'fortran_order': 0, 'shape': (1,)}", doubles({1})), "True or False"},
      {"negative", crafted("{'descr': '<f8', 'fortran_order': False, 'shape': (-1,)}", doubles({1})), "non-negative integer"},
      {"overflow", crafted("{'descr': '<f8', 'fortran_order': False, 'shape': (99999999999999999999999,)}", ""), "overflows"},
      {"huge", crafted("{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296)}", ""), "bytes of data"},
      {"text_after", crafted("{'descr': '<f8', 'fortran_order': False, 'shape': (1,)} x", doubles({1})), "text after the dict"},
      {"unterminated", crafted("{'descr': '<f8", ""), "string"},
      {"non_ascii", crafted("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), '\xc3\xa9': 1}", doubles({1})),
       "unsupported character"},
  };
  for (const Bad& b : bad) {
    CAPTURE(b.name);
    const std::string path = write_bytes(std::string(b.name) + ".npy", b.bytes);
    CHECK_THROWS_AS(read_npy<double>(path), io_error);
    CHECK_THROWS_WITH(read_npy<double>(path), Catch::Contains(b.message));
  }
  // A tighter size cap is honoured.
  NpyLimits small;
  small.max_data_bytes = 16;
  CHECK_THROWS_WITH(read_npy<double>(npy_case("f4_2d.npy"), small), Catch::Contains("more than 16 bytes"));
  CHECK_THROWS_AS(read_npy<double>("no_such_file.npy"), io_error);
}

TEST_CASE("npy: the writer round-trips and writes what NumPy writes", "[npy]") {
  std::mt19937_64 rng(3);
  const Matrix<double> m = test::gaussian<double>(7, 3, rng);
  write_npy(test::temp_path("npy_roundtrip.npy"), m);
  const std::string bytes = bytes_of(test::temp_path("npy_roundtrip.npy"));
  const std::size_t header_len = static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8);
  CHECK((10 + header_len) % 64 == 0);  // NumPy aligns the data to 64 bytes
  CHECK(bytes[10 + header_len - 1] == '\n');
  CHECK(bytes.find("{'descr': '<f8', 'fortran_order': False, 'shape': (7, 3), }") == 10);
  CHECK(read_npy_matrix<double>(test::temp_path("npy_roundtrip.npy")) == m);
  const std::vector<float> v = {1, 2, 3};
  write_npy(test::temp_path("npy_1d.npy"), v.data(), {3});
  CHECK(bytes_of(test::temp_path("npy_1d.npy")).find("'shape': (3,)") != std::string::npos);
  CHECK(read_npy<float>(test::temp_path("npy_1d.npy")).data == v);
  // Byte-identical to NumPy's own file of the same array.
  std::vector<float> f(15);
  for (std::size_t i = 0; i < f.size(); ++i) f[i] = static_cast<float>(float_value(i));
  write_npy(test::temp_path("npy_same.npy"), f.data(), {3, 5});
  CHECK(bytes_of(test::temp_path("npy_same.npy")) == bytes_of(npy_case("f4_2d.npy")));
  CHECK_THROWS_AS(write_npy("/no_such_dir/x.npy", f.data(), {3, 5}), io_error);
}

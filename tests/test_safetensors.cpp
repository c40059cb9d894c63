// safetensors I/O: round trips of every dtype, F16/BF16 rounding, a corpus of malformed files
// each rejected with its own message, Gram sets.
#include <headalign/gram.hpp>
#include <headalign/io/safetensors.hpp>

#include "test_util.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

using namespace headalign;
using headalign::io::Dtype;

namespace {

std::string temp_file(const std::string& name) { return test::temp_path("st_" + name); }

// A file from a JSON header text and a data buffer.
std::string make_file(const std::string& name, const std::string& header, const std::string& data,
                      std::int64_t header_len = -1) {
  std::string bytes(8, '\0');
  std::uint64_t n = header_len < 0 ? header.size() : static_cast<std::uint64_t>(header_len);
  for (int i = 0; i < 8; ++i, n >>= 8) bytes[static_cast<std::size_t>(i)] = static_cast<char>(n & 0xff);
  bytes += header + data;
  const std::string path = temp_file(name);
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

std::string write_bytes(const std::string& name, const std::string& bytes) {
  const std::string path = temp_file(name);
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

float f32(std::uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

}  // namespace

TEST_CASE("safetensors round-trips every dtype bit-exact and converts floats", "[io]") {
  io::SafetensorsWriter w;
  std::vector<unsigned char> i64(3 * 8), u8 = {1, 2, 255}, boolean = {0, 1};
  for (std::size_t i = 0; i < i64.size(); ++i) i64[i] = static_cast<unsigned char>(i * 7 + 1);
  w.add_raw("ids", Dtype::I64, {3}, i64);
  w.add_raw("bytes", Dtype::U8, {3}, u8);
  w.add_raw("mask", Dtype::BOOL, {2}, boolean);
  const double values[6] = {1.0, -2.5, 3.14159, 1e-3, 65504.0, -0.0};
  w.add_as("half", Dtype::F16, {2, 3}, values);
  w.add_as("brain", Dtype::BF16, {6}, values);
  w.add("double", {6}, values);
  w.set_metadata("format", "pt");
  const std::string path = temp_file("roundtrip.safetensors");
  w.write(path);

  io::SafetensorsReader r(path);
  CHECK(r.metadata().at("format") == "pt");
  CHECK(r.read_raw("ids") == i64);
  CHECK(r.read_raw("bytes") == u8);
  CHECK(r.read_raw("mask") == boolean);
  CHECK(r.info("ids").dtype == Dtype::I64);
  CHECK(r.info("half").shape == std::vector<std::int64_t>{2, 3});
  const auto half = r.read_all<double>("half"), brain = r.read_all<double>("brain"), dbl = r.read_all<double>("double");
  for (int i = 0; i < 6; ++i) {
    CHECK(std::abs(half[static_cast<std::size_t>(i)] - values[i]) <= std::abs(values[i]) * std::ldexp(1.0, -11));
    CHECK(std::abs(brain[static_cast<std::size_t>(i)] - values[i]) <= std::abs(values[i]) * std::ldexp(1.0, -8));
    CHECK(dbl[static_cast<std::size_t>(i)] == values[i]);
  }
  CHECK_THROWS_WITH(r.read_all<float>("ids"), Catch::Contains("not a floating type"));
  CHECK(r.names_in_file_order().size() == 6);
  CHECK_THROWS_AS(w.add_raw("bad", Dtype::F32, {2}, std::vector<unsigned char>(7)), invalid_argument);
  CHECK_THROWS_AS(w.add_as("bad2", Dtype::I32, {1}, values), invalid_argument);
}

TEST_CASE("the memory-mapped and the stream reader agree; truncation after opening is an error", "[io]") {
  io::SafetensorsWriter w;
  std::vector<float> values(1000);
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>(i) * 0.5f - 7.0f;
  w.add("a", {10, 100}, values.data());
  w.add_raw("b", Dtype::I32, {4}, std::vector<unsigned char>(16, 3));
  const std::string path = temp_file("mapped.safetensors");
  w.write(path);
  io::SafetensorsReader mapped(path), streamed(path, 100u << 20, false);
  CHECK(mapped.memory_mapped());
  CHECK_FALSE(streamed.memory_mapped());
  CHECK(mapped.read_all<float>("a") == values);
  CHECK(streamed.read_all<float>("a") == values);
  std::vector<double> part(7);
  mapped.read("a", 993, 7, part.data());
  CHECK(part[6] == static_cast<double>(values[999]));
  CHECK(mapped.read_raw("b") == streamed.read_raw("b"));
  CHECK_THROWS_WITH(mapped.read("a", 995, 6, part.data()), Catch::Contains("past its 1000 elements"));
  std::filesystem::resize_file(path, std::filesystem::file_size(path) - 100);
  CHECK_THROWS_WITH(mapped.read_all<float>("a"), Catch::Contains("truncated"));
  CHECK_THROWS_AS(streamed.read_all<float>("a"), io_error);
}

TEST_CASE("F16 and BF16 encoders invert the decoders and round to nearest even", "[io]") {
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const auto hh = static_cast<std::uint16_t>(h);
    const float f = io::detail::half_to_float(hh);
    if (std::isnan(f)) {
      CHECK(std::isnan(io::detail::half_to_float(io::detail::float_to_half(f))));
      continue;
    }
    REQUIRE(io::detail::float_to_half(f) == hh);
    const float b = io::detail::bf16_to_float(hh);
    if (!std::isnan(b)) REQUIRE(io::detail::float_to_bf16(b) == hh);
  }
  using io::detail::float_to_half;
  CHECK(float_to_half(1.0f + std::ldexp(1.0f, -11)) == 0x3C00);      // tie → even (1.0)
  CHECK(float_to_half(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3C02);  // tie → even (1 + 2⁻⁹)
  CHECK(float_to_half(1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20)) == 0x3C01);
  CHECK(float_to_half(65519.0f) == 0x7BFF);
  CHECK(float_to_half(65520.0f) == 0x7C00);  // rounds past the largest half
  CHECK(float_to_half(std::ldexp(1.0f, -24)) == 0x0001);
  CHECK(float_to_half(std::ldexp(1.0f, -25)) == 0x0000);            // tie → even (0)
  CHECK(float_to_half(1.5f * std::ldexp(1.0f, -25)) == 0x0001);
  CHECK(float_to_half(-std::ldexp(1.0f, -30)) == 0x8000);
  using io::detail::float_to_bf16;
  CHECK(float_to_bf16(f32(0x3F808000u)) == 0x3F80);  // tie → even
  CHECK(float_to_bf16(f32(0x3F818000u)) == 0x3F82);
  CHECK(float_to_bf16(f32(0x3F808001u)) == 0x3F81);
}

TEST_CASE("malformed safetensors files are rejected, each with its own message", "[io][errors]") {
  const std::string ok_entry = R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::string data(8, '\0');
  struct Case {
    const char* name;
    std::string path;
    const char* message;
  };
  const Case cases[] = {
      {"short", write_bytes("short", std::string(5, '\0')), "shorter than the 8-byte header length"},
      {"cap", make_file("cap", "{}", "", std::int64_t(1) << 40), "exceeds the limit"},
      {"past_end", make_file("past_end", "{}", "", 1000), "runs past the end of the file"},
      {"json", make_file("json", "{\"t\": [", data), "not valid JSON"},
      {"array", make_file("array", "[1,2]", ""), "not a JSON object"},
      {"fields", make_file("fields", R"({"t":{"dtype":"F32","shape":[2]}})", data), "lacks dtype, shape or data_offsets"},
      {"dtype", make_file("dtype", R"({"t":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}})", data), "unknown dtype 'Q4'"},
      {"shape", make_file("shape", R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data), "negative or non-integer"},
      {"overflow", make_file("overflow", R"({"t":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", data),
       "overflows"},
      {"outside", make_file("outside", R"({"t":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", data),
       "lie outside the 8-byte data buffer"},
      {"size", make_file("size", R"({"t":{"dtype":"F64","shape":[2],"data_offsets":[0,8]}})", data),
       "spans 8 bytes but its shape and dtype need 16"},
      {"overlap",
       make_file("overlap",
                 R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                 data),
       "overlap or leave a hole"},
      {"hole", make_file("hole", "{" + ok_entry + "}", data + std::string(4, '\0')), "the tensors cover 8"},
      {"offsets", make_file("offsets", R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,-8]}})", data),
       "not a pair of non-negative integers"},
      {"metadata", make_file("metadata", R"({"__metadata__":{"k":3},)" + ok_entry + "}", data), "is not a string"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.name);
    CHECK_THROWS_WITH(io::SafetensorsReader(c.path), Catch::Contains(c.message));
    CHECK_THROWS_AS(io::SafetensorsReader(c.path), io_error);
  }
  CHECK_THROWS_WITH(io::SafetensorsReader(temp_file("missing_file")), Catch::Contains("cannot open"));
  // A valid file for contrast.
  io::SafetensorsReader good(make_file("good", "{" + ok_entry + "}", data));
  CHECK(good.read_all<float>("t") == std::vector<float>{0.0f, 0.0f});
}


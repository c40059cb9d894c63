// A minimal PNG writer (8-bit RGB, uncompressed deflate blocks): enough for heatmaps without a
// dependency. Written atomically (temporary file + rename).
#ifndef HEADALIGN_EXAMPLES_PNG_HPP
#define HEADALIGN_EXAMPLES_PNG_HPP

#include <headalign/config.hpp>

#include <array>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <unistd.h>

namespace png {

inline std::uint32_t crc32(const unsigned char* data, std::size_t n, std::uint32_t crc = 0) {
  static const auto table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  crc = ~crc;
  for (std::size_t i = 0; i < n; ++i) crc = table[(crc ^ data[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

/// Writes @p rgb (width × height × 3 bytes, row by row) as a PNG file.
inline void write_rgb(const std::string& path, int width, int height, const std::vector<unsigned char>& rgb) {
  HEADALIGN_CHECK(width > 0 && height > 0 && rgb.size() == static_cast<std::size_t>(width) * height * 3,
                  "png: " << rgb.size() << " bytes for " << width << " × " << height << " pixels");
  std::vector<unsigned char> raw;  // filter byte 0 + row
  for (int y = 0; y < height; ++y) {
    raw.push_back(0);
    raw.insert(raw.end(), rgb.begin() + static_cast<long>(y) * width * 3, rgb.begin() + static_cast<long>(y + 1) * width * 3);
  }
  std::vector<unsigned char> z = {0x78, 0x01};  // zlib header, stored blocks
  std::uint32_t a = 1, b = 0;
  for (unsigned char c : raw) {
    a = (a + c) % 65521;
    b = (b + a) % 65521;
  }
  for (std::size_t pos = 0; pos < raw.size() || pos == 0;) {
    const std::size_t len = std::min<std::size_t>(65535, raw.size() - pos);
    const bool last = pos + len == raw.size();
    z.push_back(last ? 1 : 0);
    z.push_back(static_cast<unsigned char>(len & 0xFF));
    z.push_back(static_cast<unsigned char>(len >> 8));
    z.push_back(static_cast<unsigned char>(~len & 0xFF));
    z.push_back(static_cast<unsigned char>((~len >> 8) & 0xFF));
    z.insert(z.end(), raw.begin() + static_cast<long>(pos), raw.begin() + static_cast<long>(pos + len));
    pos += len;
    if (last) break;
  }
  const std::uint32_t adler = (b << 16) | a;
  for (int s = 24; s >= 0; s -= 8) z.push_back(static_cast<unsigned char>(adler >> s));

  std::vector<unsigned char> file = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  auto chunk = [&](const char* type, const std::vector<unsigned char>& data) {
    const auto n = static_cast<std::uint32_t>(data.size());
    for (int s = 24; s >= 0; s -= 8) file.push_back(static_cast<unsigned char>(n >> s));
    std::vector<unsigned char> body(type, type + 4);
    body.insert(body.end(), data.begin(), data.end());
    file.insert(file.end(), body.begin(), body.end());
    const std::uint32_t c = crc32(body.data(), body.size());
    for (int s = 24; s >= 0; s -= 8) file.push_back(static_cast<unsigned char>(c >> s));
  };
  std::vector<unsigned char> ihdr;
  for (std::uint32_t v : {static_cast<std::uint32_t>(width), static_cast<std::uint32_t>(height)})
    for (int s = 24; s >= 0; s -= 8) ihdr.push_back(static_cast<unsigned char>(v >> s));
  ihdr.insert(ihdr.end(), {8, 2, 0, 0, 0});  // 8-bit, RGB, deflate, no filter, no interlace
  chunk("IHDR", ihdr);
  chunk("IDAT", z);
  chunk("IEND", {});
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw headalign::io_error("cannot create '" + tmp + "'");
  const bool ok = std::fwrite(file.data(), 1, file.size(), f) == file.size();
  if (std::fclose(f) != 0 || !ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw headalign::io_error("cannot write '" + path + "'");
  }
}

/// A perceptually ordered colour for t ∈ [0, 1] (dark blue → teal → yellow).
inline std::array<unsigned char, 3> colour(double t) {
  t = t < 0 ? 0 : (t > 1 ? 1 : t);
  static const double stops[5][3] = {{68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}};
  const double x = t * 4;
  const int i = x >= 4 ? 3 : static_cast<int>(x);
  const double f = x - i;
  std::array<unsigned char, 3> c{};
  for (int k = 0; k < 3; ++k) c[static_cast<std::size_t>(k)] = static_cast<unsigned char>(stops[i][k] + f * (stops[i + 1][k] - stops[i][k]) + 0.5);
  return c;
}

}  // namespace png

#endif  // HEADALIGN_EXAMPLES_PNG_HPP

/// @file io/npy.hpp
/// @brief Validated reader and atomic writer of NumPy's `.npy` format (versions 1.0, 2.0, 3.0).
///
/// A `.npy` file is the magic `\x93NUMPY`, a major and minor version byte, the header length
/// (2 bytes little-endian in version 1, 4 bytes in versions 2 and 3), and a Python dict literal
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }` padded with spaces and a
/// newline, followed by the raw data. The reader trusts nothing: the keys may come in any order
/// but must be exactly these three, the dtype must be a plain numeric one (float 16/32/64, signed
/// or unsigned integers, bool) of either byte order, dimensions are overflow-checked against a
/// size cap, and the file must hold exactly the announced number of bytes — a truncated file or
/// trailing garbage is an io_error, never a short or padded array. (Debian xtensor's
/// `xt::load_npy` mis-reads header lengths whose byte is ≥ 0x80, rejects version 3 and other key
/// orders, and accepts truncated data: do not use it on files from elsewhere.)
#ifndef HEADALIGN_IO_NPY_HPP
#define HEADALIGN_IO_NPY_HPP

#include "../config.hpp"
#include "safetensors.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

namespace headalign::io {

/// @brief Caps that bound what a `.npy` file may make the reader allocate.
struct NpyLimits {
  std::uint64_t max_header_bytes = 10000;                 ///< numpy's own default `max_header_size`
  std::uint64_t max_data_bytes = std::uint64_t(1) << 40;  ///< 1 TiB
};

/// @brief What a `.npy` header announces.
struct NpyInfo {
  int major = 1, minor = 0;         ///< format version
  std::string descr;                ///< e.g. "<f4"
  char kind = 'f';                  ///< 'f' float, 'i' signed, 'u' unsigned, 'b' bool
  std::size_t item_size = 4;        ///< bytes per element
  bool big_endian = false;          ///< byte order of the data
  bool fortran_order = false;       ///< column-major data
  std::vector<std::int64_t> shape;  ///< () for a scalar
  std::uint64_t data_offset = 0;    ///< where the data start in the file

  std::uint64_t numel() const {
    std::uint64_t n = 1;
    for (auto s : shape) n *= static_cast<std::uint64_t>(s);
    return n;
  }
  std::uint64_t data_bytes() const { return numel() * item_size; }
};

/// @brief A `.npy` array read into C (row-major) order and converted to T.
template <class T>
struct NpyArray {
  NpyInfo info;
  std::vector<T> data;
};

namespace detail {

[[noreturn]] inline void npy_error(const std::string& where, const std::string& what) {
  ::headalign::detail::throw_io_error(".npy file '" + where + "': " + what);
}

/// The tokens of a `.npy` header's Python dict literal, read from [p, end).
class NpyLexer {
 public:
  NpyLexer(const char* p, const char* end, const std::string& where) : p_(p), end_(end), where_(where) {}

  [[noreturn]] void fail(const std::string& what) const {
    npy_error(where_, "malformed header (" + what + ")");
  }

  void skip_space() {
    while (p_ < end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) ++p_;
  }
  /// Whether the next character (after white space) is @p c; consumes it if so.
  bool accept(char c) {
    skip_space();
    if (p_ < end_ && *p_ == c) {
      ++p_;
      return true;
    }
    return false;
  }
  void expect(char c) {
    if (!accept(c)) fail(std::string("expected '") + c + "'");
  }
  /// Whether the next character (after white space) is one of @p chars, without consuming it.
  bool at_one_of(const char* chars) {
    skip_space();
    return p_ < end_ && *p_ != '\0' && std::strchr(chars, *p_) != nullptr;
  }
  /// Whether the text continues with the word @p w; consumes it if so.
  bool accept_word(const char* w) {
    skip_space();
    const std::size_t n = std::strlen(w);
    if (static_cast<std::size_t>(end_ - p_) >= n && std::strncmp(p_, w, n) == 0) {
      p_ += n;
      return true;
    }
    return false;
  }
  /// A quoted string of printable ASCII without escapes.
  std::string string_literal() {
    skip_space();
    if (p_ >= end_ || (*p_ != '\'' && *p_ != '"')) fail("expected a string");
    const char q = *p_++;
    std::string s;
    while (p_ < end_ && *p_ != q) {
      if (*p_ == '\\' || static_cast<unsigned char>(*p_) < 0x20 || static_cast<unsigned char>(*p_) >= 0x7f)
        fail("unsupported character in a string");
      s += *p_++;
    }
    if (p_ >= end_) fail("unterminated string");
    ++p_;
    return s;
  }
  /// A non-negative integer that fits int64 (an optional Python 2 `L` suffix is accepted).
  std::int64_t dimension() {
    skip_space();
    const char* start = p_;
    std::uint64_t v = 0;
    while (p_ < end_ && *p_ >= '0' && *p_ <= '9') {
      if (v > (std::numeric_limits<std::uint64_t>::max() - 9) / 10) npy_error(where_, "dimension overflows");
      v = v * 10 + static_cast<std::uint64_t>(*p_++ - '0');
    }
    if (p_ == start) fail("a dimension is not a non-negative integer");
    if (p_ < end_ && *p_ == 'L') ++p_;
    if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
      npy_error(where_, "dimension overflows");
    return static_cast<std::int64_t>(v);
  }
  bool done() {
    skip_space();
    return p_ == end_;
  }

 private:
  const char* p_;
  const char* end_;
  const std::string& where_;
};

/// The dtype of a `descr` string: byte order, kind and size of a plain numeric type.
inline void parse_npy_descr(const std::string& d, NpyInfo& info, const std::string& where) {
  info.descr = d;
  if (d.size() < 3 || std::string("<>|=").find(d[0]) == std::string::npos)
    npy_error(where, "unsupported dtype '" + d + "'");
  info.kind = d[1];
  const std::string digits = d.substr(2);
  if (digits.empty() || digits.size() > 2 || digits.find_first_not_of("0123456789") != std::string::npos)
    npy_error(where, "unsupported dtype '" + d + "'");
  info.item_size = static_cast<std::size_t>(std::stoi(digits));
  const std::size_t w = info.item_size;
  const bool ok = (info.kind == 'f' && (w == 2 || w == 4 || w == 8)) ||
                  ((info.kind == 'i' || info.kind == 'u') && (w == 1 || w == 2 || w == 4 || w == 8)) ||
                  (info.kind == 'b' && w == 1);
  if (!ok)
    npy_error(where, "unsupported dtype '" + d + "' (floats f2/f4/f8, integers i/u 1–8 bytes, bool b1)");
  if (d[0] == '|' && w != 1) npy_error(where, "dtype '" + d + "' has no byte order");
  info.big_endian = d[0] == '>' || (d[0] == '=' && !little_endian());
}

/// The `shape` tuple: `()`, `(n,)` or `(n, m, …)`, at most 64 dimensions.
inline void parse_npy_shape(NpyLexer& lex, NpyInfo& info, const std::string& where) {
  lex.expect('(');
  while (!lex.accept(')')) {
    info.shape.push_back(lex.dimension());
    if (info.shape.size() > 64) npy_error(where, "more than 64 dimensions");
    if (lex.accept(',')) continue;
    lex.expect(')');
    break;
  }
}

/// The header dict: exactly the keys descr, fortran_order and shape, in any order.
inline void parse_npy_dict(NpyLexer& lex, NpyInfo& info, const std::string& where) {
  bool have_descr = false, have_order = false, have_shape = false;
  lex.expect('{');
  while (!lex.accept('}')) {
    const std::string key = lex.string_literal();
    lex.expect(':');
    if (key == "descr") {
      if (have_descr) lex.fail("'descr' given twice");
      have_descr = true;
      if (lex.at_one_of("[(")) npy_error(where, "structured dtypes are not supported");
      parse_npy_descr(lex.string_literal(), info, where);
    } else if (key == "fortran_order") {
      if (have_order) lex.fail("'fortran_order' given twice");
      have_order = true;
      if (lex.accept_word("True"))
        info.fortran_order = true;
      else if (lex.accept_word("False"))
        info.fortran_order = false;
      else
        lex.fail("fortran_order must be True or False");
    } else if (key == "shape") {
      if (have_shape) lex.fail("'shape' given twice");
      have_shape = true;
      parse_npy_shape(lex, info, where);
    } else {
      npy_error(where, "unexpected header key '" + key +
                           "' (a .npy header has exactly descr, fortran_order, shape)");
    }
    if (lex.accept(',')) continue;
    lex.expect('}');
    break;
  }
  if (!lex.done()) lex.fail("text after the dict");
  if (!have_descr || !have_order || !have_shape) lex.fail("it needs the keys descr, fortran_order and shape");
}

/// The data size the header announces, overflow-checked against the cap, must be exactly what
/// the file holds after the header.
inline void check_npy_data_size(const NpyInfo& info, std::uint64_t file_size, const NpyLimits& limits,
                                const std::string& where) {
  std::uint64_t bytes = info.item_size;
  for (auto s : info.shape) {
    const auto u = static_cast<std::uint64_t>(s);
    if (u != 0 && bytes > limits.max_data_bytes / u)
      npy_error(where,
                "the shape announces more than " + std::to_string(limits.max_data_bytes) + " bytes of data");
    bytes *= u;
  }
  if (bytes > limits.max_data_bytes)
    npy_error(where,
              "the shape announces more than " + std::to_string(limits.max_data_bytes) + " bytes of data");
  const std::uint64_t have = file_size - info.data_offset;
  if (have < bytes)
    npy_error(where, "truncated: the header announces " + std::to_string(bytes) +
                         " data bytes, the file has " + std::to_string(have));
  if (have > bytes) npy_error(where, std::to_string(have - bytes) + " bytes after the announced data");
}

/// Parses the header of a `.npy` file from its first @p size bytes; @p file_size is the size of
/// the whole file. @throws io_error for anything that is not a well-formed header of a supported
/// dtype whose data fit the file exactly.
inline NpyInfo parse_npy_header(const unsigned char* data, std::size_t size, std::uint64_t file_size,
                                const std::string& where, const NpyLimits& limits = {}) {
  static const unsigned char magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  if (size < 10 || std::memcmp(data, magic, 6) != 0) npy_error(where, "not a .npy file (bad magic)");
  NpyInfo info;
  info.major = data[6];
  info.minor = data[7];
  if (info.major < 1 || info.major > 3 || info.minor != 0)
    npy_error(where,
              "unsupported format version " + std::to_string(info.major) + "." + std::to_string(info.minor));
  const std::size_t len_bytes = info.major == 1 ? 2 : 4;
  if (size < 8 + len_bytes) npy_error(where, "truncated header");
  std::uint64_t header_len = 0;
  for (std::size_t i = 0; i < len_bytes; ++i)
    header_len |= static_cast<std::uint64_t>(data[8 + i]) << (8 * i);
  if (header_len > limits.max_header_bytes)
    npy_error(where, "header of " + std::to_string(header_len) + " bytes exceeds the limit of " +
                         std::to_string(limits.max_header_bytes));
  info.data_offset = 8 + len_bytes + header_len;
  if (info.data_offset > size || info.data_offset > file_size) npy_error(where, "truncated header");
  const char* p = reinterpret_cast<const char*>(data) + 8 + len_bytes;
  NpyLexer lex(p, p + header_len, where);
  parse_npy_dict(lex, info, where);
  check_npy_data_size(info, file_size, limits, where);
  return info;
}

/// Converts @p count elements of the file's dtype at @p src (file byte order) to T.
template <class T>
void npy_convert(const NpyInfo& info, const unsigned char* src, std::size_t count, T* dst) {
  const std::size_t w = info.item_size;
  const bool swap = info.big_endian == little_endian();
  unsigned char b[8];
  for (std::size_t i = 0; i < count; ++i) {
    const unsigned char* q = src + i * w;
    for (std::size_t j = 0; j < w; ++j) b[j] = swap ? q[w - 1 - j] : q[j];
    switch (info.kind) {
      case 'f':
        if (w == 2) {
          std::uint16_t h;
          std::memcpy(&h, b, 2);
          dst[i] = static_cast<T>(half_to_float(h));
        } else if (w == 4) {
          float f;
          std::memcpy(&f, b, 4);
          dst[i] = static_cast<T>(f);
        } else {
          double f;
          std::memcpy(&f, b, 8);
          dst[i] = static_cast<T>(f);
        }
        break;
      case 'i': {
        std::int64_t v = 0;
        if (w == 1) {
          std::int8_t x;
          std::memcpy(&x, b, 1);
          v = x;
        } else if (w == 2) {
          std::int16_t x;
          std::memcpy(&x, b, 2);
          v = x;
        } else if (w == 4) {
          std::int32_t x;
          std::memcpy(&x, b, 4);
          v = x;
        } else {
          std::memcpy(&v, b, 8);
        }
        dst[i] = static_cast<T>(v);
        break;
      }
      case 'u': {
        std::uint64_t v = 0;
        if (w == 1) {
          v = b[0];
        } else if (w == 2) {
          std::uint16_t x;
          std::memcpy(&x, b, 2);
          v = x;
        } else if (w == 4) {
          std::uint32_t x;
          std::memcpy(&x, b, 4);
          v = x;
        } else {
          std::memcpy(&v, b, 8);
        }
        dst[i] = static_cast<T>(v);
        break;
      }
      default:
        dst[i] = static_cast<T>(b[0] != 0);
        break;  // 'b'
    }
  }
}

}  // namespace detail

/// @brief Reads and validates the header of a `.npy` file (the data are not read).
/// @throws io_error when the file cannot be read or is not a well-formed `.npy` file of a supported dtype
inline NpyInfo read_npy_info(const std::string& path, const NpyLimits& limits = {}) {
  std::ifstream in(path, std::ios::binary);
  if (!in) ::headalign::detail::throw_io_error("cannot open .npy file '" + path + "'");
  in.seekg(0, std::ios::end);
  const auto file_size = static_cast<std::uint64_t>(in.tellg());
  in.seekg(0);
  const std::uint64_t want = std::min<std::uint64_t>(file_size, 12 + limits.max_header_bytes);
  std::vector<unsigned char> head(static_cast<std::size_t>(want));
  if (want && !in.read(reinterpret_cast<char*>(head.data()), static_cast<std::streamsize>(want)))
    ::headalign::detail::throw_io_error("cannot read .npy file '" + path + "'");
  return detail::parse_npy_header(head.data(), head.size(), file_size, path, limits);
}

/// @brief Reads a `.npy` file into C (row-major) order, converting its elements to @p T
/// (a Fortran-order file is transposed into C order).
/// @throws io_error for a malformed, truncated or oversized file, or an unsupported dtype
template <class T>
NpyArray<T> read_npy(const std::string& path, const NpyLimits& limits = {}) {
  static_assert(std::is_arithmetic<T>::value, "headalign: read_npy converts to an arithmetic type");
  NpyArray<T> out;
  out.info = read_npy_info(path, limits);
  const NpyInfo& info = out.info;
  const std::uint64_t n = info.numel();
  std::vector<T> raw(static_cast<std::size_t>(n));
  std::ifstream in(path, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(info.data_offset));
  const std::uint64_t chunk = std::max<std::uint64_t>(1, (std::uint64_t(1) << 20) / info.item_size);
  std::vector<unsigned char> buf;
  for (std::uint64_t i = 0; i < n; i += chunk) {
    const std::uint64_t k = std::min(chunk, n - i);
    buf.resize(static_cast<std::size_t>(k * info.item_size));
    if (!in.read(reinterpret_cast<char*>(buf.data()), static_cast<std::streamsize>(buf.size())))
      detail::npy_error(path, "could not read the data (file changed while reading?)");
    detail::npy_convert(info, buf.data(), static_cast<std::size_t>(k), raw.data() + i);
  }
  const std::size_t nd = info.shape.size();
  if (!info.fortran_order || nd < 2 || n == 0) {
    out.data = std::move(raw);
    return out;
  }
  // Fortran order: element (i0, …, i_{nd−1}) sits at Σ i_k · Π_{j<k} s_j. Walk the C-order
  // index and carry the Fortran offset along.
  out.data.resize(static_cast<std::size_t>(n));
  std::vector<std::uint64_t> fstride(nd, 1), idx(nd, 0);
  for (std::size_t k = 1; k < nd; ++k)
    fstride[k] = fstride[k - 1] * static_cast<std::uint64_t>(info.shape[k - 1]);
  std::uint64_t off = 0;
  for (std::uint64_t c = 0; c < n; ++c) {
    out.data[static_cast<std::size_t>(c)] = raw[static_cast<std::size_t>(off)];
    for (std::size_t k = nd; k-- > 0;) {
      if (++idx[k] < static_cast<std::uint64_t>(info.shape[k])) {
        off += fstride[k];
        break;
      }
      off -= fstride[k] * (idx[k] - 1);
      idx[k] = 0;
    }
  }
  return out;
}

/// @brief Reads a 1-D (as a column) or 2-D `.npy` array into an Eigen matrix.
/// @throws io_error as read_npy(), or when the array is not 1-D or 2-D
template <class S>
Matrix<S> read_npy_matrix(const std::string& path, const NpyLimits& limits = {}) {
  NpyArray<S> a = read_npy<S>(path, limits);
  const auto& sh = a.info.shape;
  if (sh.size() != 1 && sh.size() != 2)
    detail::npy_error(path,
                      "expected a 1-D or 2-D array, found " + std::to_string(sh.size()) + " dimensions");
  const Index rows = static_cast<Index>(sh[0]), cols = sh.size() == 2 ? static_cast<Index>(sh[1]) : 1;
  return Eigen::Map<const Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(a.data.data(),
                                                                                             rows, cols);
}

/// @brief Writes @p data (C order, @p shape) as a version 1.0 `.npy` file (2.0 when the header
/// needs it), little-endian `<f4`, `<f8`, `<i4`, `<i8`, `<u1` or `|b1` by T, atomically.
/// @throws invalid_argument for a negative dimension; io_error when the file cannot be written
template <class T>
void write_npy(const std::string& path, const T* data, const std::vector<std::int64_t>& shape) {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value ||
                    std::is_same<T, std::int32_t>::value || std::is_same<T, std::int64_t>::value ||
                    std::is_same<T, std::uint8_t>::value || std::is_same<T, bool>::value,
                "headalign: write_npy writes float, double, int32, int64, uint8 or bool");
  if (!detail::little_endian()) ::headalign::detail::throw_io_error("write_npy needs a little-endian host");
  const char* descr = std::is_same<T, float>::value          ? "<f4"
                      : std::is_same<T, double>::value       ? "<f8"
                      : std::is_same<T, std::int32_t>::value ? "<i4"
                      : std::is_same<T, std::int64_t>::value ? "<i8"
                      : std::is_same<T, std::uint8_t>::value ? "|u1"
                                                             : "|b1";
  std::uint64_t n = 1;
  std::string dims;
  for (auto s : shape) {
    HEADALIGN_CHECK(s >= 0, "write_npy: negative dimension " << s);
    n *= static_cast<std::uint64_t>(s);
    dims += std::to_string(s) + ", ";
  }
  if (shape.size() > 1)
    dims.resize(dims.size() - 2);
  else if (shape.size() == 1)
    dims.resize(dims.size() - 1);  // "(5,)"
  std::string header =
      std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (" + dims + "), }";
  const std::size_t prefix_v1 = 10, prefix_v2 = 12;
  const bool v2 = header.size() + 1 + prefix_v1 + 64 > 65535;
  const std::size_t prefix = v2 ? prefix_v2 : prefix_v1;
  header.append((64 - (prefix + header.size() + 1) % 64) % 64, ' ');
  header += '\n';
  detail::write_atomically(path, [&](std::FILE* f) {
    unsigned char pre[12] = {0x93, 'N', 'U', 'M', 'P', 'Y', static_cast<unsigned char>(v2 ? 2 : 1), 0};
    std::uint64_t len = header.size();
    for (std::size_t i = 0; i < prefix - 8; ++i, len >>= 8)
      pre[8 + i] = static_cast<unsigned char>(len & 0xff);
    bool ok = std::fwrite(pre, 1, prefix, f) == prefix &&
              std::fwrite(header.data(), 1, header.size(), f) == header.size();
    if (n)
      ok = ok && std::fwrite(data, sizeof(T), static_cast<std::size_t>(n), f) == static_cast<std::size_t>(n);
    return ok;
  });
}

/// @brief Writes an Eigen matrix as a 2-D C-order `.npy` file (float or double), atomically.
template <class Derived>
void write_npy(const std::string& path, const Eigen::MatrixBase<Derived>& m) {
  using S = typename Derived::Scalar;
  const Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> rm = m;
  write_npy(path, rm.data(), {static_cast<std::int64_t>(rm.rows()), static_cast<std::int64_t>(rm.cols())});
}

}  // namespace headalign::io

#endif  // HEADALIGN_IO_NPY_HPP

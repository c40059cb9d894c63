/// @file io/safetensors.hpp
/// @brief Validated reader and atomic writer of the safetensors format.
///
/// Layout: an 8-byte little-endian header length N, N bytes of JSON
/// `{"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}`,
/// then the data buffer. The reader rejects, with headalign::io_error naming the problem:
/// truncated files, headers longer than the file or than `max_header_bytes`, malformed JSON,
/// unknown dtypes, negative or overflowing shapes, offsets that disagree with the shape, leave
/// holes, overlap or run past the end of the file, and non-string metadata.
#ifndef HEADALIGN_IO_SAFETENSORS_HPP
#define HEADALIGN_IO_SAFETENSORS_HPP

#include "../config.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace headalign::io {

/// @brief Element types of safetensors tensors. Floating types are read with conversion
/// (read(), read_all()); every type can be copied bit-exact (read_raw(), SafetensorsWriter::add_raw()).
enum class Dtype { F16, BF16, F32, F64, BOOL, U8, I8, U16, I16, U32, I32, U64, I64, F8_E4M3, F8_E5M2 };

/// Bytes per element of @p dtype.
inline std::size_t dtype_size(Dtype dtype) {
  switch (dtype) {
    case Dtype::BOOL:
    case Dtype::U8:
    case Dtype::I8:
    case Dtype::F8_E4M3:
    case Dtype::F8_E5M2:
      return 1;
    case Dtype::F16:
    case Dtype::BF16:
    case Dtype::U16:
    case Dtype::I16:
      return 2;
    case Dtype::F32:
    case Dtype::U32:
    case Dtype::I32:
      return 4;
    case Dtype::F64:
    case Dtype::U64:
    case Dtype::I64:
      return 8;
  }
  return 0;
}

namespace detail {
struct DtypeName {
  Dtype dtype;
  const char* name;
};
inline const DtypeName* dtype_names() {
  static const DtypeName names[] = {
      {Dtype::F16, "F16"},   {Dtype::BF16, "BF16"},       {Dtype::F32, "F32"},        {Dtype::F64, "F64"},
      {Dtype::BOOL, "BOOL"}, {Dtype::U8, "U8"},           {Dtype::I8, "I8"},          {Dtype::U16, "U16"},
      {Dtype::I16, "I16"},   {Dtype::U32, "U32"},         {Dtype::I32, "I32"},        {Dtype::U64, "U64"},
      {Dtype::I64, "I64"},   {Dtype::F8_E4M3, "F8_E4M3"}, {Dtype::F8_E5M2, "F8_E5M2"}};
  return names;
}
constexpr int kDtypeCount = 15;
}  // namespace detail

/// The safetensors name of @p dtype ("F32", ...).
inline const char* dtype_name(Dtype dtype) {
  for (int i = 0; i < detail::kDtypeCount; ++i)
    if (detail::dtype_names()[i].dtype == dtype) return detail::dtype_names()[i].name;
  return "?";
}

/// Parses a safetensors dtype name; false when it is not one of Dtype's.
inline bool parse_dtype(const std::string& name, Dtype& out) {
  for (int i = 0; i < detail::kDtypeCount; ++i)
    if (name == detail::dtype_names()[i].name) {
      out = detail::dtype_names()[i].dtype;
      return true;
    }
  return false;
}

/// Whether read() converts @p dtype (F16, BF16, F32, F64).
inline bool is_float(Dtype dtype) {
  return dtype == Dtype::F16 || dtype == Dtype::BF16 || dtype == Dtype::F32 || dtype == Dtype::F64;
}

/// The dtype of scalar @p T (float or double).
template <class T>
constexpr Dtype dtype_of() {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value,
                "headalign: safetensors I/O of float or double");
  return std::is_same<T, float>::value ? Dtype::F32 : Dtype::F64;
}

namespace detail {

inline float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  std::uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // Inf / NaN
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    exp = 113;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --exp;
    }
    bits = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline float bf16_to_float(std::uint16_t h) {
  const std::uint32_t bits = static_cast<std::uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

/// Converts @p count little-endian elements of @p dtype at @p src to T.
template <class T>
void convert(Dtype dtype, const unsigned char* src, std::size_t count, T* dst) {
  for (std::size_t i = 0; i < count; ++i) {
    const unsigned char* p = src + i * dtype_size(dtype);
    switch (dtype) {
      case Dtype::F16: {
        std::uint16_t h;
        std::memcpy(&h, p, 2);
        dst[i] = static_cast<T>(half_to_float(h));
        break;
      }
      case Dtype::BF16: {
        std::uint16_t h;
        std::memcpy(&h, p, 2);
        dst[i] = static_cast<T>(bf16_to_float(h));
        break;
      }
      case Dtype::F32: {
        float f;
        std::memcpy(&f, p, 4);
        dst[i] = static_cast<T>(f);
        break;
      }
      case Dtype::F64: {
        double f;
        std::memcpy(&f, p, 8);
        dst[i] = static_cast<T>(f);
        break;
      }
      default:
        return;  // callers check is_float() first
    }
  }
}

/// float → IEEE half, round to nearest even (overflow to ±Inf, NaN kept quiet).
inline std::uint16_t float_to_half(float f) {
  std::uint32_t x;
  std::memcpy(&x, &f, 4);
  const std::uint16_t sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
  const std::uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u)
    return static_cast<std::uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
  if (abs >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // rounds past 65504
  if (abs < 0x38800000u) {               // subnormal half (or zero): value / 2^-24, rounded to even
    if (abs < 0x33000000u) return sign;  // below half the smallest subnormal
    const std::uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    const int shift = 126 - static_cast<int>(abs >> 23);  // 14 … 24
    const std::uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    return static_cast<std::uint16_t>(sign | (q + ((rem > half || (rem == half && (q & 1u))) ? 1u : 0u)));
  }
  const std::uint32_t base = abs - 0x38000000u;  // rebias exponent 127 → 15
  const std::uint32_t q = base >> 13, rem = base & 0x1fffu;
  return static_cast<std::uint16_t>(sign | (q + ((rem > 0x1000u || (rem == 0x1000u && (q & 1u))) ? 1u : 0u)));
}

/// float → bfloat16, round to nearest even (NaN kept quiet).
inline std::uint16_t float_to_bf16(float f) {
  std::uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x40u);
  const std::uint32_t rounding = 0x7fffu + ((x >> 16) & 1u);
  return static_cast<std::uint16_t>((x + rounding) >> 16);
}

/// Converts @p count values to little-endian elements of floating @p dtype at @p dst.
template <class T>
void convert_to(Dtype dtype, const T* src, std::size_t count, unsigned char* dst) {
  for (std::size_t i = 0; i < count; ++i) {
    unsigned char* p = dst + i * dtype_size(dtype);
    switch (dtype) {
      case Dtype::F16: {
        const std::uint16_t h = float_to_half(static_cast<float>(src[i]));
        std::memcpy(p, &h, 2);
        break;
      }
      case Dtype::BF16: {
        const std::uint16_t h = float_to_bf16(static_cast<float>(src[i]));
        std::memcpy(p, &h, 2);
        break;
      }
      case Dtype::F32: {
        const float f = static_cast<float>(src[i]);
        std::memcpy(p, &f, 4);
        break;
      }
      case Dtype::F64: {
        const double f = static_cast<double>(src[i]);
        std::memcpy(p, &f, 8);
        break;
      }
      default:
        ::headalign::detail::throw_invalid_argument(std::string("cannot convert values to dtype ") +
                                                    dtype_name(dtype));
    }
  }
}

/// Writes a file atomically: @p body writes it to `<path>.tmp.<pid>`, which is flushed to disk
/// and renamed over @p path; on any failure the temporary file is removed and io_error thrown.
template <class Body>
void write_atomically(const std::string& path, Body&& body) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) ::headalign::detail::throw_io_error("cannot create '" + tmp + "'");
  bool ok = false;
  try {
    ok = body(f);
  } catch (...) {
    std::fclose(f);
    std::remove(tmp.c_str());
    throw;
  }
  ok = ok && std::fflush(f) == 0 && ::fsync(::fileno(f)) == 0;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) {
    std::remove(tmp.c_str());
    ::headalign::detail::throw_io_error("cannot write '" + tmp + "' (disk full?)");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    ::headalign::detail::throw_io_error("cannot rename '" + tmp + "' to '" + path + "'");
  }
}

inline bool little_endian() {
  const std::uint16_t one = 1;
  unsigned char c;
  std::memcpy(&c, &one, 1);
  return c == 1;
}

}  // namespace detail

/// @brief One tensor entry of a safetensors header.
struct TensorInfo {
  Dtype dtype = Dtype::F32;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0, end = 0;  ///< byte offsets in the data buffer
  std::uint64_t numel() const {
    std::uint64_t n = 1;
    for (auto s : shape) n *= static_cast<std::uint64_t>(s);
    return n;
  }
};

/// @brief A safetensors file opened for reading; the header is validated on construction and the
/// data are read from a read-only memory mapping (or a stream when mapping is off or fails).
class SafetensorsReader {
 public:
  /// @param path file to open
  /// @param max_header_bytes refuse larger JSON headers (the format's own limit is 100 MB)
  /// @throws io_error when the file cannot be read or is malformed
  /// @param memory_map map the file read-only (the default) and read tensors straight from the
  ///        mapping; otherwise, or when mapping fails, read through a file stream. Either way every
  ///        read is bounds-checked against the validated header, and the file's size is checked
  ///        again before each read (a file truncated while mapped would otherwise fault).
  explicit SafetensorsReader(const std::string& path, std::uint64_t max_header_bytes = 100u << 20,
                             bool memory_map = true)
      : path_(path), in_(path, std::ios::binary) {
    if (!detail::little_endian())
      ::headalign::detail::throw_io_error("safetensors I/O needs a little-endian host");
    if (!in_) fail("cannot open file");
    in_.seekg(0, std::ios::end);
    const auto size = static_cast<std::int64_t>(in_.tellg());
    in_.seekg(0);
    if (size < 8) fail("file is " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
    unsigned char len_bytes[8];
    in_.read(reinterpret_cast<char*>(len_bytes), 8);
    std::uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];
    if (header_len > max_header_bytes)
      fail("header length " + std::to_string(header_len) + " exceeds the limit of " +
           std::to_string(max_header_bytes));
    if (header_len > static_cast<std::uint64_t>(size) - 8)
      fail("header length " + std::to_string(header_len) + " runs past the end of the file (" +
           std::to_string(size) + " bytes)");
    std::string header(static_cast<std::size_t>(header_len), '\0');
    in_.read(header.data(), static_cast<std::streamsize>(header_len));
    if (!in_) fail("cannot read the header");
    data_start_ = 8 + header_len;
    data_size_ = static_cast<std::uint64_t>(size) - data_start_;
    parse(header);
    file_size_ = static_cast<std::uint64_t>(size);
    if (memory_map) map(path);
  }

  ~SafetensorsReader() { unmap(); }
  SafetensorsReader(const SafetensorsReader&) = delete;
  SafetensorsReader& operator=(const SafetensorsReader&) = delete;

  /// Whether the tensors are read from a read-only memory mapping.
  bool memory_mapped() const { return map_ != nullptr; }

  /// Names of all tensors, sorted.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& kv : tensors_) out.push_back(kv.first);
    return out;
  }
  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
  /// @throws io_error when there is no tensor @p name
  const TensorInfo& info(const std::string& name) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) fail("no tensor named '" + name + "'");
    return it->second;
  }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return path_; }

  /// Reads elements [first, first + count) of tensor @p name (row-major order), converted to T.
  template <class T>
  void read(const std::string& name, std::uint64_t first, std::uint64_t count, T* out) {
    const TensorInfo& t = info(name);
    if (!is_float(t.dtype))
      fail("tensor '" + name + "' has dtype " + dtype_name(t.dtype) +
           ", not a floating type (F16, BF16, F32, F64)");
    if (first > t.numel() || count > t.numel() - first)
      fail("read of elements [" + std::to_string(first) + ", " + std::to_string(first + count) + ") of '" +
           name + "' past its " + std::to_string(t.numel()) + " elements");
    const std::size_t es = dtype_size(t.dtype);
    if (map_) {
      check_size(name);
      detail::convert(t.dtype, map_ + data_start_ + t.begin + first * es, static_cast<std::size_t>(count),
                      out);
      release(data_start_ + t.begin + first * es, count * es);
      return;
    }
    constexpr std::uint64_t kChunk = 1u << 16;
    std::vector<unsigned char> buf;
    for (std::uint64_t done = 0; done < count; done += kChunk) {
      const std::uint64_t k = std::min(kChunk, count - done);
      buf.resize(static_cast<std::size_t>(k * es));
      in_.clear();
      in_.seekg(static_cast<std::streamoff>(data_start_ + t.begin + (first + done) * es));
      in_.read(reinterpret_cast<char*>(buf.data()), static_cast<std::streamsize>(buf.size()));
      if (!in_) fail("cannot read the data of '" + name + "' (file truncated or changed while reading?)");
      detail::convert(t.dtype, buf.data(), static_cast<std::size_t>(k), out + done);
    }
  }

  /// The bytes of tensor @p name exactly as stored (any dtype, little-endian).
  std::vector<unsigned char> read_raw(const std::string& name) {
    const TensorInfo& t = info(name);
    std::vector<unsigned char> out(static_cast<std::size_t>(t.end - t.begin));
    if (map_) {
      check_size(name);
      if (!out.empty()) std::memcpy(out.data(), map_ + data_start_ + t.begin, out.size());
      release(data_start_ + t.begin, out.size());
      return out;
    }
    in_.clear();
    in_.seekg(static_cast<std::streamoff>(data_start_ + t.begin));
    in_.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(out.size()));
    if (!in_) fail("cannot read the data of '" + name + "' (file truncated or changed while reading?)");
    return out;
  }

  /// Names of the tensors in the order of their data in the file.
  std::vector<std::string> names_in_file_order() const {
    std::vector<std::string> out = names();
    std::sort(out.begin(), out.end(), [&](const std::string& a, const std::string& b) {
      return tensors_.at(a).begin < tensors_.at(b).begin;
    });
    return out;
  }

  /// Reads a whole tensor, converted to T.
  template <class T>
  std::vector<T> read_all(const std::string& name) {
    std::vector<T> out(static_cast<std::size_t>(info(name).numel()));
    read(name, 0, out.size(), out.data());
    return out;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    ::headalign::detail::throw_io_error("safetensors file '" + path_ + "': " + what);
  }

  void parse(const std::string& header) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(header);
    } catch (const nlohmann::json::exception& e) {
      fail(std::string("header is not valid JSON (") + e.what() + ")");
    }
    if (!j.is_object()) fail("header is not a JSON object");
    std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
    for (auto it = j.begin(); it != j.end(); ++it) {
      const std::string& name = it.key();
      const auto& v = it.value();
      if (name == "__metadata__") {
        if (!v.is_object()) fail("__metadata__ is not an object");
        for (auto m = v.begin(); m != v.end(); ++m) {
          if (!m.value().is_string()) fail("__metadata__ value of '" + m.key() + "' is not a string");
          metadata_[m.key()] = m.value().get<std::string>();
        }
        continue;
      }
      if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
        fail("tensor '" + name + "' lacks dtype, shape or data_offsets");
      TensorInfo t;
      const auto& dt = v["dtype"];
      if (!dt.is_string()) fail("dtype of '" + name + "' is not a string");
      const std::string d = dt.get<std::string>();
      if (!parse_dtype(d, t.dtype)) fail("tensor '" + name + "' has unknown dtype '" + d + "'");
      if (!v["shape"].is_array()) fail("shape of '" + name + "' is not an array");
      std::uint64_t numel = 1;
      for (const auto& s : v["shape"]) {
        if (!s.is_number_integer() || s.get<std::int64_t>() < 0)
          fail("shape of '" + name + "' has a negative or non-integer entry");
        const auto e = static_cast<std::uint64_t>(s.get<std::int64_t>());
        if (e != 0 && numel > std::numeric_limits<std::uint64_t>::max() / e / 8)
          fail("shape of '" + name + "' overflows");
        numel *= e;
        t.shape.push_back(static_cast<std::int64_t>(e));
      }
      const auto& off = v["data_offsets"];
      if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
        fail("data_offsets of '" + name + "' is not a pair of non-negative integers");
      t.begin = off[0].get<std::uint64_t>();
      t.end = off[1].get<std::uint64_t>();
      if (t.end < t.begin || t.end > data_size_)
        fail("data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "] of '" + name +
             "' lie outside the " + std::to_string(data_size_) + "-byte data buffer (truncated file?)");
      if (t.end - t.begin != numel * dtype_size(t.dtype))
        fail("tensor '" + name + "' spans " + std::to_string(t.end - t.begin) +
             " bytes but its shape and dtype need " + std::to_string(numel * dtype_size(t.dtype)));
      ranges.emplace_back(t.begin, t.end);
      tensors_.emplace(name, std::move(t));
    }
    std::sort(ranges.begin(), ranges.end());
    std::uint64_t pos = 0;
    for (const auto& r : ranges) {
      if (r.first != pos)
        fail("tensor data overlap or leave a hole at byte " + std::to_string(std::min(pos, r.first)));
      pos = r.second;
    }
    if (pos != data_size_)
      fail("data buffer has " + std::to_string(data_size_) + " bytes but the tensors cover " +
           std::to_string(pos));
  }

  void map(const std::string& path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    struct stat st {};
    if (fd_ < 0 || ::fstat(fd_, &st) != 0 || static_cast<std::uint64_t>(st.st_size) != file_size_ ||
        file_size_ == 0) {
      unmap();
      return;  // the stream path remains
    }
    void* p = ::mmap(nullptr, static_cast<std::size_t>(file_size_), PROT_READ, MAP_PRIVATE, fd_, 0);
    if (p == MAP_FAILED) {
      unmap();
      return;
    }
    map_ = static_cast<const unsigned char*>(p);
  }

  void unmap() {
    if (map_) ::munmap(const_cast<unsigned char*>(map_), static_cast<std::size_t>(file_size_));
    map_ = nullptr;
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  // Drops the whole pages of a consumed byte range from this process's resident set (they stay in
  // the page cache and fault back in if read again): streaming a calibration file through the
  // mapping keeps memory flat in its size.
  void release(std::uint64_t begin, std::uint64_t bytes) const {
    const auto page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
    const std::uint64_t lo = (begin + page - 1) / page * page, hi = (begin + bytes) / page * page;
    if (page > 0 && hi > lo)
      ::madvise(const_cast<unsigned char*>(map_) + lo, static_cast<std::size_t>(hi - lo), MADV_DONTNEED);
  }

  // The mapped file must still be as long as when it was validated.
  void check_size(const std::string& name) const {
    struct stat st {};
    if (::fstat(fd_, &st) != 0 || static_cast<std::uint64_t>(st.st_size) < file_size_)
      fail("cannot read the data of '" + name + "': the file was truncated after it was opened");
  }

  std::string path_;
  std::ifstream in_;
  const unsigned char* map_ = nullptr;
  int fd_ = -1;
  std::uint64_t file_size_ = 0;
  std::uint64_t data_start_ = 0, data_size_ = 0;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

/// @brief Collects tensors and writes them as one safetensors file, atomically.
///
/// The file is written to a temporary name beside @p path, flushed to disk and renamed over
/// @p path: readers see the old file or the whole new one, never a part.
class SafetensorsWriter {
 public:
  /// Adds a tensor of @p shape whose row-major elements are @p data (copied).
  template <class T>
  void add(const std::string& name, std::vector<std::int64_t> shape, const T* data) {
    const std::uint64_t n = numel(name, shape);
    std::vector<unsigned char> bytes(static_cast<std::size_t>(n * sizeof(T)));
    if (n) std::memcpy(bytes.data(), data, bytes.size());
    add_raw(name, dtype_of<T>(), std::move(shape), std::move(bytes));
  }
  /// Adds a tensor of @p shape stored as floating @p dtype, converting @p data (e.g. double → BF16).
  template <class T>
  void add_as(const std::string& name, Dtype dtype, std::vector<std::int64_t> shape, const T* data) {
    HEADALIGN_CHECK(is_float(dtype), "add_as: '" << name << "' cannot be stored as " << dtype_name(dtype));
    const std::uint64_t n = numel(name, shape);
    std::vector<unsigned char> bytes(static_cast<std::size_t>(n * dtype_size(dtype)));
    detail::convert_to(dtype, data, static_cast<std::size_t>(n), bytes.data());
    add_raw(name, dtype, std::move(shape), std::move(bytes));
  }

  /// Adds a tensor from its stored bytes (bit-exact copy; any dtype).
  void add_raw(const std::string& name, Dtype dtype, std::vector<std::int64_t> shape,
               std::vector<unsigned char> bytes) {
    HEADALIGN_CHECK(!name.empty() && name != "__metadata__", "invalid tensor name '" << name << "'");
    HEADALIGN_CHECK(entries_.count(name) == 0, "tensor '" << name << "' added twice");
    const std::uint64_t n = numel(name, shape);
    HEADALIGN_CHECK(bytes.size() == n * dtype_size(dtype), "tensor '" << name << "': " << bytes.size()
                                                                      << " bytes for " << n << " elements of "
                                                                      << dtype_name(dtype));
    entries_.emplace(name, Entry{dtype, std::move(shape), std::move(bytes)});
  }

  /// Total bytes of tensor data added so far.
  std::uint64_t data_bytes() const {
    std::uint64_t n = 0;
    for (const auto& kv : entries_) n += kv.second.bytes.size();
    return n;
  }

  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

  /// Writes the file. @throws io_error when it cannot be written (nothing is left behind then).
  void write(const std::string& path) const {
    if (!detail::little_endian())
      ::headalign::detail::throw_io_error("safetensors I/O needs a little-endian host");
    nlohmann::json header = nlohmann::json::object();
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    std::uint64_t offset = 0;
    for (const auto& kv : entries_) {
      header[kv.first] = {{"dtype", dtype_name(kv.second.dtype)},
                          {"shape", kv.second.shape},
                          {"data_offsets", {offset, offset + kv.second.bytes.size()}}};
      offset += kv.second.bytes.size();
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');  // align the data buffer to 8 bytes
    detail::write_atomically(path, [&](std::FILE* f) {
      unsigned char len[8];
      std::uint64_t n = text.size();
      for (int i = 0; i < 8; ++i, n >>= 8) len[i] = static_cast<unsigned char>(n & 0xff);
      bool ok = std::fwrite(len, 1, 8, f) == 8 && std::fwrite(text.data(), 1, text.size(), f) == text.size();
      for (const auto& kv : entries_)
        ok =
            ok && std::fwrite(kv.second.bytes.data(), 1, kv.second.bytes.size(), f) == kv.second.bytes.size();
      return ok;
    });
  }

 private:
  static std::uint64_t numel(const std::string& name, const std::vector<std::int64_t>& shape) {
    std::uint64_t n = 1;
    for (auto s : shape) {
      HEADALIGN_CHECK(s >= 0, "negative dimension " << s << " in the shape of '" << name << "'");
      n *= static_cast<std::uint64_t>(s);
    }
    return n;
  }

  struct Entry {
    Dtype dtype;
    std::vector<std::int64_t> shape;
    std::vector<unsigned char> bytes;
  };
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace headalign::io

#endif  // HEADALIGN_IO_SAFETENSORS_HPP

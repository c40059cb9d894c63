/// @file io/gram_file.hpp
/// @brief Calibration statistics on disk: one HeadGram per file, or a Gram set (the key and value
/// Grams and query moments of every layer), both as safetensors with a `format` in the metadata.
///
/// Calibrate once, convert many times: a Gram set written here is what `headalign-convert
/// --calibration` and io::convert_checkpoint() read. Every read is validated: metadata present
/// and consistent with the tensor's shape, sizes bounded, values finite, matrices symmetric with a
/// non-negative diagonal and within the Cauchy–Schwarz bound (HeadGram::from_gram()). Writes are
/// atomic (a temporary file, then a rename).
///
/// Formats (metadata `version` = "1"):
/// - `headalign.HeadGram`: tensor `gram` [H·d, H·d] and metadata `num_heads`, `head_dim`,
///   `tokens`, `normalize_rows` ("0" or "1");
/// - `headalign.HeadGramSet`: tensors named freely (e.g. `layers.0.key`), each Gram with the same
///   four metadata fields prefixed by its name (`layers.0.key.num_heads`, ...), each set of
///   moments a tensor [H, d, d] with `<name>.num_heads`, `.head_dim`, `.tokens` and
///   `.kind` = "moments".
#ifndef HEADALIGN_IO_GRAM_FILE_HPP
#define HEADALIGN_IO_GRAM_FILE_HPP

#include "../gram.hpp"
#include "safetensors.hpp"

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace headalign::io {

/// Metadata `format` of a file holding one HeadGram.
inline const std::string gram_format = "headalign.HeadGram";
/// Metadata `format` of a Gram set.
inline const std::string gram_set_format = "headalign.HeadGramSet";

namespace detail {

/// The metadata value @p key of @p r; io_error "<where> lacks metadata '<key>'" when it is missing.
inline const std::string& metadata_field(const SafetensorsReader& r, const std::string& key,
                                         const std::string& where) {
  auto it = r.metadata().find(key);
  if (it == r.metadata().end()) ::headalign::detail::throw_io_error(where + " lacks metadata '" + key + "'");
  return it->second;
}

/// The metadata value @p key of @p r as a non-negative integer (at most 18 digits), or io_error.
inline Index metadata_index(const SafetensorsReader& r, const std::string& key, const std::string& where) {
  const std::string& s = metadata_field(r, key, where);
  if (s.empty() || s.size() > 18 || s.find_first_not_of("0123456789") != std::string::npos)
    ::headalign::detail::throw_io_error(where + ": metadata '" + key + "' = '" + s +
                                        "' is not a non-negative integer");
  return static_cast<Index>(std::stoll(s));
}

/// Whether @p m is symmetric with a non-negative diagonal and finite entries.
template <class S>
bool finite_symmetric(const Matrix<S>& m) {
  return ::headalign::detail::all_finite(m) && m == m.transpose() && !(m.diagonal().array() < S(0)).any();
}

}  // namespace detail

/// @brief Throws io_error unless @p r's metadata says format = @p format, version = 1.
inline void check_format(const SafetensorsReader& r, const std::string& format) {
  const auto& meta = r.metadata();
  auto it = meta.find("format");
  if (it == meta.end() || it->second != format)
    ::headalign::detail::throw_io_error("'" + r.path() + "' is not a " + format +
                                        " file (metadata 'format' is missing or differs)");
  auto v = meta.find("version");
  if (v == meta.end() || v->second != "1")
    ::headalign::detail::throw_io_error("'" + r.path() + "' has unsupported version " +
                                        (v == meta.end() ? std::string("(none)") : v->second));
}

/// @brief Adds @p g to @p w as tensor @p name (or "gram" when empty) [H·d, H·d] with metadata
/// `<name>.num_heads`, `.head_dim`, `.tokens`, `.normalize_rows` (no prefix when empty).
template <class S>
void write_gram(SafetensorsWriter& w, const std::string& name, const HeadGram<S>& g) {
  const Matrix<S> full = g.gram();
  // Column-major symmetric == row-major: the buffer is already the row-major tensor.
  w.add(name.empty() ? std::string("gram") : name, {g.dim(), g.dim()}, full.data());
  const std::string p = name.empty() ? std::string() : name + ".";
  w.set_metadata(p + "num_heads", std::to_string(g.num_heads()));
  w.set_metadata(p + "head_dim", std::to_string(g.head_dim()));
  w.set_metadata(p + "tokens", std::to_string(g.tokens()));
  w.set_metadata(p + "normalize_rows", g.normalize_rows() ? "1" : "0");
}

/// @brief Reads the Gram named @p name (as written by write_gram()) from an open file, in scalar
/// S whatever the file's float type.
/// @throws io_error when it is missing, inconsistent, non-symmetric, holds NaN/Inf or is not
///         the Gram of real rows
template <class S>
HeadGram<S> read_gram(SafetensorsReader& r, const std::string& name) {
  using ::headalign::detail::throw_io_error;
  const std::string tensor = name.empty() ? std::string("gram") : name;
  const std::string p = name.empty() ? std::string() : name + ".";
  const std::string where = "HeadGram file '" + r.path() + "'";
  const Index h = detail::metadata_index(r, p + "num_heads", where),
              d = detail::metadata_index(r, p + "head_dim", where),
              n = detail::metadata_index(r, p + "tokens", where);
  const std::string& norm = detail::metadata_field(r, p + "normalize_rows", where);
  if (norm != "0" && norm != "1") throw_io_error(where + ": " + p + "normalize_rows must be 0 or 1");
  if (h <= 0 || d <= 0 || h > (1 << 16) || d > (1 << 16) || h * d > (1 << 16))
    throw_io_error(where + ": implausible num_heads " + std::to_string(h) + " / head_dim " +
                   std::to_string(d));
  if (!r.contains(tensor)) throw_io_error(where + " has no tensor '" + tensor + "'");
  const auto& info = r.info(tensor);
  if (info.shape.size() != 2 || info.shape[0] != h * d || info.shape[1] != h * d)
    throw_io_error(where + ": tensor '" + tensor + "' is not [" + std::to_string(h * d) + ", " +
                   std::to_string(h * d) + "]");
  Matrix<S> full(h * d, h * d);
  r.read(tensor, 0, static_cast<std::uint64_t>(full.size()), full.data());
  if (!::headalign::detail::all_finite(full)) throw_io_error(where + ": '" + tensor + "' holds NaN or Inf");
  if (full != full.transpose()) throw_io_error(where + ": '" + tensor + "' is not symmetric");
  if ((full.diagonal().array() < S(0)).any())
    throw_io_error(where + ": '" + tensor + "' has a negative diagonal");
  try {
    return HeadGram<S>::from_gram(std::move(full), h, d, n, norm == "1");
  } catch (const ::headalign::invalid_argument& e) {
    throw_io_error(where + ": '" + tensor + "': " + ::headalign::message_of(e));
  }
}

/// @brief Adds the moments to @p w as tensor @p name [H, d, d] with metadata `<name>.num_heads`,
/// `.head_dim`, `.tokens` and `.kind` = "moments".
template <class S>
void write_moments(SafetensorsWriter& w, const std::string& name, const HeadMoments<S>& m) {
  HEADALIGN_CHECK(!name.empty(), "write_moments: the tensor needs a name");
  const Index h = m.num_heads(), d = m.head_dim();
  std::vector<S> data;
  data.reserve(static_cast<std::size_t>(h * d * d));
  for (Index i = 0; i < h; ++i) {
    const Matrix<S> b = m.block(i);  // symmetric: column-major == row-major
    data.insert(data.end(), b.data(), b.data() + b.size());
  }
  w.add(name, {h, d, d}, data.data());
  w.set_metadata(name + ".num_heads", std::to_string(h));
  w.set_metadata(name + ".head_dim", std::to_string(d));
  w.set_metadata(name + ".tokens", std::to_string(m.tokens()));
  w.set_metadata(name + ".kind", "moments");
}

/// @brief Reads moments written by write_moments() from an open file.
/// @throws io_error when they are missing, inconsistent, non-symmetric, hold NaN/Inf or a
///         negative diagonal, or are not the moments of real rows
template <class S>
HeadMoments<S> read_moments(SafetensorsReader& r, const std::string& name) {
  using ::headalign::detail::throw_io_error;
  const std::string where = "'" + r.path() + "'";
  if (detail::metadata_field(r, name + ".kind", where) != "moments")
    throw_io_error(where + ": '" + name + "' is not a HeadMoments tensor");
  const Index h = detail::metadata_index(r, name + ".num_heads", where),
              d = detail::metadata_index(r, name + ".head_dim", where),
              n = detail::metadata_index(r, name + ".tokens", where);
  if (h <= 0 || d <= 0 || h > (1 << 16) || d > (1 << 12))
    throw_io_error(where + ": implausible num_heads " + std::to_string(h) + " / head_dim " +
                   std::to_string(d));
  if (!r.contains(name)) throw_io_error(where + " has no tensor '" + name + "'");
  if (r.info(name).shape != std::vector<std::int64_t>{h, d, d})
    throw_io_error(where + ": tensor '" + name + "' is not [" + std::to_string(h) + ", " + std::to_string(d) +
                   ", " + std::to_string(d) + "]");
  std::vector<Matrix<S>> blocks(static_cast<std::size_t>(h), Matrix<S>(d, d));
  for (Index i = 0; i < h; ++i) {
    Matrix<S>& b = blocks[static_cast<std::size_t>(i)];
    r.read(name, static_cast<std::uint64_t>(i * d * d), static_cast<std::uint64_t>(d * d), b.data());
    if (!detail::finite_symmetric(b))
      throw_io_error(where + ": head " + std::to_string(i) + " of '" + name +
                     "' is not a finite symmetric matrix with a non-negative diagonal");
  }
  try {
    return HeadMoments<S>::from_moments(std::move(blocks), n);
  } catch (const ::headalign::invalid_argument& e) {
    throw_io_error(where + ": '" + name + "': " + ::headalign::message_of(e));
  }
}

/// @brief Writes @p g as a `headalign.HeadGram` file, atomically.
/// @throws io_error when the file cannot be written
template <class S>
void save_gram(const std::string& path, const HeadGram<S>& g) {
  SafetensorsWriter w;
  write_gram(w, "", g);
  w.set_metadata("format", gram_format);
  w.set_metadata("version", "1");
  w.write(path);
}

/// @brief Reads a file written by save_gram(); an F32 file loads into a double accumulator and
/// vice versa.
/// @throws io_error when the file is malformed, inconsistent, non-symmetric or holds NaN/Inf
template <class S>
HeadGram<S> load_gram(const std::string& path) {
  SafetensorsReader r(path);
  check_format(r, gram_format);
  return read_gram<S>(r, "");
}

/// @brief Saves several named Grams (e.g. "layers.0.key", "layers.0.value", …) and, optionally,
/// named query moments ("layers.0.query") in one Gram set, atomically.
/// @throws invalid_argument for an unnamed or null entry; io_error when the file cannot be written
template <class S>
void save_grams(const std::string& path, const std::vector<std::pair<std::string, const HeadGram<S>*>>& grams,
                const std::vector<std::pair<std::string, const HeadMoments<S>*>>& moments = {}) {
  SafetensorsWriter w;
  for (const auto& kv : grams) {
    HEADALIGN_CHECK(!kv.first.empty() && kv.second != nullptr, "save_grams: every Gram needs a name");
    write_gram(w, kv.first, *kv.second);
  }
  for (const auto& kv : moments) {
    HEADALIGN_CHECK(!kv.first.empty() && kv.second != nullptr,
                    "save_grams: every set of moments needs a name");
    write_moments(w, kv.first, *kv.second);
  }
  w.set_metadata("format", gram_set_format);
  w.set_metadata("version", "1");
  w.write(path);
}

/// @brief Whether @p path is a Gram set written by save_grams() (reads the header only).
inline bool is_gram_set(const std::string& path) {
  SafetensorsReader r(path);
  auto it = r.metadata().find("format");
  return it != r.metadata().end() && it->second == gram_set_format;
}

/// @brief Loads the Gram @p name from a Gram set.
/// @throws io_error when the file is not a Gram set or lacks @p name
template <class S>
HeadGram<S> load_gram(const std::string& path, const std::string& name) {
  SafetensorsReader r(path);
  check_format(r, gram_set_format);
  return read_gram<S>(r, name);
}

/// @brief Loads the query moments @p name from a Gram set.
/// @throws io_error when the file is not a Gram set or lacks @p name
template <class S>
HeadMoments<S> load_moments(const std::string& path, const std::string& name) {
  SafetensorsReader r(path);
  check_format(r, gram_set_format);
  return read_moments<S>(r, name);
}

}  // namespace headalign::io

#endif  // HEADALIGN_IO_GRAM_FILE_HPP

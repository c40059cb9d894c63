// Shared helpers of the Python extension headalign._core: dtype dispatch, zero-copy views of
// NumPy / PyTorch arrays, NumPy results, and the HeadGram holder.
#ifndef HEADALIGN_PYTHON_BINDINGS_HPP
#define HEADALIGN_PYTHON_BINDINGS_HPP

#include <headalign/headalign.hpp>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <Eigen/Core>

#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace headalign::python {

namespace nb = nanobind;

/// Raises ValueError (headalign::invalid_argument, translated by nanobind) with @p message.
[[noreturn]] inline void throw_value_error(const std::string& message) {
  throw ::headalign::invalid_argument("headalign: " + message);
}

/// Any CPU array that NumPy's buffer protocol or DLPack (PyTorch, JAX, CuPy on host, ...) exports:
/// the binding reads it in place, whatever its dtype, shape and strides.
using Array = nb::ndarray<nb::ro, nb::device::cpu>;

enum class Dtype { F16, BF16, F32, F64 };

inline const char* dtype_name(Dtype t) {
  switch (t) {
    case Dtype::F16:
      return "float16";
    case Dtype::BF16:
      return "bfloat16";
    case Dtype::F32:
      return "float32";
    case Dtype::F64:
      return "float64";
  }
  return "?";
}

/// The floating-point type of @p a; other dtypes are a ValueError naming @p what.
inline Dtype dtype_of(const Array& a, const char* what) {
  const nb::dlpack::dtype t = a.dtype();
  if (t.lanes == 1) {
    if (t.code == static_cast<std::uint8_t>(nb::dlpack::dtype_code::Float)) {
      if (t.bits == 16) return Dtype::F16;
      if (t.bits == 32) return Dtype::F32;
      if (t.bits == 64) return Dtype::F64;
    }
    if (t.code == static_cast<std::uint8_t>(nb::dlpack::dtype_code::Bfloat) && t.bits == 16)
      return Dtype::BF16;
  }
  throw_value_error(std::string(what) +
                    " must hold float16, bfloat16, float32 or float64 values (got dtype code " +
                    std::to_string(int(t.code)) + ", " + std::to_string(int(t.bits)) + " bits)");
}

template <class T>
struct Tag {
  using type = T;
};

/// Calls f(Tag<T>{}) with T the C++ type of dtype @p t.
template <class F>
decltype(auto) with_element(Dtype t, F&& f) {
  switch (t) {
    case Dtype::F16:
      return f(Tag<Eigen::half>{});
    case Dtype::BF16:
      return f(Tag<Eigen::bfloat16>{});
    case Dtype::F32:
      return f(Tag<float>{});
    case Dtype::F64:
      break;
  }
  return f(Tag<double>{});
}

/// Calls f(Tag<S>{}) with S float or double: the scalar a result of @p t is computed in
/// (half-precision inputs are computed in float).
template <class F>
decltype(auto) with_scalar(Dtype t, F&& f) {
  if (t == Dtype::F64) return f(Tag<double>{});
  return f(Tag<float>{});
}

/// A strided, read-only view of a 2-D array (strides in elements; any sign).
template <class T>
using StridedMap = Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>, 0,
                              Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>>;

inline void check_ndim(const Array& a, std::size_t ndim, const char* what) {
  if (a.ndim() != ndim)
    throw_value_error(std::string(what) + " must be a " + std::to_string(ndim) + "-D array, got " +
                      std::to_string(a.ndim()) + "-D");
}

/// The shape of @p a as text, e.g. "(4, 8)".
inline std::string shape_text(const Array& a) {
  std::string s = "(";
  for (std::size_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

/// A zero-copy view of the 2-D array @p a of element type T.
template <class T>
StridedMap<T> view2(const Array& a) {
  return StridedMap<T>(static_cast<const T*>(a.data()), static_cast<Index>(a.shape(0)),
                       static_cast<Index>(a.shape(1)),
                       Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>(a.stride(1), a.stride(0)));
}

/// A 2-D array as an owned Eigen matrix of type M (a copy, converted to M's scalar and storage order).
template <class M>
M converted(const Array& a, const char* what) {
  check_ndim(a, 2, what);
  return with_element(dtype_of(a, what), [&](auto tag) -> M {
    using T = typename decltype(tag)::type;
    return view2<T>(a).template cast<typename M::Scalar>();
  });
}

/// A 2-D array as an owned column-major matrix of scalar S.
template <class S>
Matrix<S> matrix(const Array& a, const char* what) {
  return converted<Matrix<S>>(a, what);
}

/// A 1-D or 2-D array as an owned column-major matrix of scalar S (a vector is one column).
template <class S>
Matrix<S> matrix_1d_or_2d(const Array& a, const char* what) {
  if (a.ndim() != 1 && a.ndim() != 2)
    throw_value_error(std::string(what) + " must be a 1-D or 2-D array, got " + std::to_string(a.ndim()) +
                      "-D");
  return with_element(dtype_of(a, what), [&](auto tag) -> Matrix<S> {
    using T = typename decltype(tag)::type;
    const Index rows = static_cast<Index>(a.shape(0)),
                cols = a.ndim() == 2 ? static_cast<Index>(a.shape(1)) : 1;
    const Index inner = a.stride(0), outer = a.ndim() == 2 ? a.stride(1) : rows;
    return StridedMap<T>(static_cast<const T*>(a.data()), rows, cols,
                         Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>(outer, inner))
        .template cast<S>();
  });
}

/// A 1-D array as a vector of scalar S.
template <class S>
Vector<S> vector(const Array& a, const char* what) {
  check_ndim(a, 1, what);
  return matrix_1d_or_2d<S>(a, what).col(0);
}

/// A 3-D array [k, d, d] as k matrices of scalar S (e.g. rotations).
template <class S>
std::vector<Matrix<S>> matrices(const Array& a, const char* what) {
  check_ndim(a, 3, what);
  return with_element(dtype_of(a, what), [&](auto tag) {
    using T = typename decltype(tag)::type;
    std::vector<Matrix<S>> out;
    const T* base = static_cast<const T*>(a.data());
    for (std::size_t t = 0; t < a.shape(0); ++t)
      out.push_back(StridedMap<T>(base + static_cast<std::ptrdiff_t>(t) * a.stride(0),
                                  static_cast<Index>(a.shape(1)), static_cast<Index>(a.shape(2)),
                                  Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>(a.stride(2), a.stride(1)))
                        .template cast<S>());
    return out;
  });
}

/// A NumPy array that takes over @p m (no copy): shape (rows, cols), Fortran order.
template <class S>
nb::object to_numpy(Matrix<S>&& m) {
  auto* owned = new Matrix<S>(std::move(m));
  nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<Matrix<S>*>(p); });
  const std::size_t rows = static_cast<std::size_t>(owned->rows()),
                    cols = static_cast<std::size_t>(owned->cols());
  return nb::ndarray<nb::numpy, S>(owned->data(), {rows, cols}, owner, {1, static_cast<std::int64_t>(rows)})
      .cast();
}

/// A 1-D NumPy array that takes over @p v.
template <class S>
nb::object to_numpy(Vector<S>&& v) {
  auto* owned = new Vector<S>(std::move(v));
  nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<Vector<S>*>(p); });
  return nb::ndarray<nb::numpy, S>(owned->data(), {static_cast<std::size_t>(owned->size())}, owner).cast();
}

/// k equally sized matrices as one C-ordered NumPy array [k, rows, cols] (a copy; [0, 0, 0] for none).
template <class S>
nb::object stack(const std::vector<Matrix<S>>& ms) {
  const std::size_t k = ms.size(), r = k ? static_cast<std::size_t>(ms.front().rows()) : 0,
                    c = k ? static_cast<std::size_t>(ms.front().cols()) : 0;
  auto* owned = new std::vector<S>(k * r * c);
  nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<std::vector<S>*>(p); });
  for (std::size_t t = 0; t < k; ++t)
    Eigen::Map<Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
        owned->data() + t * r * c, static_cast<Index>(r), static_cast<Index>(c)) = ms[t];
  return nb::ndarray<nb::numpy, S>(owned->data(), {k, r, c}, owner).cast();
}

/// `numpy.dtype(name)`.
inline nb::object numpy_dtype(const char* name) { return nb::module_::import_("numpy").attr("dtype")(name); }

/// Reads a dtype argument: a NumPy / PyTorch dtype or scalar type, or a name ("float32", "float64",
/// "float", "double", "single"); true for double, false for float.
inline bool is_double(nb::handle dtype) {
  std::string name;
  if (nb::isinstance<nb::str>(dtype)) {
    name = nb::cast<std::string>(dtype);
  } else if (nb::hasattr(dtype, "__name__")) {  // np.float32, builtins.float
    name = nb::cast<std::string>(dtype.attr("__name__"));
  } else {  // np.dtype('float32'), torch.float64
    name = nb::cast<std::string>(nb::str(dtype));
    if (name.rfind("torch.", 0) == 0) name = name.substr(6);
  }
  if (name == "float64" || name == "double" || name == "float" || name == "f8" || name == "<f8") return true;
  if (name == "float32" || name == "single" || name == "f4" || name == "<f4") return false;
  throw_value_error("dtype must be float32 or float64, got '" + name + "'");
}

/// A T<float> or T<double> (HeadGram, AttentionWeights), guarded by a mutex so that threads
/// (which run with the GIL released) never use one object at the same time.
template <template <class> class T>
struct Guarded {
  std::variant<T<float>, T<double>> value;
  std::unique_ptr<std::mutex> lock = std::make_unique<std::mutex>();

  template <class S>
  explicit Guarded(T<S>&& v) : value(std::move(v)) {}

  bool is_double() const { return value.index() == 1; }

  /// f(T<S>&) under the lock.
  template <class F>
  decltype(auto) visit(F&& f) {
    std::lock_guard<std::mutex> guard(*lock);
    return std::visit(std::forward<F>(f), value);
  }
};

using Gram = Guarded<HeadGram>;
using Moments = Guarded<HeadMoments>;

/// f() with the GIL released (f must not touch Python objects).
template <class F>
decltype(auto) without_gil(F&& f) {
  nb::gil_scoped_release release;
  return f();
}

/// An optional 1-D array as a vector of scalar S (empty when absent).
template <class S>
Vector<S> optional_vector(const std::optional<Array>& a, const char* what) {
  return a ? vector<S>(*a, what) : Vector<S>();
}

/// The same visit over two guarded objects of one scalar type (ValueError otherwise); locks both
/// in address order.
template <template <class> class T, class F>
decltype(auto) visit2(Guarded<T>& a, Guarded<T>& b, const char* what, F&& f) {
  if (a.is_double() != b.is_double())
    throw_value_error(std::string(what) + ": the two arguments have different dtypes (float32 and float64)");
  std::unique_lock<std::mutex> first, second;
  if (&a == &b) {
    first = std::unique_lock<std::mutex>(*a.lock);
  } else {
    Guarded<T>* lo = std::less<Guarded<T>*>()(&a, &b) ? &a : &b;
    Guarded<T>* hi = lo == &a ? &b : &a;
    first = std::unique_lock<std::mutex>(*lo->lock);
    second = std::unique_lock<std::mutex>(*hi->lock);
  }
  if (a.is_double()) return f(std::get<1>(a.value), std::get<1>(b.value));
  return f(std::get<0>(a.value), std::get<0>(b.value));
}

/// Procrustes options from the Python keyword.
inline ProcrustesOptions polar_options(PolarMethod method) {
  ProcrustesOptions o;
  o.method = method;
  return o;
}

/// GpaResult for Python: the rotations stacked [k, d, d].
struct PyGpaResult {
  nb::object rotations;
  int iterations = 0;
  bool converged = false;
  double objective = 0;
};

template <class S>
PyGpaResult to_python(const GpaResult<S>& r) {
  return {stack(r.rotations), r.iterations, r.converged, static_cast<double>(r.objective)};
}

template <class S>
std::vector<PyGpaResult> to_python(const std::vector<GpaResult<S>>& results) {
  std::vector<PyGpaResult> out;
  for (const auto& r : results) out.push_back(to_python(r));
  return out;
}

void bind_pipeline(nb::module_& m);
void bind_checkpoint(nb::module_& m);

}  // namespace headalign::python

#endif  // HEADALIGN_PYTHON_BINDINGS_HPP

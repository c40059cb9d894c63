// headalign._core: Procrustes solvers, Gram statistics, similarity, grouping, GPA and the
// hard-concrete gates (pipeline.cpp binds the layer transforms, merging and conversion).
#include "bindings.hpp"

#include <headalign/io/gram_file.hpp>

#include <nanobind/stl/pair.h>
#include <nanobind/stl/tuple.h>

#include <cstdint>

namespace headalign::python {
namespace {

using namespace nb::literals;

// ---------------------------------------------------------------------------------------------
// Procrustes

nb::object procrustes_py(const Array& m, Alignment alignment, const RopeSpec& rope, PolarMethod method) {
  check_ndim(m, 2, "procrustes: M");
  return with_scalar(dtype_of(m, "procrustes: M"), [&](auto tag) -> nb::object {
    using S = typename decltype(tag)::type;
    Matrix<S> mm = matrix<S>(m, "procrustes: M");
    auto r = without_gil([&] { return procrustes(mm, alignment, rope, polar_options(method)); });
    return nb::make_tuple(to_numpy(std::move(r.rotation)), static_cast<double>(r.score));
  });
}

double procrustes_score_py(const Array& m, Alignment alignment, const RopeSpec& rope, PolarMethod method) {
  check_ndim(m, 2, "procrustes_score: M");
  return with_scalar(dtype_of(m, "procrustes_score: M"), [&](auto tag) -> double {
    using S = typename decltype(tag)::type;
    const Matrix<S> mm = matrix<S>(m, "procrustes_score: M");
    nb::gil_scoped_release release;
    return static_cast<double>(procrustes_score(mm, alignment, rope, polar_options(method)));
  });
}

nb::object orthogonal_procrustes_py(const Array& a, const Array& b, PolarMethod method) {
  check_ndim(a, 2, "orthogonal_procrustes: A");
  check_ndim(b, 2, "orthogonal_procrustes: B");
  const Dtype ta = dtype_of(a, "orthogonal_procrustes: A"), tb = dtype_of(b, "orthogonal_procrustes: B");
  // Mixed precisions are solved in double, as NumPy would promote them.
  const Dtype t = (ta == Dtype::F64 || tb == Dtype::F64) ? Dtype::F64 : Dtype::F32;
  return with_scalar(t, [&](auto tag) -> nb::object {
    using S = typename decltype(tag)::type;
    const Matrix<S> ma = matrix<S>(a, "orthogonal_procrustes: A"),
                    mb = matrix<S>(b, "orthogonal_procrustes: B");
    auto r = without_gil([&] { return orthogonal_procrustes(ma, mb, polar_options(method)); });
    return nb::make_tuple(to_numpy(std::move(r.rotation)), static_cast<double>(r.score));
  });
}

// ---------------------------------------------------------------------------------------------
// HeadGram

// Adds one [rows, D] block given by its first element and strides (in elements).
template <class T, class G>
void add_block(G& g, const T* p, Index rows, Index width, std::int64_t row_stride, std::int64_t col_stride) {
  if (rows == 0) return;
  if (col_stride == 1 && (rows == 1 || row_stride >= width)) {  // C order: SYRK reads it in place
    g.add(p, rows, rows == 1 ? width : static_cast<Index>(row_stride));
    return;
  }
  if (row_stride == 1 && (width == 1 || col_stride >= rows)) {  // Fortran order: in place as well
    using ColMap =
        Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>, 0, Eigen::OuterStride<>>;
    g.add(ColMap(p, rows, width, Eigen::OuterStride<>(width == 1 ? rows : static_cast<Index>(col_stride))));
    return;
  }
  // Any other layout (negative, zero or overlapping strides): one contiguous copy, then one add.
  using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const RowMatrix copy =
      StridedMap<T>(p, rows, width, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>(col_stride, row_stride));
  g.add(copy);
}

// Token rows [..., num_heads·head_dim] into a HeadGram or HeadMoments (@p what names the argument).
template <template <class> class Acc>
void add_rows(Guarded<Acc>& self, const Array& x, const char* what) {
  if (x.ndim() == 0)
    throw_value_error(std::string(what) + " must have at least one dimension (tokens × num_heads·head_dim)");
  const std::size_t nd = x.ndim();
  const Index width = static_cast<Index>(x.shape(nd - 1));
  const Index dim = self.visit([](auto& g) { return g.num_heads() * g.head_dim(); });
  if (width != dim)
    throw_value_error(std::string(what) + " have shape " + shape_text(x) +
                      ": the last axis must be num_heads · head_dim = " + std::to_string(dim));
  // Leading axes fold into the token axis when they are evenly strided (any contiguous batch).
  Index rows = 1;
  for (std::size_t i = 0; i + 1 < nd; ++i) rows *= static_cast<Index>(x.shape(i));
  std::int64_t row_stride = nd >= 2 ? x.stride(nd - 2) : width;
  bool foldable = true;
  for (std::size_t i = 0; i + 2 < nd; ++i) {
    std::int64_t inner =
        1;  // the stride one step of axis i must have: the product of the axes after it up to nd-2
    for (std::size_t j = i + 1; j + 1 < nd; ++j) inner *= static_cast<std::int64_t>(x.shape(j));
    if (x.shape(i) > 1 && x.stride(i) != inner * row_stride) foldable = false;
  }
  const std::int64_t col_stride = x.stride(nd - 1);
  with_element(dtype_of(x, what), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* p = static_cast<const T*>(x.data());
    nb::gil_scoped_release release;
    self.visit([&](auto& g) {
      if (foldable) {
        add_block(g, p, rows, width, row_stride, col_stride);
        return;
      }
      // Unevenly strided leading axes: gather the token rows into one C-ordered copy.
      Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> copy(rows, width);
      std::vector<std::size_t> idx(nd - 1, 0);
      for (Index r = 0; r < rows; ++r) {
        std::int64_t offset = 0;
        for (std::size_t i = 0; i + 1 < nd; ++i) offset += static_cast<std::int64_t>(idx[i]) * x.stride(i);
        for (Index c = 0; c < width; ++c) copy(r, c) = p[offset + c * col_stride];
        for (std::size_t i = nd - 1; i-- > 0;) {
          if (++idx[i] < x.shape(i)) break;
          idx[i] = 0;
        }
      }
      g.add(copy);
    });
  });
}

void gram_add(Gram& self, const Array& x) { add_rows(self, x, "HeadGram.add: activations"); }

Gram gram_new(Index num_heads, Index head_dim, bool normalize_rows, nb::handle dtype, Index chunk_rows) {
  if (is_double(dtype)) return Gram(HeadGram<double>(num_heads, head_dim, normalize_rows, chunk_rows));
  return Gram(HeadGram<float>(num_heads, head_dim, normalize_rows, chunk_rows));
}

Gram gram_load(const std::string& path, nb::handle dtype) {
  bool dbl;
  if (dtype.is_none()) {
    io::SafetensorsReader r(path);
    dbl = r.contains("gram") && r.info("gram").dtype == io::Dtype::F64;
  } else {
    dbl = is_double(dtype);
  }
  nb::gil_scoped_release release;
  if (dbl) return Gram(io::load_gram<double>(path));
  return Gram(io::load_gram<float>(path));
}

Gram gram_from_activations(const Array& acts, bool normalize_rows, nb::handle dtype) {
  check_ndim(acts, 3, "HeadGram.from_activations: activations [num_heads, tokens, head_dim]");
  const Index h = static_cast<Index>(acts.shape(0)), n = static_cast<Index>(acts.shape(1)),
              d = static_cast<Index>(acts.shape(2));
  const bool dbl = dtype.is_none() ? dtype_of(acts, "activations") == Dtype::F64 : is_double(dtype);
  return with_element(dtype_of(acts, "HeadGram.from_activations: activations"), [&](auto tag) -> Gram {
    using T = typename decltype(tag)::type;
    const T* p = static_cast<const T*>(acts.data());
    std::vector<T> contiguous;
    const bool c_order = acts.stride(2) == 1 && acts.stride(1) == d && acts.stride(0) == n * d;
    if (!c_order && h * n * d > 0) {  // the C++ call reads [H, n, d] in C order: copy other layouts once
      contiguous.resize(static_cast<std::size_t>(h * n * d));
      for (Index a = 0; a < h; ++a)
        for (Index t = 0; t < n; ++t)
          for (Index c = 0; c < d; ++c)
            contiguous[static_cast<std::size_t>((a * n + t) * d + c)] =
                p[a * acts.stride(0) + t * acts.stride(1) + c * acts.stride(2)];
      p = contiguous.data();
    }
    nb::gil_scoped_release release;
    if (dbl) return Gram(HeadGram<double>::from_activations(p, h, n, d, normalize_rows));
    return Gram(HeadGram<float>::from_activations(p, h, n, d, normalize_rows));
  });
}

// Data-free statistics of a projection's weights [num_heads·head_dim, hidden] (Acc::from_weights),
// in dtype, else in the weights' precision.
template <template <class> class Acc>
Guarded<Acc> from_weights_py(const Array& w, Index num_heads, Index head_dim, nb::handle dtype,
                             const std::string& what) {
  check_ndim(w, 2, (what + ": weights [num_heads·head_dim, hidden]").c_str());
  const Dtype t = dtype_of(w, (what + ": weights").c_str());
  const bool dbl = dtype.is_none() ? t == Dtype::F64 : is_double(dtype);
  return with_element(t, [&](auto tag) -> Guarded<Acc> {
    using T = typename decltype(tag)::type;
    const auto view = view2<T>(w);
    nb::gil_scoped_release release;
    if (dbl) return Guarded<Acc>(Acc<double>::from_weights(view, num_heads, head_dim));
    return Guarded<Acc>(Acc<float>::from_weights(view, num_heads, head_dim));
  });
}

Gram gram_from_weights(const Array& w, Index num_heads, Index head_dim, nb::handle dtype) {
  return from_weights_py<HeadGram>(w, num_heads, head_dim, dtype, "HeadGram.from_weights");
}

// ---------------------------------------------------------------------------------------------
// Similarity, grouping, GPA

nb::object similarity_py(Gram& g, Alignment alignment, Metric metric, const RopeSpec& rope,
                         PolarMethod method) {
  return g.visit([&](auto& gram) -> nb::object {
    using S = typename std::decay_t<decltype(gram)>::Scalar;
    auto out =
        without_gil([&] { return similarity_matrix(gram, alignment, metric, rope, polar_options(method)); });
    return to_numpy(std::move(out));
  });
}

nb::object joint_similarity_py(Gram& keys, Gram& values, Alignment key_alignment, Alignment value_alignment,
                               Metric metric, const RopeSpec& rope, PolarMethod method) {
  return visit2(keys, values, "joint_similarity", [&](auto& k, auto& v) -> nb::object {
    using S = typename std::decay_t<decltype(k)>::Scalar;
    auto out = without_gil([&] {
      return joint_similarity(k, key_alignment, v, value_alignment, metric, rope, polar_options(method));
    });
    return to_numpy(std::move(out));
  });
}

Grouping group_heads_py(const Array& similarity, Index num_groups, GroupingOptions::Method method,
                        int restarts, int iterations, int steps, int restart_after, std::uint64_t seed,
                        int patience, double exact_max_partitions) {
  check_ndim(similarity, 2, "group_heads: similarity");
  GroupingOptions o;
  o.method = method;
  o.restarts = restarts;
  o.iterations = iterations;
  o.steps = steps;
  o.restart_after = restart_after;
  o.seed = seed;
  o.patience = patience;
  o.exact_max_partitions = exact_max_partitions;
  return with_scalar(dtype_of(similarity, "group_heads: similarity"), [&](auto tag) {
    using S = typename decltype(tag)::type;
    const Matrix<S> s = matrix<S>(similarity, "group_heads: similarity");
    nb::gil_scoped_release release;
    return group_heads(s, num_groups, o);
  });
}

double grouping_score_py(const Array& similarity, const std::vector<std::vector<Index>>& groups) {
  const Matrix<double> s = matrix<double>(similarity, "grouping_score: similarity");
  HEADALIGN_CHECK(s.rows() == s.cols(),
                  "grouping_score: similarity must be square, got " << s.rows() << " × " << s.cols());
  for (const auto& group : groups)
    for (Index h : group)
      HEADALIGN_CHECK(h >= 0 && h < s.rows(),
                      "grouping_score: head " << h << " out of range for " << s.rows() << " heads");
  return grouping_score(s, groups);
}

PyGpaResult align_group_py(Gram& g, const std::vector<Index>& heads, Alignment alignment,
                           const RopeSpec& rope, int max_iterations, double tolerance, GpaUpdate update,
                           PolarMethod method) {
  GpaOptions o;
  o.max_iterations = max_iterations;
  o.tolerance = tolerance;
  o.update = update;
  o.procrustes = polar_options(method);
  return g.visit([&](auto& gram) {
    using S = typename std::decay_t<decltype(gram)>::Scalar;
    auto r = without_gil([&] { return align_group(gram, heads, alignment, rope, o); });
    return to_python(r);
  });
}

// ---------------------------------------------------------------------------------------------
// Hard-concrete gates: elementwise over 1-D or 2-D arrays, in the input's precision.

template <class F>
nb::object elementwise(const Array& a, const char* what, F&& f) {
  return with_scalar(dtype_of(a, what), [&](auto tag) -> nb::object {
    using S = typename decltype(tag)::type;
    const Matrix<S> m = matrix_1d_or_2d<S>(a, what);
    Matrix<S> out = f(m.array()).matrix();
    if (a.ndim() == 1) return to_numpy(Vector<S>(out.col(0)));
    return to_numpy(std::move(out));
  });
}

template <class F>
nb::object elementwise2(const Array& a, const Array& u, const char* what, F&& f) {
  return with_scalar(dtype_of(a, what), [&](auto tag) -> nb::object {
    using S = typename decltype(tag)::type;
    const Matrix<S> m = matrix_1d_or_2d<S>(a, what);
    const Matrix<S> mu = matrix_1d_or_2d<S>(u, "uniform");
    Matrix<S> out = f(m.array(), mu.array()).matrix();
    if (a.ndim() == 1) return to_numpy(Vector<S>(out.col(0)));
    return to_numpy(std::move(out));
  });
}

template <class F>
double reduce(const Array& a, const char* what, F&& f) {
  return with_scalar(dtype_of(a, what), [&](auto tag) -> double {
    using S = typename decltype(tag)::type;
    const Matrix<S> m = matrix_1d_or_2d<S>(a, what);
    return static_cast<double>(f(m.array()));
  });
}

/// HardConcrete and the textbook gates (Louizos et al. 2018).
void bind_hard_concrete(nb::module_& m) {
  nb::class_<HardConcrete>(
      m, "HardConcrete",
      "Hard-concrete distribution of L0 gates (Louizos et al. 2018), as the paper's Sec. 3.4 uses it:\n"
      "s = sigmoid((log u − log(1−u) + log α)/β), z = min(1, max(0, s·(ζ−γ) + γ)).")
      .def(nb::init<>())
      .def(
          "__init__",
          [](HardConcrete* self, double beta, double gamma, double zeta) {
            new (self) HardConcrete{beta, gamma, zeta};
          },
          "beta"_a = 2.0 / 3.0, "gamma"_a = -0.1, "zeta"_a = 1.1)
      .def_rw("beta", &HardConcrete::beta, "temperature β > 0")
      .def_rw("gamma", &HardConcrete::gamma, "lower stretch limit γ < 0")
      .def_rw("zeta", &HardConcrete::zeta, "upper stretch limit ζ > 1")
      .def("__repr__", [](const HardConcrete& h) {
        return "HardConcrete(beta=" + std::to_string(h.beta) + ", gamma=" + std::to_string(h.gamma) +
               ", zeta=" + std::to_string(h.zeta) + ")";
      });

  const auto hc_default = HardConcrete{};
#define HEADALIGN_PY_UNARY(name, doc)                                                                   \
  m.def(                                                                                                \
      #name,                                                                                            \
      [](const Array& log_alpha, const HardConcrete& hc) {                                              \
        return elementwise(log_alpha, #name ": log_alpha", [&](const auto& a) { return name(hc, a); }); \
      },                                                                                                \
      "log_alpha"_a, "hc"_a = hc_default, doc)
  HEADALIGN_PY_UNARY(prob_nonzero,
                     "P(z ≠ 0) = sigmoid(log α − β·log(−γ/ζ)) per gate (the expected L0 norm's terms).");
  HEADALIGN_PY_UNARY(prob_nonzero_grad, "d P(z ≠ 0) / d log α per gate.");
  HEADALIGN_PY_UNARY(deterministic_gates, "Test-time gates z = min(1, max(0, sigmoid(log α)·(ζ−γ) + γ)).");
  HEADALIGN_PY_UNARY(deterministic_gates_grad,
                     "d z / d log α of deterministic_gates (0 where the gate is clipped).");
#undef HEADALIGN_PY_UNARY
  m.def(
      "expected_l0",
      [](const Array& log_alpha, const HardConcrete& hc) {
        return reduce(log_alpha, "expected_l0: log_alpha", [&](const auto& a) { return expected_l0(hc, a); });
      },
      "log_alpha"_a, "hc"_a = hc_default, "Expected number of non-zero gates, Σ P(z ≠ 0).");
  m.def(
      "sample_gates",
      [](const Array& log_alpha, const Array& uniform, const HardConcrete& hc) {
        return elementwise2(log_alpha, uniform, "sample_gates: log_alpha",
                            [&](const auto& a, const auto& u) { return sample_gates(hc, a, u); });
      },
      "log_alpha"_a, "uniform"_a, "hc"_a = hc_default,
      "Training-time gates from uniforms u in (0, 1) of the same shape:\n"
      "z = min(1, max(0, sigmoid((log u − log(1−u) + log α)/β)·(ζ−γ) + γ)).");
  m.def(
      "sample_gates_grad",
      [](const Array& log_alpha, const Array& uniform, const HardConcrete& hc) {
        return elementwise2(log_alpha, uniform, "sample_gates_grad: log_alpha",
                            [&](const auto& a, const auto& u) { return sample_gates_grad(hc, a, u); });
      },
      "log_alpha"_a, "uniform"_a, "hc"_a = hc_default,
      "d z / d log α of sample_gates (0 where the gate is clipped).");
}

/// ReferenceGates and the reference implementation's gate functions.
void bind_reference_gates(nb::module_& m) {
  nb::class_<ReferenceGates>(
      m, "ReferenceGates",
      "The reference implementation's gate parametrisation (constants of arXiv 2412.20677's code):\n"
      "logit a = θ/(α_s·T), training gate from u ~ U(0.5 − noise, 0.5 + noise), stretched and clipped.")
      .def(nb::init<>())
      .def_rw("temperature", &ReferenceGates::temperature)
      .def_rw("scale", &ReferenceGates::scale)
      .def_rw("noise", &ReferenceGates::noise)
      .def_rw("stretch", &ReferenceGates::stretch)
      .def_rw("logit_limit", &ReferenceGates::logit_limit)
      .def_rw("offset_gate", &ReferenceGates::offset_gate)
      .def_rw("epsilon", &ReferenceGates::epsilon);
  const auto ref_default = ReferenceGates{};
#define HEADALIGN_PY_REF_UNARY(name, doc)                                                      \
  m.def(                                                                                       \
      #name,                                                                                   \
      [](const Array& theta, const ReferenceGates& r) {                                        \
        return elementwise(theta, #name ": theta", [&](const auto& a) { return name(r, a); }); \
      },                                                                                       \
      "theta"_a, "gates"_a = ref_default, doc)
  HEADALIGN_PY_REF_UNARY(reference_logits, "Logits a = θ / (α_s · T).");
  HEADALIGN_PY_REF_UNARY(reference_clamp_parameters, "θ clamped so that |a| ≤ logit_limit.");
  HEADALIGN_PY_REF_UNARY(reference_prob_nonzero,
                         "P(z ≠ 0) = sigmoid(a + T·logit(offset_gate)), clamped to [ε, 1 − ε].");
  HEADALIGN_PY_REF_UNARY(reference_prob_nonzero_grad, "d P(z ≠ 0) / d θ (0 where clamped).");
#undef HEADALIGN_PY_REF_UNARY
  m.def(
      "reference_initial_parameter", [](const ReferenceGates& r) { return reference_initial_parameter(r); },
      "gates"_a = ref_default, "The reference's initial θ = 6·T·α_s (gates almost surely on).");
  m.def(
      "reference_sample_gates",
      [](const Array& theta, const Array& uniform, const ReferenceGates& r) {
        return elementwise2(theta, uniform, "reference_sample_gates: theta",
                            [&](const auto& a, const auto& u) { return reference_sample_gates(r, a, u); });
      },
      "theta"_a, "uniform"_a, "gates"_a = ref_default,
      "Training-time gates of the reference from uniforms u in (0, 1).");
  m.def(
      "reference_sample_gates_grad",
      [](const Array& theta, const Array& uniform, const ReferenceGates& r) {
        return elementwise2(
            theta, uniform, "reference_sample_gates_grad: theta",
            [&](const auto& a, const auto& u) { return reference_sample_gates_grad(r, a, u); });
      },
      "theta"_a, "uniform"_a, "gates"_a = ref_default, "d z / d θ of reference_sample_gates.");
  m.def(
      "reference_expected_sparsity",
      [](const Array& theta, const ReferenceGates& r) {
        return reduce(theta, "reference_expected_sparsity: theta",
                      [&](const auto& a) { return reference_expected_sparsity(r, a); });
      },
      "theta"_a, "gates"_a = ref_default, "Expected fraction of zero gates, mean of 1 − P(z ≠ 0).");
  m.def(
      "reference_deterministic_gates",
      [](const Array& theta, const ReferenceGates& r, Index num_zeros) {
        return elementwise(theta, "reference_deterministic_gates: theta",
                           [&](const auto& a) { return reference_deterministic_gates(r, a, num_zeros); });
      },
      "theta"_a, "gates"_a = ref_default, "num_zeros"_a = -1,
      "Test-time gates: sigmoid(a), with the num_zeros smallest set to 0 (negative: the expected number of "
      "zeros).");
  m.def("reference_sparsity_loss", &reference_sparsity_loss, "expected"_a, "target"_a, "epsilon"_a = 1e-6,
        "|e − t| + (|e − t| + ε)², the reference's sparsity penalty.");
  m.def("reference_sparsity_loss_grad", &reference_sparsity_loss_grad, "expected"_a, "target"_a,
        "epsilon"_a = 1e-6, "d reference_sparsity_loss / d expected.");
  m.def("reference_target_sparsity", &reference_target_sparsity, "step"_a, "total_steps"_a,
        "final_target"_a = 1.0, "warmup_fraction"_a = 0.3,
        "Target sparsity at a step: final_target · min(1, step / (warmup_fraction · total_steps)).");
  m.def("reference_gates_forced_off", &reference_gates_forced_off, "step"_a, "total_steps"_a,
        "off_fraction"_a = 0.8,
        "Whether the reference forces the gates off (pure GQA) at this step: step ≥ off_fraction · "
        "total_steps.");
}

/// Alignment, PolarMethod, Metric, GroupingMethod, GpaUpdate, RopePairing and RopeSpec.
void bind_basics(nb::module_& m) {
  nb::enum_<Alignment>(m, "Alignment", "The set of transforms a head may be aligned with.")
      .value("NONE", Alignment::None, "identity only: the plain mean-pool GQA baseline")
      .value("ORTHOGONAL", Alignment::Orthogonal,
             "any orthogonal R (values, outputs, keys of models without RoPE)")
      .value("ROTATION", Alignment::Rotation, "orthogonal with det R = +1")
      .value("ROPE", Alignment::Rope,
             "one 2×2 rotation per RoPE plane (commutes with RoPE); any orthogonal R on non-rotary dims");
  nb::enum_<PolarMethod>(m, "PolarMethod", "How the polar factor U Vᵀ of a square matrix is computed.")
      .value("AUTO", PolarMethod::Auto, "Gesdd when LAPACKE is available, otherwise Newton")
      .value("JACOBI_SVD", PolarMethod::JacobiSvd, "Eigen::JacobiSVD (most accurate, slowest)")
      .value("BDC_SVD", PolarMethod::BdcSvd, "Eigen::BDCSVD (divide and conquer)")
      .value("GESDD", PolarMethod::Gesdd, "LAPACK ?gesdd (falls back to JacobiSvd without LAPACKE)")
      .value("NEWTON", PolarMethod::Newton, "scaled Newton iteration; an SVD when M is ill-conditioned");
  nb::enum_<Metric>(m, "Metric", "How aligned heads are compared (the paper's Sec. 3.3).")
      .value("COSINE", Metric::Cosine, "mean cosine after alignment (the reference's `cos` criterion)")
      .value("DISTANCE", Metric::Distance,
             "minus the mean squared distance after alignment (the reference's `dist` criterion)");
  nb::enum_<GroupingOptions::Method>(m, "GroupingMethod",
                                     "How heads are partitioned into groups of equal size.")
      .value("HILL_CLIMB", GroupingOptions::Method::HillClimb,
             "the reference: restarts × iterations random swaps")
      .value("LOCAL_SEARCH", GroupingOptions::Method::LocalSearch,
             "tabu search over all swaps with O(1) gains, random restarts")
      .value("EXACT", GroupingOptions::Method::Exact, "exhaustive, optimal (small instances only)");
  nb::enum_<GpaUpdate>(m, "GpaUpdate", "How generalized Procrustes updates the rotations.")
      .value("REFERENCE", GpaUpdate::Reference,
             "all heads against the previous mean (the reference implementation)")
      .value("SEQUENTIAL", GpaUpdate::Sequential,
             "each head against the mean of the others' current rotations");
  nb::enum_<RopeSpec::Pairing>(m, "RopePairing", "Which dimensions RoPE rotates together.")
      .value("HALF_SPLIT", RopeSpec::Pairing::HalfSplit, "(i, i + r/2): LLaMA / GPT-NeoX layout")
      .value("INTERLEAVED", RopeSpec::Pairing::Interleaved, "(2i, 2i + 1): GPT-J layout");

  nb::class_<RopeSpec>(m, "RopeSpec", "Which head dimensions RoPE rotates, and how they are paired.")
      .def(
          "__init__",
          [](RopeSpec* self, RopeSpec::Pairing pairing, Index rotary_dims) {
            new (self) RopeSpec{pairing, rotary_dims};
          },
          "pairing"_a = RopeSpec::Pairing::HalfSplit, "rotary_dims"_a = 0)
      .def_rw("pairing", &RopeSpec::pairing)
      .def_rw("rotary_dims", &RopeSpec::rotary_dims, "number of rotary dimensions; 0 = all of head_dim")
      .def("__repr__", [](const RopeSpec& r) {
        return std::string("RopeSpec(pairing=") +
               (r.pairing == RopeSpec::Pairing::HalfSplit ? "HALF_SPLIT" : "INTERLEAVED") +
               ", rotary_dims=" + std::to_string(r.rotary_dims) + ")";
      });
}

/// procrustes(), procrustes_score() and orthogonal_procrustes()'s core.
void bind_procrustes(nb::module_& m) {
  const RopeSpec rope_default{};
  m.def("procrustes", &procrustes_py, "m"_a, "alignment"_a = Alignment::Orthogonal, "rope"_a = rope_default,
        "method"_a = PolarMethod::Auto,
        "Solves max_R tr(Rᵀ M) over the alignment's set (the paper's Eq. 4 in Gram form, M = X_aᵀ X_b).\n\n"
        "Returns (R, score) with score = tr(Rᵀ M): Orthogonal R = U Vᵀ from M = U Σ Vᵀ; Rotation flips the\n"
        "last singular vector when det(U Vᵀ) < 0; Rope solves each RoPE plane in closed form\n"
        "(c, s) ∝ (M_aa + M_bb, M_ba − M_ab). float32 in, float32 out; float64 in, float64 out.\n"
        "Raises ValueError for a non-square, empty or non-finite M.");
  m.def("procrustes_score", &procrustes_score_py, "m"_a, "alignment"_a, "rope"_a = rope_default,
        "method"_a = PolarMethod::Auto,
        "max_R tr(Rᵀ M) without forming R: the sum of singular values (Orthogonal), minus twice the\n"
        "smallest when det M < 0 (Rotation), Σ_planes hypot(M_aa + M_bb, M_ba − M_ab) (Rope).");
  m.def("_orthogonal_procrustes", &orthogonal_procrustes_py, "a"_a, "b"_a, "method"_a = PolarMethod::Auto);
}

/// HeadGram.
void bind_head_gram(nb::module_& m) {
  nb::class_<Gram>(
      m, "HeadGram",
      "Streaming accumulator of the cross-Gram blocks G_ij = X_iᵀ X_j of H heads (README: Gram space).\n\n"
      "add() takes token rows [..., num_heads·head_dim] (NumPy arrays or PyTorch CPU tensors, any float\n"
      "dtype, read in place: C- or Fortran-ordered data feed the SYRK update without a copy). With\n"
      "normalize_rows every head vector is scaled to unit length first (the reference's `cos`\n"
      "criterion, Sec. 3.3 of arXiv 2412.20677). Accumulators of disjoint tokens merge() exactly.")
      .def(
          "__init__",
          [](Gram* self, Index h, Index d, bool normalize_rows, nb::handle dtype, Index chunk_rows) {
            new (self) Gram(gram_new(h, d, normalize_rows, dtype, chunk_rows));
          },
          "num_heads"_a, "head_dim"_a, "normalize_rows"_a = false, "dtype"_a = nb::str("float64"),
          "chunk_rows"_a = 512, "An empty accumulator; dtype float64 (advised past ~1e5 tokens) or float32.")
      .def("add", &gram_add, "activations"_a,
           "Accumulates token rows: G ← G + Σ_t x_tᵀ x_t over the rows of activations [..., "
           "num_heads·head_dim]\n"
           "(leading axes are tokens). The GIL is released. Raises ValueError for a wrong width or NaN/Inf\n"
           "(nothing is added then).")
      .def(
          "merge",
          [](Gram& self, Gram& other) {
            visit2(self, other, "HeadGram.merge", [](auto& a, auto& b) { a.merge(b); });
          },
          "other"_a, "Adds another accumulator's statistics (disjoint tokens): G ← G + G', n ← n + n'.")
      .def_prop_ro("num_heads", [](Gram& g) { return g.visit([](auto& x) { return x.num_heads(); }); })
      .def_prop_ro("head_dim", [](Gram& g) { return g.visit([](auto& x) { return x.head_dim(); }); })
      .def_prop_ro(
          "dim", [](Gram& g) { return g.visit([](auto& x) { return x.dim(); }); }, "num_heads · head_dim")
      .def_prop_ro(
          "tokens", [](Gram& g) { return g.visit([](auto& x) { return x.tokens(); }); },
          "token rows accumulated (1 for a data-free Gram: one expectation)")
      .def_prop_ro("normalize_rows",
                   [](Gram& g) { return g.visit([](auto& x) { return x.normalize_rows(); }); })
      .def_prop_ro("dtype", [](Gram& g) { return numpy_dtype(g.is_double() ? "float64" : "float32"); })
      .def(
          "block",
          [](Gram& g, Index i, Index j) { return g.visit([&](auto& x) { return to_numpy(x.block(i, j)); }); },
          "i"_a, "j"_a, "The d × d cross-Gram block G_ij = X_iᵀ X_j.")
      .def(
          "trace",
          [](Gram& g, Index i) {
            return g.visit([&](auto& x) {
              HEADALIGN_CHECK(i >= 0 && i < x.num_heads(),
                              "head index " << i << " out of range for " << x.num_heads() << " heads");
              return static_cast<double>(x.trace(i));
            });
          },
          "i"_a, "tr G_ii = Σ_t ‖x_{i,t}‖².")
      .def(
          "gram", [](Gram& g) { return g.visit([](auto& x) { return to_numpy(x.gram()); }); },
          "The full symmetric (H·d) × (H·d) matrix G.")
      .def(
          "save",
          [](Gram& g, const std::string& path) {
            nb::gil_scoped_release release;
            g.visit([&](auto& x) { io::save_gram(path, x); });
          },
          "path"_a, "Writes a safetensors file (atomically: a temporary file, then a rename).")
      .def_static(
          "load", &gram_load, "path"_a, "dtype"_a = nb::none(),
          "Reads a file written by save() (or by the C++ library / CLI); dtype None keeps the file's.\n"
          "Raises OSError for a missing, truncated or malformed file.")
      .def_static("from_activations", &gram_from_activations, "activations"_a, "normalize_rows"_a = false,
                  "dtype"_a = nb::none(),
                  "Statistics of activations stored head-major [num_heads, tokens, head_dim] (the "
                  "reference's layout).")
      .def_static(
          "from_weights", &gram_from_weights, "weights"_a, "num_heads"_a, "head_dim"_a,
          "dtype"_a = nb::none(),
          "Data-free statistics from a projection's weights [num_heads·head_dim, hidden]: G_ij = W_i W_jᵀ,\n"
          "what the Gram would be for whitened inputs (E[x xᵀ] = I); tokens = 1.")
      .def("__repr__", [](Gram& g) {
        return g.visit([&](auto& x) {
          return "HeadGram(num_heads=" + std::to_string(x.num_heads()) +
                 ", head_dim=" + std::to_string(x.head_dim()) + ", tokens=" + std::to_string(x.tokens()) +
                 ", normalize_rows=" + (x.normalize_rows() ? "True" : "False") +
                 ", dtype=" + (g.is_double() ? "float64" : "float32") + ")";
        });
      });
}

/// HeadMoments, and the buffer address the zero-copy tests read.
void bind_head_moments(nb::module_& m) {
  nb::class_<Moments>(
      m, "HeadMoments",
      "Per-head second moments Σ_h = Σ_t q_{h,t}ᵀ q_{h,t} (d × d for each of H heads): what\n"
      "query-aware key merging needs (convert_layer(..., queries=..., merge=MergeWeighting.FULL or\n"
      "QUERY_AWARE)). Fill it from the pre-RoPE query projections during the same calibration pass\n"
      "as the key and value HeadGrams; accumulators of disjoint tokens merge() exactly.")
      .def(
          "__init__",
          [](Moments* self, Index h, Index d, nb::handle dtype) {
            if (is_double(dtype))
              new (self) Moments(HeadMoments<double>(h, d));
            else
              new (self) Moments(HeadMoments<float>(h, d));
          },
          "num_heads"_a, "head_dim"_a, "dtype"_a = nb::str("float64"),
          "An empty accumulator; dtype float64 or float32.")
      .def(
          "add", [](Moments& self, const Array& x) { add_rows(self, x, "HeadMoments.add: queries"); },
          "queries"_a,
          "Accumulates query rows [..., num_heads·head_dim] (pre-RoPE q_proj output; leading axes are "
          "tokens).\n"
          "The GIL is released. Raises ValueError for a wrong width or NaN/Inf (nothing is added then).")
      .def(
          "merge",
          [](Moments& self, Moments& other) {
            visit2(self, other, "HeadMoments.merge", [](auto& a, auto& b) { a.merge(b); });
          },
          "other"_a, "Adds another accumulator's moments (disjoint tokens).")
      .def_prop_ro("num_heads", [](Moments& g) { return g.visit([](auto& x) { return x.num_heads(); }); })
      .def_prop_ro("head_dim", [](Moments& g) { return g.visit([](auto& x) { return x.head_dim(); }); })
      .def_prop_ro(
          "tokens", [](Moments& g) { return g.visit([](auto& x) { return x.tokens(); }); },
          "query rows accumulated")
      .def_prop_ro("dtype", [](Moments& g) { return numpy_dtype(g.is_double() ? "float64" : "float32"); })
      .def(
          "block", [](Moments& g, Index h) { return g.visit([&](auto& x) { return to_numpy(x.block(h)); }); },
          "h"_a, "Σ_h, the d × d second moment of head h.")
      .def_static(
          "from_weights",
          [](const Array& w, Index num_heads, Index head_dim, nb::handle dtype) {
            return from_weights_py<HeadMoments>(w, num_heads, head_dim, dtype, "HeadMoments.from_weights");
          },
          "weights"_a, "num_heads"_a, "head_dim"_a, "dtype"_a = nb::none(),
          "Data-free moments from q_proj's weights [num_heads·head_dim, hidden]: Σ_h = W_h W_hᵀ (whitened "
          "inputs).")
      .def("__repr__", [](Moments& g) {
        return g.visit([&](auto& x) {
          return "HeadMoments(num_heads=" + std::to_string(x.num_heads()) +
                 ", head_dim=" + std::to_string(x.head_dim()) + ", tokens=" + std::to_string(x.tokens()) +
                 ", dtype=" + (g.is_double() ? "float64" : "float32") + ")";
        });
      });
  m.def(
      "_array_address", [](const Array& a) { return reinterpret_cast<std::uintptr_t>(a.data()); }, "a"_a,
      "The address of the first element of the buffer the bindings read (tests of zero-copy input).");
}

/// similarity_matrix(), joint_similarity(), grouping and align_group().
void bind_grouping(nb::module_& m) {
  const RopeSpec rope_default{};
  m.def("similarity_matrix", &similarity_py, "gram"_a, "alignment"_a = Alignment::Orthogonal,
        "metric"_a = Metric::Cosine, "rope"_a = rope_default, "method"_a = PolarMethod::Auto,
        "H × H similarity of the heads after pairwise alignment (the paper's Sec. 3.3):\n"
        "Cosine: s_ij = max_R tr(Rᵀ G_ij)/n with row-normalised Grams (the mean cosine);\n"
        "Distance: s_ij = −(tr G_ii + tr G_jj − 2 max_R tr(Rᵀ G_ij))/n. Only singular values are computed.");
  m.def("joint_similarity", &joint_similarity_py, "keys"_a, "values"_a, "key_alignment"_a = Alignment::Rope,
        "value_alignment"_a = Alignment::Orthogonal, "metric"_a = Metric::Cosine, "rope"_a = rope_default,
        "method"_a = PolarMethod::Auto, "The sum of the key and the value similarity matrices.");

  nb::class_<Grouping>(m, "Grouping", "A partition of the heads into groups of equal size, and its score.")
      .def(nb::init<>())
      .def_rw("groups", &Grouping::groups, "groups of head indices; group c becomes KV head c")
      .def_rw("score", &Grouping::score, "Σ over groups of Σ_{a<b} s_ab")
      .def("order", &Grouping::order, "The groups concatenated: new head p is old head order()[p].")
      .def("__repr__", [](const Grouping& g) {
        std::string s = "Grouping(groups=[";
        for (std::size_t c = 0; c < g.groups.size(); ++c) {
          s += c ? ", [" : "[";
          for (std::size_t i = 0; i < g.groups[c].size(); ++i)
            s += (i ? ", " : "") + std::to_string(g.groups[c][i]);
          s += "]";
        }
        return s + "], score=" + std::to_string(g.score) + ")";
      });
  m.def("group_contiguous", &group_contiguous, "num_heads"_a, "num_groups"_a,
        "Adjacent heads in each group, as plain GQA.");
  m.def("group_heads", &group_heads_py, "similarity"_a, "num_groups"_a,
        "method"_a = GroupingOptions::Method::LocalSearch, "restarts"_a = 200, "iterations"_a = 3000,
        "steps"_a = GroupingOptions{}.steps, "restart_after"_a = GroupingOptions{}.restart_after,
        "seed"_a = 0, "patience"_a = 0, "exact_max_partitions"_a = 5e7,
        "Partitions H heads into num_groups groups of H/num_groups maximising Σ_groups Σ_{a<b} s_ab.\n"
        "HILL_CLIMB reproduces the reference (restarts × iterations random swaps); LOCAL_SEARCH (default)\n"
        "is a tabu search of `steps` best swaps with random restarts, far faster; EXACT is optimal for\n"
        "small H. Deterministic for a seed.\n"
        "Raises ValueError when H is not divisible by num_groups.");
  m.def("grouping_score", &grouping_score_py, "similarity"_a, "groups"_a,
        "Σ over groups of Σ_{a<b} similarity[a, b].");

  nb::class_<PyGpaResult>(m, "GpaResult",
                          "Generalized Procrustes of one group: rotations into a common frame.")
      .def_ro("rotations", &PyGpaResult::rotations,
              "[k, d, d]: rotations[t] maps heads[t] into the common frame")
      .def_ro("iterations", &PyGpaResult::iterations,
              "mean-shape iterations run (0 for groups of one or two)")
      .def_ro("converged", &PyGpaResult::converged)
      .def_ro("objective", &PyGpaResult::objective, "Σ_{t<u} tr(R_tᵀ G_{h_t h_u} R_u) / tokens");
  m.def(
      "align_group", &align_group_py, "gram"_a, "heads"_a, "alignment"_a = Alignment::Orthogonal,
      "rope"_a = rope_default, "max_iterations"_a = 100, "tolerance"_a = 1e-5,
      "update"_a = GpaUpdate::Sequential, "method"_a = PolarMethod::Auto,
      "Generalized Procrustes in Gram space (the paper's Sec. 3.2): X_hᵀ·mean = (1/k) Σ_j G_hj R_j; starts\n"
      "from alignment to the first head and stops when the gain falls below tolerance. ROPE keeps every\n"
      "rotation block-diagonal per RoPE plane.");
}

}  // namespace
}  // namespace headalign::python

using namespace headalign;
using namespace headalign::python;
using namespace nb::literals;

NB_MODULE(_core, m) {
  m.doc() =
      "headalign: align attention heads with orthogonal Procrustes transforms before merging them (MHA → "
      "GQA, "
      "arXiv 2412.20677). The C++ library's functions, on NumPy arrays and PyTorch CPU tensors.";
  m.attr("__version__") = HEADALIGN_VERSION_STRING;
#if defined(HEADALIGN_USE_BLAS)
  m.attr("with_blas") = true;
#else
  m.attr("with_blas") = false;
#endif

  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const io_error& e) {
      PyErr_SetString(PyExc_OSError, e.what());
    }
  });

  bind_basics(m);
  bind_procrustes(m);
  bind_head_gram(m);
  bind_head_moments(m);
  bind_grouping(m);
  bind_hard_concrete(m);
  bind_reference_gates(m);
  bind_pipeline(m);
  bind_checkpoint(m);
}

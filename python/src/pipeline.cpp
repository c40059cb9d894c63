// headalign._core, second unit: attention weights, alignment, merging, layer plans and conversion.
#include "bindings.hpp"

#include <chrono>

namespace headalign::python {
namespace {

using namespace nb::literals;

using Weights = Guarded<AttentionWeights>;

using Plan = Guarded<LayerPlan>;  // read-only after planning; the lock is never contended

struct PyMergeError {
  nb::object per_head, per_group;
  double total = 0, energy = 0;
  double relative() const { return energy > 0 ? total / energy : 0.0; }
};

template <class S>
PyMergeError to_python(MergeError<S> e) {
  return {to_numpy(std::move(e.per_head)), to_numpy(std::move(e.per_group)), static_cast<double>(e.total),
          static_cast<double>(e.energy)};
}
using python::to_python;  // the GpaResult overloads (bindings.hpp) beside this one

struct Converted {
  nb::object weights;  // Weights
  nb::object plan;     // Plan
};

/// An AttentionWeights<S> from Hugging Face-layout arrays: q [H·d, hidden], k and v [Hkv·d, hidden],
/// o [hidden, H·d] (each read once, converted to S).
template <class S>
AttentionWeights<S> make_weights(const Array& q, const Array& k, const Array& v, const Array& o,
                                 Index num_heads, std::optional<Index> num_kv_heads,
                                 std::optional<Index> head_dim, const std::optional<Array>& q_bias,
                                 const std::optional<Array>& k_bias, const std::optional<Array>& v_bias,
                                 const std::optional<Array>& o_bias) {
  for (const auto* a : {&q, &k, &v, &o}) check_ndim(*a, 2, "attention weights (q, k, v, o)");
  HEADALIGN_CHECK(num_heads > 0, "num_heads (" << num_heads << ") must be positive");
  AttentionWeights<S> w;
  w.num_heads = num_heads;
  const Index q_rows = static_cast<Index>(q.shape(0));
  if (head_dim) {
    w.head_dim = *head_dim;
  } else {
    HEADALIGN_CHECK(q_rows % num_heads == 0,
                    "q has " << q_rows << " rows, not a multiple of num_heads (" << num_heads << ")");
    w.head_dim = q_rows / num_heads;
  }
  HEADALIGN_CHECK(w.head_dim > 0, "head_dim (" << w.head_dim << ") must be positive");
  if (num_kv_heads) {
    w.num_kv_heads = *num_kv_heads;
  } else {
    const Index k_rows = static_cast<Index>(k.shape(0));
    HEADALIGN_CHECK(k_rows % w.head_dim == 0,
                    "k has " << k_rows << " rows, not a multiple of head_dim (" << w.head_dim << ")");
    w.num_kv_heads = k_rows / w.head_dim;
  }
  using Rows = typename AttentionWeights<S>::Rows;
  w.q = converted<Rows>(q, "q");
  w.k = converted<Rows>(k, "k");
  w.v = converted<Rows>(v, "v");
  w.o = converted<Rows>(o, "o");
  w.q_bias = optional_vector<S>(q_bias, "q_bias");
  w.k_bias = optional_vector<S>(k_bias, "k_bias");
  w.v_bias = optional_vector<S>(v_bias, "v_bias");
  w.o_bias = optional_vector<S>(o_bias, "o_bias");
  w.validate();
  return w;
}

/// Computation precision: the dtype argument, else float64 for float64 weights and float32 otherwise.
bool want_double(nb::handle dtype, const Array& q) {
  if (!dtype.is_none()) return is_double(dtype);
  return dtype_of(q, "q") == Dtype::F64;
}

/// A view of a row-major matrix owned by the Python object @p self (no copy).
template <class S>
nb::object view_of(const Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>& m,
                   nb::handle self) {
  return nb::ndarray<nb::numpy, S>(const_cast<S*>(m.data()),
                                   {static_cast<std::size_t>(m.rows()), static_cast<std::size_t>(m.cols())},
                                   self)
      .cast();
}

template <class S>
nb::object view_of(const Vector<S>& v, nb::handle self) {
  if (v.size() == 0) return nb::none();
  return nb::ndarray<nb::numpy, S>(const_cast<S*>(v.data()), {static_cast<std::size_t>(v.size())}, self)
      .cast();
}

template <class S>
std::vector<Matrix<S>> rotations_or_empty(const std::optional<Array>& a, const char* what) {
  if (!a) return {};
  return matrices<S>(*a, what);
}

GroupingOptions grouping_options(GroupingOptions::Method method, std::uint64_t seed) {
  GroupingOptions g;
  g.method = method;
  g.seed = seed;
  return g;
}

struct PlanArgs {
  Index num_groups;
  GroupBy group_by;
  Metric metric;
  Alignment key_alignment, value_alignment;
  RopeSpec rope;
  GroupingOptions::Method grouping;
  std::uint64_t seed;
  int gpa_max_iterations;
  double gpa_tolerance;
  PolarMethod method;

  PlanOptions options() const {
    PlanOptions o;
    o.num_groups = num_groups;
    o.group_by = group_by;
    o.metric = metric;
    o.key_alignment = key_alignment;
    o.value_alignment = value_alignment;
    o.rope = rope;
    o.grouping = grouping_options(grouping, seed);
    o.gpa.max_iterations = gpa_max_iterations;
    o.gpa.tolerance = gpa_tolerance;
    o.gpa.procrustes.method = method;
    return o;
  }
};

Plan plan_layer_py(Gram& keys, Gram& values, const PlanArgs& a) {
  return visit2(keys, values, "plan_layer", [&](auto& k, auto& v) {
    const PlanOptions o = a.options();
    nb::gil_scoped_release release;
    return Plan(plan_layer(k, v, o));
  });
}

MergeOptions merge_options(MergeWeighting weighting, double ridge) {
  MergeOptions m;
  m.weighting = weighting;
  m.ridge = ridge;
  return m;
}

Converted convert_layer_py(const Array& q, const Array& k, const Array& v, const Array& o, Index num_heads,
                           Index num_groups, Gram* keys, Gram* values, Plan* plan, Moments* queries,
                           std::optional<Array> q_bias, std::optional<Array> k_bias,
                           std::optional<Array> v_bias, std::optional<Array> o_bias, const PlanArgs& args,
                           MergeWeighting merge, double ridge, nb::handle dtype) {
  HEADALIGN_CHECK((keys == nullptr) == (values == nullptr),
                  "convert_layer: give both keys and values HeadGrams, or neither (data-free)");
  const bool dbl = plan ? plan->is_double() : keys ? keys->is_double() : want_double(dtype, q);
  if (!dtype.is_none() && is_double(dtype) != dbl)
    throw_value_error(std::string("convert_layer: dtype differs from the ") +
                      (plan ? "plan's" : "HeadGrams'") + " dtype (" + (dbl ? "float64" : "float32") +
                      "), which the computation uses");
  auto run = [&](auto tag) -> Converted {
    using S = typename decltype(tag)::type;
    AttentionWeights<S> w =
        make_weights<S>(q, k, v, o, num_heads, std::nullopt, std::nullopt, q_bias, k_bias, v_bias, o_bias);
    PlanArgs a = args;
    a.num_groups = num_groups;
    std::optional<Plan> own_plan;
    const LayerPlan<S>* lp = nullptr;
    if (plan) {
      if (plan->is_double() != std::is_same<S, double>::value)
        throw_value_error("convert_layer: the plan's dtype differs from the computation's");
      lp = &std::get<LayerPlan<S>>(plan->value);
      HEADALIGN_CHECK(static_cast<Index>(lp->grouping.groups.size()) == num_groups,
                      "convert_layer: num_groups (" << num_groups << ") differs from the plan's "
                                                    << lp->grouping.groups.size() << " groups");
    } else if (keys) {
      if (keys->is_double() != std::is_same<S, double>::value || values->is_double() != keys->is_double())
        throw_value_error(
            "convert_layer: the key and value HeadGrams must both have the computation's dtype");
      own_plan.emplace(plan_layer_py(*keys, *values, a));
      lp = &std::get<LayerPlan<S>>(own_plan->value);
    } else {
      HEADALIGN_CHECK(w.num_kv_heads == w.num_heads,
                      "convert_layer: data-free conversion needs an MHA layer (num_kv_heads = num_heads)");
      nb::gil_scoped_release release;
      const HeadGram<S> gk = HeadGram<S>::from_weights(w.k, w.num_heads, w.head_dim),
                        gv = HeadGram<S>::from_weights(w.v, w.num_heads, w.head_dim);
      own_plan.emplace(plan_layer(gk, gv, a.options()));
      lp = &std::get<LayerPlan<S>>(own_plan->value);
    }
    const HeadMoments<S>* moments = nullptr;
    if (queries) {
      if (queries->is_double() != std::is_same<S, double>::value)
        throw_value_error("convert_layer: the query HeadMoments must have the computation's dtype");
      moments = &std::get<HeadMoments<S>>(queries->value);
    }
    // The moments are only read; their lock keeps another thread from adding meanwhile.
    std::unique_lock<std::mutex> hold;
    if (queries) hold = std::unique_lock<std::mutex>(*queries->lock);
    auto merged =
        without_gil([&] { return convert_layer(std::move(w), *lp, merge_options(merge, ridge), moments); });
    Converted out;
    out.weights = nb::cast(Weights(std::move(merged)));
    out.plan = own_plan ? nb::cast(std::move(*own_plan)) : nb::cast(plan, nb::rv_policy::reference);
    return out;
  };
  if (dbl) return run(Tag<double>{});
  return run(Tag<float>{});
}

/// Seconds of each of @p repeats runs of the C++ calls that convert_layer() makes, on the same
/// buffers (the Python benchmark's baseline): AttentionWeights<S> from the arrays, plan_layer,
/// convert_layer(std::move(w)). The difference to the Python call is the binding's own cost.
std::vector<double> time_cpp_convert(const Array& q, const Array& k, const Array& v, const Array& o,
                                     Index num_heads, Index num_groups, Gram& keys, Gram& values,
                                     int repeats) {
  const PlanArgs a{num_groups,
                   GroupBy::Value,
                   Metric::Cosine,
                   Alignment::Rope,
                   Alignment::Orthogonal,
                   {},
                   GroupingOptions::Method::LocalSearch,
                   0,
                   100,
                   1e-5,
                   PolarMethod::Auto};
  return visit2(keys, values, "time_cpp_convert", [&](auto& gk, auto& gv) {
    using S = typename std::decay_t<decltype(gk)>::Scalar;
    nb::gil_scoped_release release;  // the arrays' buffers are read without Python calls
    std::vector<double> seconds;
    for (int r = 0; r < std::max(1, repeats); ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      AttentionWeights<S> w =
          make_weights<S>(q, k, v, o, num_heads, std::nullopt, std::nullopt, {}, {}, {}, {});
      const LayerPlan<S> plan = plan_layer(gk, gv, a.options());
      const AttentionWeights<S> merged = convert_layer(std::move(w), plan);
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      seconds.push_back(merged.k.rows() > 0 ? s : 0.0);
    }
    return seconds;
  });
}

/// AttentionWeights, apply_alignment() and merge_to_gqa().
void bind_weights(nb::module_& m) {
  nb::class_<Weights>(
      m, "AttentionWeights",
      "One attention layer in Hugging Face layout: q [H·d, hidden], k and v [Hkv·d, hidden],\n"
      "o [hidden, H·d], optional biases. The arrays are views of the object's own storage.")
      .def(
          "__init__",
          [](Weights* self, const Array& q, const Array& k, const Array& v, const Array& o, Index num_heads,
             std::optional<Index> num_kv_heads, std::optional<Index> head_dim, std::optional<Array> q_bias,
             std::optional<Array> k_bias, std::optional<Array> v_bias, std::optional<Array> o_bias,
             nb::handle dtype) {
            if (want_double(dtype, q))
              new (self) Weights(make_weights<double>(q, k, v, o, num_heads, num_kv_heads, head_dim, q_bias,
                                                      k_bias, v_bias, o_bias));
            else
              new (self) Weights(make_weights<float>(q, k, v, o, num_heads, num_kv_heads, head_dim, q_bias,
                                                     k_bias, v_bias, o_bias));
          },
          "q"_a, "k"_a, "v"_a, "o"_a, "num_heads"_a, "num_kv_heads"_a = nb::none(), "head_dim"_a = nb::none(),
          "q_bias"_a = nb::none(), "k_bias"_a = nb::none(), "v_bias"_a = nb::none(), "o_bias"_a = nb::none(),
          "dtype"_a = nb::none(),
          "Copies the weights (converted to dtype: float64 for float64 q, else float32 unless given).\n"
          "head_dim defaults to q.shape[0] / num_heads, num_kv_heads to k.shape[0] / head_dim.\n"
          "Raises ValueError for inconsistent shapes, head counts or NaN/Inf.")
      .def_prop_ro("num_heads", [](Weights& w) { return w.visit([](auto& a) { return a.num_heads; }); })
      .def_prop_ro("num_kv_heads", [](Weights& w) { return w.visit([](auto& a) { return a.num_kv_heads; }); })
      .def_prop_ro("head_dim", [](Weights& w) { return w.visit([](auto& a) { return a.head_dim; }); })
      .def_prop_ro("hidden_size", [](Weights& w) { return w.visit([](auto& a) { return a.hidden_size(); }); })
      .def_prop_ro("dtype", [](Weights& w) { return numpy_dtype(w.is_double() ? "float64" : "float32"); })
#define HEADALIGN_PY_VIEW(field)                                     \
  .def_prop_ro(#field, [](nb::handle self) {                         \
    Weights& w = nb::cast<Weights&>(self);                           \
    return w.visit([&](auto& a) { return view_of(a.field, self); }); \
  })
          HEADALIGN_PY_VIEW(q) HEADALIGN_PY_VIEW(k) HEADALIGN_PY_VIEW(v) HEADALIGN_PY_VIEW(o)
              HEADALIGN_PY_VIEW(q_bias) HEADALIGN_PY_VIEW(k_bias) HEADALIGN_PY_VIEW(v_bias)
                  HEADALIGN_PY_VIEW(o_bias)
#undef HEADALIGN_PY_VIEW
      .def("__repr__", [](Weights& w) {
        return w.visit([&](auto& a) {
          return "AttentionWeights(num_heads=" + std::to_string(a.num_heads) +
                 ", num_kv_heads=" + std::to_string(a.num_kv_heads) +
                 ", head_dim=" + std::to_string(a.head_dim) +
                 ", hidden_size=" + std::to_string(a.hidden_size()) +
                 ", dtype=" + (w.is_double() ? "float64" : "float32") + ")";
        });
      });

  m.def(
      "apply_alignment",
      [](Weights& w, const std::vector<Index>& order, std::optional<Array> key_rotations,
         std::optional<Array> value_rotations) {
        w.visit([&](auto& a) {
          using S = typename std::decay_t<decltype(a)>::Scalar;
          const auto kr = rotations_or_empty<S>(key_rotations, "key_rotations");
          const auto vr = rotations_or_empty<S>(value_rotations, "value_rotations");
          nb::gil_scoped_release release;
          // The C++ call may give the matrices new storage; NumPy views of this object point at
          // the old one. Align a copy, then write it back into the same buffers (equal shapes).
          auto aligned = a;
          apply_alignment(aligned, order, kr, vr);
          a.q = aligned.q;
          a.k = aligned.k;
          a.v = aligned.v;
          a.o = aligned.o;
          a.q_bias = aligned.q_bias;
          a.k_bias = aligned.k_bias;
          a.v_bias = aligned.v_bias;
          a.o_bias = aligned.o_bias;
        });
      },
      "weights"_a, "order"_a, "key_rotations"_a = nb::none(), "value_rotations"_a = nb::none(),
      "Reorders the heads (new head p = old head order[p]) and folds the rotations in, in place:\n"
      "W_k,p ← R_pᵀ W_k,p and W_q,p ← R_pᵀ W_q,p (logits unchanged), W_v,p ← R_pᵀ W_v,p and O_p ← O_p R_p\n"
      "(outputs unchanged): the layer computes the same function (the paper's Eq. 5–6).\n"
      "Rotations are [H, d, d] per new head, or None for none. Raises ValueError (the layer unchanged)\n"
      "for a non-permutation, non-orthogonal rotations or a GQA layer.");
  m.def(
      "merge_to_gqa",
      [](Weights& w, Index num_groups, std::optional<Array> key_weights, std::optional<Array> value_weights) {
        return w.visit([&](auto& a) {
          using S = typename std::decay_t<decltype(a)>::Scalar;
          const Vector<S> kw = optional_vector<S>(key_weights, "key_weights"),
                          vw = optional_vector<S>(value_weights, "value_weights");
          return Weights(without_gil([&] { return merge_to_gqa(a, num_groups, kw, vw); }));
        });
      },
      "weights"_a, "num_groups"_a, "key_weights"_a = nb::none(), "value_weights"_a = nb::none(),
      "Merges each run of num_kv_heads/num_groups adjacent KV heads into one: the (weighted) mean of their\n"
      "k and v rows (the paper's Sec. 3.5); q and o are kept. Weights are per KV head (None: equal).");
}

/// MergeError, head_energies() and predicted_merge_error().
void bind_merge_error(nb::module_& m) {
  nb::class_<PyMergeError>(m, "MergeError", "Predicted error of merging aligned heads, from the Gram alone.")
      .def_ro("per_head", &PyMergeError::per_head, "E‖x_h R_h − m_group(h)‖² per head index")
      .def_ro("per_group", &PyMergeError::per_group, "the sum over each group's heads")
      .def_ro("total", &PyMergeError::total)
      .def_ro("energy", &PyMergeError::energy, "Σ_h E‖x_h‖² over the grouped heads")
      .def_prop_ro("relative", &PyMergeError::relative, "total / energy");
  m.def(
      "head_energies", [](Gram& g) { return g.visit([](auto& x) { return to_numpy(head_energies(x)); }); },
      "gram"_a, "E‖x_h‖² = tr G_hh / n per head.");
  m.def(
      "predicted_merge_error",
      [](Gram& g, const std::vector<std::vector<Index>>& groups, std::optional<Array> rotations,
         std::optional<Array> weights) {
        return g.visit([&](auto& x) {
          using S = typename std::decay_t<decltype(x)>::Scalar;
          const auto r = rotations_or_empty<S>(rotations, "rotations");
          const Vector<S> wt = optional_vector<S>(weights, "weights");
          return to_python(without_gil([&] { return predicted_merge_error(x, groups, r, wt); }));
        });
      },
      "gram"_a, "groups"_a, "rotations"_a = nb::none(), "weights"_a = nb::none(),
      "E‖x_h R_h − m_g‖² per head from the Gram, with m_g the (weighted) mean of the group's aligned\n"
      "heads; rotations per original head index [H, d, d] (None: identity, the mean-pool baseline).");
}

/// LayerPlan and plan_layer().
void bind_plan(nb::module_& m) {
  const RopeSpec rope_default{};
  nb::class_<Plan>(m, "LayerPlan",
                   "How one layer is converted: groups, order and per-head rotations (plan_layer()).")
      .def_prop_ro("grouping", [](Plan& p) { return p.visit([](auto& l) { return l.grouping; }); })
      .def_prop_ro(
          "similarity",
          [](Plan& p) {
            return p.visit([](auto& l) {
              return to_numpy(Matrix<typename std::decay_t<decltype(l.similarity)>::Scalar>(l.similarity));
            });
          },
          "the H × H similarity that grouped the heads (empty for GroupBy.NONE)")
      .def_prop_ro(
          "order", [](Plan& p) { return p.visit([](auto& l) { return l.order; }); },
          "new head p is old head order[p] (the groups concatenated)")
      .def_prop_ro(
          "key_rotations", [](Plan& p) { return p.visit([](auto& l) { return stack(l.key_rotations); }); },
          "[H, d, d] per new head")
      .def_prop_ro(
          "value_rotations",
          [](Plan& p) { return p.visit([](auto& l) { return stack(l.value_rotations); }); },
          "[H, d, d] per new head")
      .def_prop_ro(
          "key_gpa", [](Plan& p) { return p.visit([](auto& l) { return to_python(l.key_gpa); }); },
          "per group: iterations, converged, objective")
      .def_prop_ro("value_gpa",
                   [](Plan& p) { return p.visit([](auto& l) { return to_python(l.value_gpa); }); })
      .def_prop_ro(
          "key_error", [](Plan& p) { return p.visit([](auto& l) { return to_python(l.key_error); }); },
          "predicted merge error of the keys (from the key Gram)")
      .def_prop_ro("value_error",
                   [](Plan& p) { return p.visit([](auto& l) { return to_python(l.value_error); }); })
      .def_prop_ro(
          "converged", [](Plan& p) { return p.visit([](auto& l) { return l.converged(); }); },
          "whether every GPA converged")
      .def_prop_ro("dtype", [](Plan& p) { return numpy_dtype(p.is_double() ? "float64" : "float32"); });

  m.def(
      "plan_layer",
      [](Gram& keys, Gram& values, Index num_groups, GroupBy group_by, Metric metric, Alignment key_alignment,
         Alignment value_alignment, const RopeSpec& rope, GroupingOptions::Method grouping,
         std::uint64_t seed, int gpa_max_iterations, double gpa_tolerance, PolarMethod method) {
        return plan_layer_py(keys, values,
                             {num_groups, group_by, metric, key_alignment, value_alignment, rope, grouping,
                              seed, gpa_max_iterations, gpa_tolerance, method});
      },
      "keys"_a, "values"_a, "num_groups"_a, "group_by"_a = GroupBy::Value, "metric"_a = Metric::Cosine,
      "key_alignment"_a = Alignment::Rope, "value_alignment"_a = Alignment::Orthogonal,
      "rope"_a = rope_default, "grouping"_a = GroupingOptions::Method::LocalSearch, "seed"_a = 0,
      "gpa_max_iterations"_a = 100, "gpa_tolerance"_a = 1e-5, "method"_a = PolarMethod::Auto,
      "Plans one layer from its pre-RoPE key and value Grams: similarity (group_by), grouping into\n"
      "num_groups groups, GPA per group for keys and values, and the predicted merge errors.");
}

/// ConvertedLayer, convert_layer() and the benchmark's C++ baseline.
void bind_convert(nb::module_& m) {
  const RopeSpec rope_default{};
  nb::class_<Converted>(m, "ConvertedLayer",
                        "convert_layer()'s result: the GQA layer and the plan that made it.")
      .def_ro("weights", &Converted::weights, "the merged GQA layer (AttentionWeights)")
      .def_ro("plan", &Converted::plan, "the LayerPlan");

  m.def(
      "convert_layer",
      [](const Array& q, const Array& k, const Array& v, const Array& o, Index num_heads, Index num_groups,
         Gram* keys, Gram* values, Plan* plan, Moments* queries, std::optional<Array> q_bias,
         std::optional<Array> k_bias, std::optional<Array> v_bias, std::optional<Array> o_bias,
         GroupBy group_by, Metric metric, Alignment key_alignment, Alignment value_alignment,
         const RopeSpec& rope, GroupingOptions::Method grouping, std::uint64_t seed, int gpa_max_iterations,
         double gpa_tolerance, PolarMethod method, MergeWeighting merge, double ridge, nb::handle dtype) {
        return convert_layer_py(q, k, v, o, num_heads, num_groups, keys, values, plan, queries, q_bias,
                                k_bias, v_bias, o_bias,
                                {num_groups, group_by, metric, key_alignment, value_alignment, rope, grouping,
                                 seed, gpa_max_iterations, gpa_tolerance, method},
                                merge, ridge, dtype);
      },
      "q"_a, "k"_a, "v"_a, "o"_a, nb::kw_only(), "num_heads"_a, "num_groups"_a, "keys"_a = nb::none(),
      "values"_a = nb::none(), "plan"_a = nb::none(), "queries"_a = nb::none(), "q_bias"_a = nb::none(),
      "k_bias"_a = nb::none(), "v_bias"_a = nb::none(), "o_bias"_a = nb::none(),
      "group_by"_a = GroupBy::Value, "metric"_a = Metric::Cosine, "key_alignment"_a = Alignment::Rope,
      "value_alignment"_a = Alignment::Orthogonal, "rope"_a = rope_default,
      "grouping"_a = GroupingOptions::Method::LocalSearch, "seed"_a = 0, "gpa_max_iterations"_a = 100,
      "gpa_tolerance"_a = 1e-5, "method"_a = PolarMethod::Auto, "merge"_a = MergeWeighting::Mean,
      "ridge"_a = 1e-3, "dtype"_a = nb::none(),
      "Converts one MHA attention layer to GQA with num_groups KV heads, in one call.\n\n"
      "q, k, v, o are a Hugging Face attention module's q_proj/k_proj/v_proj/o_proj weights\n"
      "([H·d, hidden], [H·d, hidden], [H·d, hidden], [hidden, H·d]; NumPy or PyTorch CPU, any float dtype).\n"
      "keys/values: HeadGrams of the layer's pre-RoPE key and value activations (calibration); without\n"
      "them the plan is data-free (HeadGram.from_weights). plan: reuse a LayerPlan instead of planning.\n"
      "queries: the layer's HeadMoments (pre-RoPE query projections), which merge=QUERY_AWARE and FULL "
      "need.\n"
      "Computes in the Grams' (or plan's) dtype (a dtype argument that disagrees is a ValueError), else\n"
      "in dtype, else float64 for float64 q and float32 otherwise.\n"
      "Returns ConvertedLayer(weights, plan); query head p of the result is old head plan.order[p].");

  m.def("_time_cpp_convert", &time_cpp_convert, "q"_a, "k"_a, "v"_a, "o"_a, "num_heads"_a, "num_groups"_a,
        "keys"_a, "values"_a, "repeats"_a = 5,
        "Seconds of each run of the C++ calls convert_layer makes (AttentionWeights from the arrays, "
        "plan_layer, convert_layer): the benchmark baseline.");
}

}  // namespace

void bind_pipeline(nb::module_& m) {
  nb::enum_<GroupBy>(m, "GroupBy", "Which similarity groups the heads.")
      .value("VALUE", GroupBy::Value, "value similarity (the paper's best Sheared-LLaMA setting)")
      .value("KEY", GroupBy::Key, "key similarity")
      .value("JOINT", GroupBy::Joint, "key + value similarity")
      .value("NONE", GroupBy::None, "adjacent heads, as plain GQA");
  nb::enum_<MergeWeighting>(m, "MergeWeighting", "How a group's aligned heads are merged into one KV head.")
      .value("MEAN", MergeWeighting::Mean, "the plain mean of the group's rows (the paper's Sec. 3.5)")
      .value("OUTPUT_AWARE", MergeWeighting::OutputAware,
             "values weighted by the output projection: min Σ_h ‖O_h(V_h − V_g)‖²")
      .value("QUERY_AWARE", MergeWeighting::QueryAware,
             "keys weighted by query statistics (convert_layer(queries=HeadMoments))")
      .value("FULL", MergeWeighting::Full, "both (needs queries, as QUERY_AWARE)");
  bind_weights(m);
  bind_merge_error(m);
  bind_plan(m);
  bind_convert(m);
}

}  // namespace headalign::python

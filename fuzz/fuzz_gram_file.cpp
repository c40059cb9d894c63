// Fuzz target: Gram files (io::save_gram, io::save_grams sets with query moments) and what a
// conversion does with what they hold: a plan of the loaded key and value Grams must be finite.
#include <headalign/headalign.hpp>
#include <headalign/io/gram_file.hpp>

#include "fuzz_common.hpp"

using namespace headalign;

namespace {

// Plans one layer from the loaded Grams (small ones only) and checks that everything is finite.
template <class S>
void plan_loaded(const HeadGram<S>& keys, const HeadGram<S>& values, Index groups) {
  if (keys.dim() > 48) return;
  PlanOptions o;
  o.num_groups = groups;
  o.metric = keys.normalize_rows() ? Metric::Cosine : Metric::Distance;
  o.grouping.steps = 200;
  const LayerPlan<S> plan = plan_layer(keys, values, o);
  fuzz::check_finite(plan.similarity, "the similarity");
  for (const auto& r : plan.key_rotations) fuzz::check_finite(r, "a key rotation");
  for (const auto& r : plan.value_rotations) fuzz::check_finite(r, "a value rotation");
  for (const auto* e : {&plan.key_error, &plan.value_error})
    if (!std::isfinite(static_cast<double>(e->total)) || !std::isfinite(static_cast<double>(e->relative())))
      fuzz::finding("a predicted merge error is not finite");
}

template <class S>
void run(const std::string& path) {
  fuzz::expect_contract([&] { (void)io::load_gram<S>(path); });
  fuzz::expect_contract([&] {
    if (!io::is_gram_set(path)) return;
    const HeadGram<S> keys = io::load_gram<S>(path, "layers.0.key");
    const HeadGram<S> values = io::load_gram<S>(path, "layers.0.value");
    fuzz::expect_contract([&] { (void)io::load_moments<S>(path, "layers.0.query"); });
    for (Index groups : {Index(1), keys.num_heads() > 1 ? Index(2) : Index(1), keys.num_heads()})
      fuzz::expect_contract([&] { plan_loaded(keys, values, groups); });
  });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string path = fuzz::scratch_file("gram.safetensors", data, size);
  run<double>(path);
  run<float>(path);
  return 0;
}

// headalign._core, third unit: whole-checkpoint conversion (io::convert_checkpoint()), with the
// defaults of io::ConvertOptions, which are headalign-convert's.
#include "bindings.hpp"

#include <headalign/io/convert_checkpoint.hpp>

#include <nanobind/stl/filesystem.h>

#include <filesystem>
#include <stdexcept>

namespace headalign::python {
namespace {

using namespace nb::literals;

nb::object convert_checkpoint_py(const std::filesystem::path& model, const std::filesystem::path& output,
                                 Index kv_heads, const std::optional<std::filesystem::path>& calibration,
                                 GroupBy group_by, Metric criterion, std::optional<Alignment> keys,
                                 Alignment values, GroupingOptions::Method grouping, GpaUpdate gpa,
                                 std::uint64_t seed, int threads, MergeWeighting merge, bool aligned_only,
                                 const std::optional<std::filesystem::path>& save_grams,
                                 std::optional<nb::callable> progress) {
  io::ConvertOptions o;
  o.model = model.string();
  o.output = output.string();
  o.kv_heads = kv_heads;
  o.calibration = calibration ? calibration->string() : std::string("none");
  o.group_by = group_by;
  o.criterion = criterion;
  o.keys = keys;
  o.values = values;
  o.grouping = grouping;
  o.gpa = gpa;
  o.seed = seed;
  o.threads = threads;
  o.merge = merge;
  o.aligned_only = aligned_only;
  if (save_grams) o.save_grams = save_grams->string();
  io::ProgressCallback callback;
  if (progress) {
    // Called from the converting threads: with the GIL, and a Python error becomes a C++ one here,
    // so that it never leaves the GIL's scope.
    callback = [&progress](std::size_t done, std::size_t total) {
      nb::gil_scoped_acquire gil;
      try {
        (*progress)(done, total);
      } catch (const nb::python_error& e) {
        throw std::runtime_error(std::string("convert_checkpoint: the progress callback raised: ") +
                                 e.what());
      }
    };
  }
  const io::ConvertReport report = without_gil([&] { return io::convert_checkpoint(o, callback); });
  return nb::module_::import_("json").attr("loads")(report.json.dump());
}

}  // namespace

void bind_checkpoint(nb::module_& m) {
  const io::ConvertOptions d{};
  m.def(
      "convert_checkpoint", &convert_checkpoint_py, "model_dir"_a, "output_dir"_a, nb::kw_only(),
      "kv_heads"_a, "calibration"_a, "group_by"_a = d.group_by, "criterion"_a = d.criterion,
      "keys"_a = d.keys, "values"_a = d.values, "grouping"_a = d.grouping, "gpa"_a = d.gpa, "seed"_a = d.seed,
      "threads"_a = d.threads, "merge"_a = d.merge, "aligned_only"_a = d.aligned_only,
      "save_grams"_a = nb::none(), "progress"_a = nb::none(),
      "Converts a Hugging Face MHA checkpoint directory to GQA with kv_heads KV heads, as headalign-convert "
      "does\n"
      "(same defaults, same bytes out), and returns report.json's content as a dict.\n\n"
      "calibration: a safetensors file of activations (layers.{i}.key / .value [tokens, H·d], optionally\n"
      ".query), a Gram set (save_grams, the CLI's --save-grams), or None / 'none' for the data-free mode.\n"
      "keys: the key alignment (None: ROPE for RoPE models, ORTHOGONAL otherwise). merge FULL is query- and\n"
      "output-aware where the calibration has query statistics, output-aware otherwise. output_dir must not\n"
      "exist; it is written atomically (nothing is left there on failure). progress(done, total) is called\n"
      "after each layer. Raises ValueError for options that do not fit the model, OSError for missing,\n"
      "malformed or mismatching files.");
}

}  // namespace headalign::python

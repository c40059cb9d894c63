/// @file io/convert_checkpoint.hpp
/// @brief A whole Hugging Face checkpoint from MHA to GQA in one call: read the model directory
/// and its calibration, plan and convert every layer (on several threads if asked), and write the
/// converted checkpoint — shards, index, config and report — atomically.
///
/// This is what `headalign-convert` runs and what Python's `headalign.convert_checkpoint()` calls;
/// both take the defaults of ConvertOptions, so the two front ends write the same bytes.
///
/// Calibration (ConvertOptions::calibration) is one of:
/// - a safetensors file with, for every layer i, `layers.{i}.key` and `layers.{i}.value`
///   [tokens, H·d] (pre-RoPE outputs of the key and value projections, F32/F16/BF16/F64), read in
///   chunks, and optionally `layers.{i}.query` (pre-RoPE queries, for query-aware key merging);
/// - a Gram set (io/gram_file.hpp: `layers.{i}.key`, `.value`, optionally `.query` moments), for
///   instance one written by ConvertOptions::save_grams;
/// - `none` (or empty): the data-free mode, \f$ G_{ij} = W_i W_j^\top \f$ and query moments
///   \f$ W_{q,h} W_{q,h}^\top \f$ (HeadGram::from_weights()).
///
/// The output directory gets config.json with `num_key_value_heads` = kv_heads, the safetensors
/// (sharded as the input) with q/k/v/o replaced in their original dtype and every other tensor
/// copied bit-exact, the model's other files, and report.json. It is assembled in a temporary
/// directory beside the output and renamed at the end: a failed or killed run leaves nothing there.
#ifndef HEADALIGN_IO_CONVERT_CHECKPOINT_HPP
#define HEADALIGN_IO_CONVERT_CHECKPOINT_HPP

#include "../pipeline.hpp"
#include "gram_file.hpp"
#include "hf_model.hpp"
#include "safetensors.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <unistd.h>

namespace headalign::io {

/// @brief Settings of convert_checkpoint(); the defaults are the CLI's and Python's.
struct ConvertOptions {
  std::string model;        ///< model directory (config.json + model.safetensors or a sharded index)
  std::string calibration;  ///< activations file, Gram set, or "none" / empty (data-free)
  std::string output;       ///< output directory; must not exist, its parent must
  Index kv_heads = 0;       ///< KV heads after merging (must divide the number of heads)
  GroupBy group_by = GroupBy::Value;
  Metric criterion = Metric::Cosine;  ///< Cosine: row-normalised Grams (`cos`); Distance: `dist`
  std::optional<Alignment> keys;      ///< unset: Rope for RoPE models, Orthogonal otherwise
  Alignment values = Alignment::Orthogonal;
  GroupingOptions::Method grouping = GroupingOptions::Method::LocalSearch;
  GpaUpdate gpa = GpaUpdate::Sequential;
  std::uint64_t seed = 0;  ///< of the grouping search
  int threads = 1;         ///< layers converted in parallel
  /// Full = query- and output-aware where the calibration has query statistics, output-aware
  /// otherwise (ConvertReport::merge_used says which).
  MergeWeighting merge = MergeWeighting::Full;
  bool aligned_only = false;  ///< write the aligned MHA checkpoint (same function), without merging
  std::string save_grams;     ///< also save the accumulated statistics as a Gram set here
};

/// @brief Where the calibration came from.
enum class CalibrationKind { Activations, Grams, DataFree };

/// @brief The predicted errors of one converted layer, as shares of the heads' energy (−1: no
/// query statistics, so no logit error).
struct LayerSummary {
  double key_error = 0, key_error_mean_pool = 0;      ///< aligned vs plain mean-pool
  double value_error = 0, value_error_mean_pool = 0;  ///< aligned vs plain mean-pool
  double logit_error = -1, logit_error_mean = -1;     ///< the chosen key merge vs the mean (aligned)
  double output_error = 0, output_error_mean = 0;     ///< the chosen value merge vs the mean (aligned)
  int gpa_iterations = 0;
  bool converged = true;
  double seconds = 0;
};

/// @brief What convert_checkpoint() did: report.json's content and its summary.
struct ConvertReport {
  nlohmann::json json;  ///< exactly what report.json holds
  ModelConfig model;
  Alignment keys = Alignment::None;  ///< the key alignment used (ConvertOptions::keys resolved)
  MergeWeighting merge_used = MergeWeighting::Mean;
  CalibrationKind calibration = CalibrationKind::DataFree;
  bool query_statistics = false;
  Index kv_heads = 0;  ///< KV heads written (the model's heads with aligned_only)
  int threads = 1;
  double seconds = 0;  ///< the conversion of the layers (not the writing)
  std::vector<LayerSummary> layers;
};

/// Called after each layer with (layers done, layers in all), from the converting threads one at
/// a time.
using ProgressCallback = std::function<void(std::size_t, std::size_t)>;

/// @brief The names of an option's values, as the CLI, report.json and messages spell them:
/// option_names<GroupBy>() = value, key, joint, none; <Metric> = cos, dist; <Alignment> = rope,
/// orthogonal, rotation, none; <GroupingOptions::Method> = local, hill, exact; <GpaUpdate> =
/// reference, sequential; <MergeWeighting> = mean, output, query, full.
template <class E>
const std::vector<std::pair<std::string, E>>& option_names();

template <>
inline const std::vector<std::pair<std::string, GroupBy>>& option_names<GroupBy>() {
  static const std::vector<std::pair<std::string, GroupBy>> n{
      {"value", GroupBy::Value}, {"key", GroupBy::Key}, {"joint", GroupBy::Joint}, {"none", GroupBy::None}};
  return n;
}
template <>
inline const std::vector<std::pair<std::string, Metric>>& option_names<Metric>() {
  static const std::vector<std::pair<std::string, Metric>> n{{"cos", Metric::Cosine},
                                                             {"dist", Metric::Distance}};
  return n;
}
template <>
inline const std::vector<std::pair<std::string, Alignment>>& option_names<Alignment>() {
  static const std::vector<std::pair<std::string, Alignment>> n{{"rope", Alignment::Rope},
                                                                {"orthogonal", Alignment::Orthogonal},
                                                                {"rotation", Alignment::Rotation},
                                                                {"none", Alignment::None}};
  return n;
}
template <>
inline const std::vector<std::pair<std::string, GroupingOptions::Method>>&
option_names<GroupingOptions::Method>() {
  static const std::vector<std::pair<std::string, GroupingOptions::Method>> n{
      {"local", GroupingOptions::Method::LocalSearch},
      {"hill", GroupingOptions::Method::HillClimb},
      {"exact", GroupingOptions::Method::Exact}};
  return n;
}
template <>
inline const std::vector<std::pair<std::string, GpaUpdate>>& option_names<GpaUpdate>() {
  static const std::vector<std::pair<std::string, GpaUpdate>> n{{"reference", GpaUpdate::Reference},
                                                                {"sequential", GpaUpdate::Sequential}};
  return n;
}
template <>
inline const std::vector<std::pair<std::string, MergeWeighting>>& option_names<MergeWeighting>() {
  static const std::vector<std::pair<std::string, MergeWeighting>> n{{"mean", MergeWeighting::Mean},
                                                                     {"output", MergeWeighting::OutputAware},
                                                                     {"query", MergeWeighting::QueryAware},
                                                                     {"full", MergeWeighting::Full}};
  return n;
}

/// The name of @p value in option_names<E>().
template <class E>
const std::string& option_name(E value) {
  for (const auto& n : option_names<E>())
    if (n.second == value) return n.first;
  ::headalign::detail::throw_invalid_argument("option value " + std::to_string(static_cast<int>(value)) +
                                              " has no name");
}

namespace detail {

using ::headalign::detail::throw_invalid_argument;
using ::headalign::detail::throw_io_error;
namespace fs = std::filesystem;

inline std::string layer_tensor(Index layer, const char* what) {
  return "layers." + std::to_string(layer) + "." + what;
}

/// The calibration source and whether it has query statistics for every layer.
struct Calibration {
  CalibrationKind kind = CalibrationKind::DataFree;
  bool queries = false;
};

/// Everything a layer's conversion needs, decided once before any heavy work.
struct ConvertPlan {
  ModelConfig config;
  Calibration calibration;
  Alignment keys = Alignment::None;
  MergeWeighting merge_used = MergeWeighting::Mean;
  PlanOptions plan;
  MergeOptions merge;
  bool cos = true;
};

/// Whether every layer has query statistics; io_error when only some have.
inline bool all_or_none(const SafetensorsReader& r, const ConvertOptions& o, const ModelConfig& cfg) {
  Index present = 0;
  for (Index i = 0; i < cfg.num_layers; ++i) present += r.contains(layer_tensor(i, "query"));
  if (present != 0 && present != cfg.num_layers)
    throw_io_error("calibration file '" + o.calibration + "' has query statistics for " +
                   std::to_string(present) + " of " + std::to_string(cfg.num_layers) +
                   " layers ('layers.{i}.query'); give them for every layer or none");
  return present == cfg.num_layers;
}

/// Checks a Gram set's metadata against the model: every layer's key and value Grams of the
/// model's shape and the criterion's normalisation, and query moments for all layers or none.
inline Calibration inspect_gram_set(const SafetensorsReader& r, const ConvertOptions& o,
                                    const ModelConfig& cfg, bool cos) {
  const auto& meta = r.metadata();
  const std::string heads_text = std::to_string(cfg.num_heads), dim_text = std::to_string(cfg.head_dim);
  for (Index i = 0; i < cfg.num_layers; ++i)
    for (const std::string& name : {layer_tensor(i, "key"), layer_tensor(i, "value")}) {
      if (!r.contains(name))
        throw_io_error("calibration Gram set '" + o.calibration + "' lacks '" + name + "'");
      auto heads = meta.find(name + ".num_heads"), dim = meta.find(name + ".head_dim"),
           norm = meta.find(name + ".normalize_rows");
      if (heads == meta.end() || dim == meta.end() || norm == meta.end())
        throw_io_error("calibration Gram set '" + o.calibration + "' lacks the metadata of '" + name + "'");
      if (heads->second != heads_text || dim->second != dim_text)
        throw_io_error("calibration Gram '" + name + "' is " + heads->second + " heads × " + dim->second +
                       ", the model has " + heads_text + " × " + dim_text);
      if ((norm->second == "1") != cos)
        throw_io_error("calibration Gram '" + name + "' was accumulated " +
                       (norm->second == "1" ? "with" : "without") + " row normalisation, which criterion " +
                       option_name(o.criterion) + " " + (cos ? "needs" : "does not use"));
    }
  const bool queries = all_or_none(r, o, cfg);
  for (Index i = 0; queries && i < cfg.num_layers; ++i) {
    const std::string name = layer_tensor(i, "query");
    auto heads = meta.find(name + ".num_heads"), dim = meta.find(name + ".head_dim");
    if (heads == meta.end() || dim == meta.end() || heads->second != heads_text || dim->second != dim_text)
      throw_io_error("calibration query moments '" + name + "' lack metadata or are not " + heads_text +
                     " heads × " + dim_text);
  }
  return {CalibrationKind::Grams, queries};
}

/// Checks the calibration file against the model before any heavy work.
inline Calibration inspect_calibration(const ConvertOptions& o, const ModelConfig& cfg, bool cos) {
  if (o.calibration.empty() || o.calibration == "none") return {CalibrationKind::DataFree, true};
  SafetensorsReader r(o.calibration);
  auto format = r.metadata().find("format");
  if (format != r.metadata().end() && format->second == gram_set_format)
    return inspect_gram_set(r, o, cfg, cos);
  const Index width = cfg.num_heads * cfg.head_dim;
  const bool queries = all_or_none(r, o, cfg);
  for (Index i = 0; i < cfg.num_layers; ++i)
    for (const char* what : {"key", "value", "query"}) {
      const std::string name = layer_tensor(i, what);
      if (std::string(what) == "query" && !queries) continue;
      if (!r.contains(name))
        throw_io_error("calibration file '" + o.calibration + "' lacks tensor '" + name + "'");
      const auto& t = r.info(name);
      if (!is_float(t.dtype))
        throw_io_error("calibration tensor '" + name + "' has dtype " + dtype_name(t.dtype) +
                       ", not F32/F16/BF16/F64");
      if (t.shape.size() != 2 || t.shape[1] != width || t.shape[0] == 0)
        throw_io_error("calibration tensor '" + name + "' has shape " +
                       ModelCheckpoint::shape_string(t.shape) + ", expected [tokens > 0, " +
                       std::to_string(width) + "] (num_heads · head_dim)");
    }
  return {CalibrationKind::Activations, queries};
}

/// Checks the options against the model and decides the key alignment and the plan's options.
inline ConvertPlan make_plan(const ConvertOptions& o, const ModelConfig& cfg) {
  ConvertPlan p;
  p.config = cfg;
  if (cfg.num_kv_heads != cfg.num_heads)
    throw_invalid_argument("model '" + o.model + "' already uses GQA (num_key_value_heads = " +
                           std::to_string(cfg.num_kv_heads) + " for " + std::to_string(cfg.num_heads) +
                           " heads); only MHA checkpoints are converted");
  if (o.kv_heads <= 0 || cfg.num_heads % o.kv_heads != 0)
    throw_invalid_argument("kv_heads = " + std::to_string(o.kv_heads) +
                           " does not divide num_attention_heads (" + std::to_string(cfg.num_heads) + ")");
  HEADALIGN_CHECK(o.threads >= 1, "threads (" << o.threads << ") must be at least 1");
  p.keys = o.keys ? *o.keys : cfg.has_rope ? Alignment::Rope : Alignment::Orthogonal;
  if (cfg.has_rope && (p.keys == Alignment::Orthogonal || p.keys == Alignment::Rotation))
    throw_invalid_argument("keys = " + option_name(p.keys) +
                           " would change a RoPE model's function (a general rotation does not commute with "
                           "RoPE); use rope or none");
  if (!cfg.has_rope && p.keys == Alignment::Rope)
    throw_invalid_argument(cfg.model_type + " has no RoPE; use keys = orthogonal or none");
  if (o.values == Alignment::Rope)
    throw_invalid_argument("values = rope: RoPE acts on keys only; use orthogonal, rotation or none");
  p.cos = o.criterion == Metric::Cosine;
  if (cfg.has_rope) p.merge.rope = cfg.rope;
  p.plan.num_groups = o.kv_heads;
  p.plan.group_by = o.group_by;
  p.plan.metric = o.criterion;
  p.plan.key_alignment = p.keys;
  p.plan.value_alignment = o.values;
  p.plan.rope = cfg.rope;
  p.plan.grouping.seed = o.seed;
  p.plan.grouping.method = o.grouping;
  p.plan.gpa.update = o.gpa;
  return p;
}

/// Checks the calibration against the model and decides the merge weighting from it.
inline void add_calibration(const ConvertOptions& o, ConvertPlan& p) {
  p.calibration = inspect_calibration(o, p.config, p.cos);
  // Full = query- and output-aware with query statistics, output-aware without.
  p.merge_used =
      o.merge == MergeWeighting::Full && !p.calibration.queries ? MergeWeighting::OutputAware : o.merge;
  if (o.merge == MergeWeighting::QueryAware && !p.calibration.queries)
    throw_invalid_argument(
        "merge = query needs query statistics: 'layers.{i}.query' [tokens, H·d] (pre-RoPE query "
        "projections) in the calibration file, query moments in the Gram set, or calibration none");
  p.merge.weighting = p.merge_used;
}

/// Runs @p body, reporting a failed filesystem operation as io_error.
template <class Body>
auto filesystem_step(Body&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const fs::filesystem_error& e) {
    throw_io_error(e.what());
  }
}

/// Streams one [tokens, H·d] calibration tensor into a Gram (or query moments), a chunk of rows at a time.
template <class Accumulator>
void accumulate(SafetensorsReader& r, const std::string& name, Accumulator& g) {
  const auto& t = r.info(name);
  const auto rows = static_cast<std::uint64_t>(t.shape[0]), width = static_cast<std::uint64_t>(t.shape[1]);
  const std::uint64_t chunk = std::max<std::uint64_t>(1, (std::uint64_t(4) << 20) / (width * sizeof(float)));
  std::vector<float> buf;
  for (std::uint64_t r0 = 0; r0 < rows; r0 += chunk) {
    const std::uint64_t k = std::min(chunk, rows - r0);
    buf.resize(static_cast<std::size_t>(k * width));
    r.read(name, r0 * width, k * width, buf.data());
    try {
      g.add(buf.data(), static_cast<Index>(k), static_cast<Index>(width));
    } catch (const ::headalign::invalid_argument& e) {
      throw_io_error("calibration tensor '" + name + "', rows " + std::to_string(r0) + "–" +
                     std::to_string(r0 + k - 1) + ": " + ::headalign::message_of(e));
    }
  }
}

/// One layer's calibration statistics.
struct LayerStatistics {
  HeadGram<double> keys, values;
  std::optional<HeadMoments<double>> queries;
};

inline LayerStatistics layer_statistics(const ConvertPlan& p, SafetensorsReader* calib,
                                        const AttentionWeights<double>& w, Index layer) {
  const ModelConfig& cfg = p.config;
  LayerStatistics s{HeadGram<double>(cfg.num_heads, cfg.head_dim, p.cos),
                    HeadGram<double>(cfg.num_heads, cfg.head_dim, p.cos),
                    {}};
  switch (p.calibration.kind) {
    case CalibrationKind::Activations:
      accumulate(*calib, layer_tensor(layer, "key"), s.keys);
      accumulate(*calib, layer_tensor(layer, "value"), s.values);
      if (p.calibration.queries)
        accumulate(*calib, layer_tensor(layer, "query"), s.queries.emplace(cfg.num_heads, cfg.head_dim));
      break;
    case CalibrationKind::Grams:
      s.keys = read_gram<double>(*calib, layer_tensor(layer, "key"));
      s.values = read_gram<double>(*calib, layer_tensor(layer, "value"));
      if (p.calibration.queries)
        s.queries.emplace(read_moments<double>(*calib, layer_tensor(layer, "query")));
      break;
    case CalibrationKind::DataFree:
      s.keys = HeadGram<double>::from_weights(w.k, cfg.num_heads, cfg.head_dim);
      s.values = HeadGram<double>::from_weights(w.v, cfg.num_heads, cfg.head_dim);
      s.queries.emplace(HeadMoments<double>::from_weights(w.q, cfg.num_heads, cfg.head_dim));
      break;
  }
  return s;
}

/// One converted layer: its weights, its report.json entry and summary, and (for save_grams) its
/// statistics.
struct LayerResult {
  AttentionWeights<double> converted;
  nlohmann::json report;
  LayerSummary summary;
  std::optional<LayerStatistics> statistics;
};

inline nlohmann::json error_json(const MergeError<double>& e) {
  return {{"total", e.total},
          {"relative", e.relative()},
          {"energy", e.energy},
          {"per_group", std::vector<double>(e.per_group.data(), e.per_group.data() + e.per_group.size())}};
}

inline nlohmann::json gpa_json(const std::vector<GpaResult<double>>& r) {
  nlohmann::json a = nlohmann::json::array();
  for (const auto& g : r)
    a.push_back({{"iterations", g.iterations}, {"converged", g.converged}, {"objective", g.objective}});
  return a;
}

inline nlohmann::json matrix_json(const Matrix<double>& m) {
  nlohmann::json rows = nlohmann::json::array();
  for (Index i = 0; i < m.rows(); ++i) {
    std::vector<double> row(static_cast<std::size_t>(m.cols()));
    for (Index j = 0; j < m.cols(); ++j) row[static_cast<std::size_t>(j)] = m(i, j);
    rows.push_back(row);
  }
  return rows;
}

/// A layer's summary and report.json entry from its plan and assessment.
inline void describe_layer(LayerResult& res, Index layer, const LayerStatistics& s,
                           const LayerPlan<double>& plan, const MergeAssessment<double>& assessed,
                           const MergeError<double>& key_base, const MergeError<double>& value_base) {
  LayerSummary& sum = res.summary;
  sum.output_error = assessed.value_output.relative();
  sum.output_error_mean = assessed.value_output_mean.relative();
  nlohmann::json merge_report = {{"output_error", error_json(assessed.value_output)},
                                 {"output_error_mean", error_json(assessed.value_output_mean)}};
  if (s.queries) {
    sum.logit_error = assessed.key_logit.relative();
    sum.logit_error_mean = assessed.key_logit_mean.relative();
    merge_report["logit_error"] = error_json(assessed.key_logit);
    merge_report["logit_error_mean"] = error_json(assessed.key_logit_mean);
  }
  sum.key_error = plan.key_error.relative();
  sum.value_error = plan.value_error.relative();
  sum.key_error_mean_pool = key_base.relative();
  sum.value_error_mean_pool = value_base.relative();
  for (const auto& g : plan.key_gpa) sum.gpa_iterations += g.iterations;
  for (const auto& g : plan.value_gpa) sum.gpa_iterations += g.iterations;
  sum.converged = plan.converged();
  res.report = {{"layer", layer},
                {"tokens", {{"keys", s.keys.tokens()}, {"values", s.values.tokens()}}},
                {"groups", plan.grouping.groups},
                {"order", plan.order},
                {"grouping_score", plan.grouping.score},
                {"similarity", matrix_json(plan.similarity)},
                {"keys",
                 {{"gpa", gpa_json(plan.key_gpa)},
                  {"predicted_error", error_json(plan.key_error)},
                  {"mean_pool_predicted_error", error_json(key_base)}}},
                {"values",
                 {{"gpa", gpa_json(plan.value_gpa)},
                  {"predicted_error", error_json(plan.value_error)},
                  {"mean_pool_predicted_error", error_json(value_base)}}},
                {"merge", merge_report},
                {"converged", sum.converged}};
}

/// Reads, plans, converts and assesses one layer.
inline LayerResult convert_one(const ConvertOptions& o, const ConvertPlan& p, ModelCheckpoint& ckpt,
                               SafetensorsReader* calib, Index layer) {
  const auto start = std::chrono::steady_clock::now();
  const AttentionWeights<double> w = ckpt.read_attention<double>(layer);
  LayerStatistics s = layer_statistics(p, calib, w, layer);
  const HeadMoments<double>* queries = s.queries ? &*s.queries : nullptr;
  const LayerPlan<double> plan = plan_layer(s.keys, s.values, p.plan);
  const auto contiguous = group_contiguous(p.config.num_heads, p.plan.num_groups).groups;
  const MergeError<double> key_base = predicted_merge_error(s.keys, contiguous),
                           value_base = predicted_merge_error(s.values, contiguous);
  // One alignment of the weights serves the written layer and the predicted errors.
  ConvertedLayer<double> converted = convert_and_assess(s.keys, s.values, w, plan, p.merge, queries);
  LayerResult res;
  res.converted = std::move(o.aligned_only ? converted.aligned : converted.merged);
  // Never write a layer with NaN/Inf (the inputs were checked; this guards the arithmetic).
  try {
    res.converted.validate();
  } catch (const ::headalign::invalid_argument& e) {
    throw_invalid_argument("layer " + std::to_string(layer) + ": the converted layer is not valid (" +
                           ::headalign::message_of(e) + "); nothing was written");
  }
  describe_layer(res, layer, s, plan, converted.assessment, key_base, value_base);
  res.summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  res.report["seconds"] = res.summary.seconds;
  if (!o.save_grams.empty()) {
    if (p.calibration.kind == CalibrationKind::DataFree)
      s.queries.reset();  // data-free moments are not calibration
    res.statistics.emplace(std::move(s));
  }
  return res;
}

/// Converts every layer, on up to @p threads threads (each with its own readers: readers are not
/// shared); the first error stops the others and is rethrown.
inline std::vector<LayerResult> convert_layers(const ConvertOptions& o, const ConvertPlan& p,
                                               ModelCheckpoint& ckpt, int threads,
                                               const ProgressCallback& progress) {
  const std::size_t layers = static_cast<std::size_t>(p.config.num_layers);
  std::vector<LayerResult> results(layers);
  std::atomic<std::size_t> next{0};
  std::size_t done = 0;
  std::exception_ptr error;
  std::mutex mutex;
  auto worker = [&](bool use_main) {
    try {
      std::optional<ModelCheckpoint> own;
      if (!use_main) own.emplace(o.model);
      ModelCheckpoint& ck = use_main ? ckpt : *own;
      std::unique_ptr<SafetensorsReader> calib;
      if (p.calibration.kind != CalibrationKind::DataFree)
        calib = std::make_unique<SafetensorsReader>(o.calibration);
      for (std::size_t i; (i = next++) < layers;) {
        {
          std::lock_guard<std::mutex> lock(mutex);
          if (error) return;
        }
        results[i] = convert_one(o, p, ck, calib.get(), static_cast<Index>(i));
        std::lock_guard<std::mutex> lock(mutex);
        ++done;
        if (progress) progress(done, layers);
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex);
      if (!error) error = std::current_exception();
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(worker, false);
  worker(true);
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
  return results;
}

/// Removes a temporary output directory unless the run succeeded.
struct TempDir {
  fs::path path;
  bool keep = false;
  ~TempDir() {
    if (!keep && !path.empty()) {
      std::error_code ec;
      fs::remove_all(path, ec);
    }
  }
};

inline void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  out.flush();
  if (!out) throw_io_error("cannot write '" + path.string() + "'");
}

/// Every shard as in the input, the attention tensors replaced in their original dtype; returns
/// the bytes of tensor data written.
inline std::uint64_t write_shards(ModelCheckpoint& ckpt, const std::vector<LayerResult>& results,
                                  const fs::path& dir) {
  using Weights = AttentionWeights<double>;
  // Tensor name → (layer, which part).
  std::map<std::string, std::pair<Index, char>> replaced;
  for (Index i = 0; i < ckpt.config().num_layers; ++i) {
    const auto n = ckpt.attention_names(i);
    const std::pair<const std::string*, char> parts[] = {{&n.q, 'q'},      {&n.k, 'k'},      {&n.v, 'v'},
                                                         {&n.o, 'o'},      {&n.q_bias, 'Q'}, {&n.k_bias, 'K'},
                                                         {&n.v_bias, 'V'}, {&n.o_bias, 'O'}};
    for (const auto& part : parts)
      if (!part.first->empty()) replaced[*part.first] = {i, part.second};
  }
  std::uint64_t total_size = 0;
  for (const std::string& shard : ckpt.shards()) {
    SafetensorsReader& r = ckpt.reader(shard);
    SafetensorsWriter writer;
    for (const auto& kv : r.metadata()) writer.set_metadata(kv.first, kv.second);
    for (const std::string& name : r.names_in_file_order()) {
      const TensorInfo& t = r.info(name);
      auto it = replaced.find(name);
      if (it == replaced.end()) {
        writer.add_raw(name, t.dtype, t.shape, r.read_raw(name));
        continue;
      }
      const Weights& w = results[static_cast<std::size_t>(it->second.first)].converted;
      const auto add = [&](const auto& m, std::vector<std::int64_t> shape) {
        writer.add_as(name, t.dtype, std::move(shape), m.data());
      };
      switch (it->second.second) {
        case 'q':
          add(w.q, {w.q.rows(), w.q.cols()});
          break;
        case 'k':
          add(w.k, {w.k.rows(), w.k.cols()});
          break;
        case 'v':
          add(w.v, {w.v.rows(), w.v.cols()});
          break;
        case 'o':
          add(w.o, {w.o.rows(), w.o.cols()});
          break;
        case 'Q':
          add(w.q_bias, {w.q_bias.size()});
          break;
        case 'K':
          add(w.k_bias, {w.k_bias.size()});
          break;
        case 'V':
          add(w.v_bias, {w.v_bias.size()});
          break;
        default:
          add(w.o_bias, {w.o_bias.size()});
          break;
      }
    }
    total_size += writer.data_bytes();
    writer.write((dir / shard).string());
  }
  return total_size;
}

/// The index (with the new total size), config.json with the new KV-head count, and the model's
/// other files (tokenizer, generation config, pooling settings, ...) unchanged.
inline void write_model_files(const ConvertOptions& o, const ModelCheckpoint& ckpt, Index kv_heads,
                              std::uint64_t total_size, const fs::path& dir) {
  if (ckpt.sharded()) {
    nlohmann::json index = parse_json_file(o.model + "/model.safetensors.index.json");
    index["metadata"]["total_size"] = total_size;
    write_text(dir / "model.safetensors.index.json", index.dump(2) + "\n");
  }
  nlohmann::json config = ckpt.config().json;
  config["num_key_value_heads"] = kv_heads;
  write_text(dir / "config.json", config.dump(2) + "\n");
  std::set<std::string> written(ckpt.shards().begin(), ckpt.shards().end());
  written.insert({"config.json", "model.safetensors.index.json", "report.json"});
  for (const auto& entry : fs::directory_iterator(o.model)) {
    const std::string name = entry.path().filename().string();
    if (written.count(name)) continue;
    fs::copy(entry.path(), dir / name, fs::copy_options::recursive);
  }
}

inline nlohmann::json report_json(const ConvertOptions& o, const ConvertReport& r,
                                  const std::vector<LayerResult>& results) {
  const ModelConfig& cfg = r.model;
  nlohmann::json report;
  report["model"] = o.model;
  report["model_type"] = cfg.model_type;
  report["num_layers"] = cfg.num_layers;
  report["num_heads"] = cfg.num_heads;
  report["head_dim"] = cfg.head_dim;
  report["kv_heads"] = r.kv_heads;
  report["aligned_only"] = o.aligned_only;
  report["settings"] = {{"group_by", option_name(o.group_by)},
                        {"criterion", option_name(o.criterion)},
                        {"keys", option_name(r.keys)},
                        {"values", option_name(o.values)},
                        {"grouping", option_name(o.grouping)},
                        {"gpa", option_name(o.gpa)},
                        {"merge", option_name(o.merge)},
                        {"merge_used", option_name(r.merge_used)},
                        {"seed", o.seed},
                        {"threads", r.threads}};
  const char* kind = r.calibration == CalibrationKind::Activations ? "activations"
                     : r.calibration == CalibrationKind::Grams     ? "grams"
                                                                   : "data-free";
  report["calibration"] = {{"source", o.calibration.empty() ? std::string("none") : o.calibration},
                           {"kind", kind},
                           {"query_statistics", r.query_statistics}};
  report["seconds"] = r.seconds;
  report["layers"] = nlohmann::json::array();
  for (const auto& res : results) report["layers"].push_back(res.report);
  return report;
}

/// The statistics of every layer as a Gram set (ConvertOptions::save_grams).
inline void save_statistics(const std::string& path, const std::vector<LayerResult>& results) {
  std::vector<std::pair<std::string, const HeadGram<double>*>> grams;
  std::vector<std::pair<std::string, const HeadMoments<double>*>> moments;
  for (std::size_t i = 0; i < results.size(); ++i) {
    const LayerStatistics& s = *results[i].statistics;
    grams.emplace_back(layer_tensor(static_cast<Index>(i), "key"), &s.keys);
    grams.emplace_back(layer_tensor(static_cast<Index>(i), "value"), &s.values);
    if (s.queries) moments.emplace_back(layer_tensor(static_cast<Index>(i), "query"), &*s.queries);
  }
  save_grams(path, grams, moments);
}

}  // namespace detail

/// @brief Converts the checkpoint in @p options.model to GQA (see the file's description).
///
/// Every option is checked against the model and the calibration before any layer is converted:
/// a GQA model, kv_heads that do not divide the heads, a key alignment that does not commute
/// with the model's RoPE, calibration for another shape or criterion, or merge = query without
/// query statistics are refused up front.
/// @param progress called after each layer (may be empty)
/// @return report.json's content and a per-layer summary
/// @throws invalid_argument for options that do not fit the model; io_error for missing,
///         malformed or mismatching files, an existing output, or a write that fails — the output
///         directory does not exist then
inline ConvertReport convert_checkpoint(const ConvertOptions& options,
                                        const ProgressCallback& progress = {}) {
  namespace fs = std::filesystem;
  HEADALIGN_CHECK(!options.output.empty(), "convert_checkpoint: no output directory given");
  ModelCheckpoint ckpt(options.model);
  const fs::path out(options.output);
  detail::ConvertPlan plan = detail::make_plan(options, ckpt.config());
  if (fs::exists(out))
    detail::throw_io_error("output '" + options.output + "' already exists; remove it or choose another");
  detail::add_calibration(options, plan);

  ConvertReport report;
  report.model = ckpt.config();
  report.keys = plan.keys;
  report.merge_used = plan.merge_used;
  report.calibration = plan.calibration.kind;
  report.query_statistics = plan.calibration.queries;
  report.kv_heads = options.aligned_only ? report.model.num_heads : options.kv_heads;
  report.threads = std::max(1, std::min<int>(options.threads, static_cast<int>(report.model.num_layers)));

  detail::TempDir tmp;
  const fs::path parent = out.has_parent_path() ? out.parent_path() : fs::path(".");
  if (!fs::is_directory(parent))
    detail::throw_io_error("the parent directory of the output ('" + parent.string() + "') does not exist");
  tmp.path = parent / (out.filename().string() + ".tmp." + std::to_string(::getpid()));
  std::error_code ec;
  if (!fs::create_directory(tmp.path, ec) || ec)
    detail::throw_io_error("cannot create '" + tmp.path.string() + "'" +
                           (ec ? " (" + ec.message() + ")" : std::string()));

  const auto start = std::chrono::steady_clock::now();
  const std::vector<detail::LayerResult> results =
      detail::convert_layers(options, plan, ckpt, report.threads, progress);
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (const auto& r : results) report.layers.push_back(r.summary);

  const std::uint64_t total_size = detail::write_shards(ckpt, results, tmp.path);
  detail::filesystem_step(
      [&] { detail::write_model_files(options, ckpt, report.kv_heads, total_size, tmp.path); });
  report.json = detail::report_json(options, report, results);
  detail::write_text(tmp.path / "report.json", report.json.dump(2) + "\n");
  if (!options.save_grams.empty()) detail::save_statistics(options.save_grams, results);

  fs::rename(tmp.path, out, ec);
  if (ec)
    detail::throw_io_error("cannot rename '" + tmp.path.string() + "' to '" + options.output + "' (" +
                           ec.message() + ")");
  tmp.keep = true;
  return report;
}

}  // namespace headalign::io

#endif  // HEADALIGN_IO_CONVERT_CHECKPOINT_HPP

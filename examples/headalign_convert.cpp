// headalign-convert: convert a Hugging Face MHA checkpoint (safetensors) to GQA by aligning
// attention heads before merging them.
//
//   headalign-convert --model DIR --calibration FILE|none --kv-heads G --output DIR
//                     [--group-by value|key|joint|none] [--criterion cos|dist]
//                     [--keys auto|rope|orthogonal|none] [--values orthogonal|none]
//                     [--grouping local|hill|exact] [--gpa reference|sequential] [--seed N] [--threads N]
//                     [--merge mean|output|query|full] [--aligned-only] [--save-grams FILE] [--quiet]
//
// The calibration file holds, for every layer i, `layers.{i}.key` and `layers.{i}.value`
// [tokens, H·d] (pre-RoPE outputs of the key and value projections, F32/F16/BF16/F64), read in
// chunks, and optionally `layers.{i}.query` (pre-RoPE queries, for query-aware key merging); or
// a Gram set written by --save-grams (headalign::save_grams); `none` selects the data-free mode
// (G_ij = W_i W_jᵀ, query moments W_q,h W_q,hᵀ). The output directory gets config.json with
// num_key_value_heads = G, the safetensors (sharded as the input) with q/k/v/o replaced and every
// other tensor copied bit-exact, the model's other files, and report.json. It is assembled in a
// temporary directory beside --output and renamed at the end: a failed run leaves nothing there.
#include <headalign/headalign.hpp>
#include <headalign/io/hf_model.hpp>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

namespace fs = std::filesystem;
using namespace headalign;
using Weights = AttentionWeights<double>;

namespace {

struct Options {
  std::string model, calibration, output, group_by = "value", criterion = "cos", keys = "auto", values = "orthogonal",
                                          grouping = "local", gpa = "sequential", merge = "full", save_grams;
  Index kv_heads = 0;
  std::uint64_t seed = 0;
  int threads = 1;
  bool aligned_only = false, quiet = false;
};

[[noreturn]] void fail(const std::string& message) { throw io_error(message); }

// The calibration source: activations, a Gram set, or nothing (data-free).
enum class CalibrationKind { Activations, Grams, DataFree };

struct Calibration {
  CalibrationKind kind = CalibrationKind::DataFree;
  bool queries = false;  // query statistics for every layer (query-aware key merging)
};

std::string key_name(Index layer) { return "layers." + std::to_string(layer) + ".key"; }
std::string value_name(Index layer) { return "layers." + std::to_string(layer) + ".value"; }
std::string query_name(Index layer) { return "layers." + std::to_string(layer) + ".query"; }

// Whether every layer has query statistics; an error when only some have.
bool all_or_none(const io::SafetensorsReader& r, const Options& o, const io::ModelConfig& cfg) {
  Index present = 0;
  for (Index i = 0; i < cfg.num_layers; ++i) present += r.contains(query_name(i));
  if (present != 0 && present != cfg.num_layers)
    fail("calibration file '" + o.calibration + "' has query statistics for " + std::to_string(present) + " of " +
         std::to_string(cfg.num_layers) + " layers ('layers.{i}.query'); give them for every layer or none");
  return present == cfg.num_layers;
}

// Checks the calibration file against the model before any heavy work.
Calibration inspect_calibration(const Options& o, const io::ModelConfig& cfg, bool cos) {
  if (o.calibration == "none") return {CalibrationKind::DataFree, true};
  io::SafetensorsReader r(o.calibration);
  const Index width = cfg.num_heads * cfg.head_dim;
  auto format = r.metadata().find("format");
  if (format != r.metadata().end() && format->second == "headalign.HeadGramSet") {
    for (Index i = 0; i < cfg.num_layers; ++i)
      for (const std::string& name : {key_name(i), value_name(i)}) {
        if (!r.contains(name)) fail("calibration Gram set '" + o.calibration + "' lacks '" + name + "'");
        const auto& meta = r.metadata();
        auto heads = meta.find(name + ".num_heads"), dim = meta.find(name + ".head_dim"), norm = meta.find(name + ".normalize_rows");
        if (heads == meta.end() || dim == meta.end() || norm == meta.end())
          fail("calibration Gram set '" + o.calibration + "' lacks the metadata of '" + name + "'");
        if (heads->second != std::to_string(cfg.num_heads) || dim->second != std::to_string(cfg.head_dim))
          fail("calibration Gram '" + name + "' is " + heads->second + " heads × " + dim->second + ", the model has " +
               std::to_string(cfg.num_heads) + " × " + std::to_string(cfg.head_dim));
        if ((norm->second == "1") != cos)
          fail("calibration Gram '" + name + "' was accumulated " + (norm->second == "1" ? "with" : "without") +
               " row normalisation, which --criterion " + o.criterion + " " + (cos ? "needs" : "does not use"));
      }
    const bool queries = all_or_none(r, o, cfg);
    for (Index i = 0; queries && i < cfg.num_layers; ++i) {
      const auto& meta = r.metadata();
      auto heads = meta.find(query_name(i) + ".num_heads"), dim = meta.find(query_name(i) + ".head_dim");
      if (heads == meta.end() || dim == meta.end() || heads->second != std::to_string(cfg.num_heads) ||
          dim->second != std::to_string(cfg.head_dim))
        fail("calibration query moments '" + query_name(i) + "' lack metadata or are not " + std::to_string(cfg.num_heads) +
             " heads × " + std::to_string(cfg.head_dim));
    }
    return {CalibrationKind::Grams, queries};
  }
  const bool queries = all_or_none(r, o, cfg);
  for (Index i = 0; i < cfg.num_layers; ++i)
    for (const std::string& name : {key_name(i), value_name(i), query_name(i)}) {
      if (name == query_name(i) && !queries) continue;
      if (!r.contains(name)) fail("calibration file '" + o.calibration + "' lacks tensor '" + name + "'");
      const auto& t = r.info(name);
      if (!io::is_float(t.dtype)) fail("calibration tensor '" + name + "' has dtype " + io::dtype_name(t.dtype) + ", not F32/F16/BF16/F64");
      if (t.shape.size() != 2 || t.shape[1] != width || t.shape[0] == 0)
        fail("calibration tensor '" + name + "' has shape " + io::ModelCheckpoint::shape_string(t.shape) +
             ", expected [tokens > 0, " + std::to_string(width) + "] (num_heads · head_dim)");
    }
  return {CalibrationKind::Activations, queries};
}

// Streams one [tokens, H·d] calibration tensor into a Gram (or query moments), a chunk of rows at a time.
template <class Accumulator>
void accumulate(io::SafetensorsReader& r, const std::string& name, Accumulator& g) {
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
    } catch (const invalid_argument& e) {
      fail("calibration tensor '" + name + "', rows " + std::to_string(r0) + "–" + std::to_string(r0 + k - 1) + ": " + e.what());
    }
  }
}

struct LayerResult {
  Weights converted;
  nlohmann::json report;
  std::unique_ptr<HeadGram<double>> key_gram, value_gram;  // kept only for --save-grams
  std::unique_ptr<HeadMoments<double>> query_moments;      // likewise
  double key_rel = 0, value_rel = 0, key_base = 0, value_base = 0, seconds = 0;
  double output_rel = 0, output_mean_rel = 0, logit_rel = -1, logit_mean_rel = -1;  // -1: no query statistics
  int gpa_iterations = 0;
  bool converged = true;
};

nlohmann::json error_json(const MergeError<double>& e) {
  return {{"total", e.total}, {"relative", e.relative()}, {"energy", e.energy},
          {"per_group", std::vector<double>(e.per_group.data(), e.per_group.data() + e.per_group.size())}};
}

nlohmann::json gpa_json(const std::vector<GpaResult<double>>& r) {
  nlohmann::json a = nlohmann::json::array();
  for (const auto& g : r) a.push_back({{"iterations", g.iterations}, {"converged", g.converged}, {"objective", g.objective}});
  return a;
}

Alignment parse_alignment(const std::string& s) {
  if (s == "rope") return Alignment::Rope;
  if (s == "orthogonal") return Alignment::Orthogonal;
  return Alignment::None;
}

LayerResult convert_one(const Options& o, io::ModelCheckpoint& ckpt, io::SafetensorsReader* calib, const Calibration& calibration,
                        Index layer, const PlanOptions& plan_options, const MergeOptions& merge) {
  const CalibrationKind kind = calibration.kind;
  const auto start = std::chrono::steady_clock::now();
  const io::ModelConfig& cfg = ckpt.config();
  const bool cos = o.criterion == "cos";
  LayerResult res;
  const Weights w = ckpt.read_attention<double>(layer);
  HeadGram<double> gk(cfg.num_heads, cfg.head_dim, cos), gv(cfg.num_heads, cfg.head_dim, cos);
  std::optional<HeadMoments<double>> gq;
  if (kind == CalibrationKind::Activations) {
    accumulate(*calib, key_name(layer), gk);
    accumulate(*calib, value_name(layer), gv);
    if (calibration.queries) accumulate(*calib, query_name(layer), gq.emplace(cfg.num_heads, cfg.head_dim));
  } else if (kind == CalibrationKind::Grams) {
    gk = HeadGram<double>::read_from(*calib, key_name(layer));
    gv = HeadGram<double>::read_from(*calib, value_name(layer));
    if (calibration.queries) gq.emplace(HeadMoments<double>::read_from(*calib, query_name(layer)));
  } else {
    gk = HeadGram<double>::from_weights(w.k, cfg.num_heads, cfg.head_dim);
    gv = HeadGram<double>::from_weights(w.v, cfg.num_heads, cfg.head_dim);
    gq.emplace(HeadMoments<double>::from_weights(w.q, cfg.num_heads, cfg.head_dim));
  }
  const HeadMoments<double>* queries = gq ? &*gq : nullptr;
  const LayerPlan<double> plan = plan_layer(gk, gv, plan_options);
  const auto contiguous = group_contiguous(cfg.num_heads, plan_options.num_groups).groups;
  const MergeError<double> key_base = predicted_merge_error(gk, contiguous), value_base = predicted_merge_error(gv, contiguous);
  // One alignment of the weights serves the written layer and the predicted errors.
  ConvertedLayer<double> converted = convert_and_assess(gk, gv, w, plan, merge, queries);
  res.converted = std::move(o.aligned_only ? converted.aligned : converted.merged);
  const MergeAssessment<double>& assessed = converted.assessment;
  res.output_rel = assessed.value_output.relative();
  res.output_mean_rel = assessed.value_output_mean.relative();
  if (queries) {
    res.logit_rel = assessed.key_logit.relative();
    res.logit_mean_rel = assessed.key_logit_mean.relative();
  }
  nlohmann::json merge_report = {{"output_error", error_json(assessed.value_output)},
                                 {"output_error_mean", error_json(assessed.value_output_mean)}};
  if (queries) {
    merge_report["logit_error"] = error_json(assessed.key_logit);
    merge_report["logit_error_mean"] = error_json(assessed.key_logit_mean);
  }
  // Never write a layer with NaN/Inf (the inputs were checked; this guards the arithmetic).
  try {
    res.converted.validate();
  } catch (const invalid_argument& e) {
    fail("layer " + std::to_string(layer) + ": the converted layer is not valid (" + e.what() + "); nothing was written");
  }
  res.key_rel = plan.key_error.relative();
  res.value_rel = plan.value_error.relative();
  res.key_base = key_base.relative();
  res.value_base = value_base.relative();
  for (const auto& g : plan.key_gpa) res.gpa_iterations += g.iterations;
  for (const auto& g : plan.value_gpa) res.gpa_iterations += g.iterations;
  res.converged = plan.converged();
  nlohmann::json sim = nlohmann::json::array();
  for (Index i = 0; i < plan.similarity.rows(); ++i) {
    std::vector<double> row(static_cast<std::size_t>(plan.similarity.cols()));
    for (Index j = 0; j < plan.similarity.cols(); ++j) row[static_cast<std::size_t>(j)] = plan.similarity(i, j);
    sim.push_back(row);
  }
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  res.report = {{"layer", layer},
                {"tokens", {{"keys", gk.tokens()}, {"values", gv.tokens()}}},
                {"groups", plan.grouping.groups},
                {"order", plan.order},
                {"grouping_score", plan.grouping.score},
                {"similarity", sim},
                {"keys", {{"gpa", gpa_json(plan.key_gpa)}, {"predicted_error", error_json(plan.key_error)},
                          {"mean_pool_predicted_error", error_json(key_base)}}},
                {"values", {{"gpa", gpa_json(plan.value_gpa)}, {"predicted_error", error_json(plan.value_error)},
                            {"mean_pool_predicted_error", error_json(value_base)}}},
                {"merge", merge_report},
                {"converged", res.converged},
                {"seconds", res.seconds}};
  if (!o.save_grams.empty()) {
    res.key_gram = std::make_unique<HeadGram<double>>(std::move(gk));
    res.value_gram = std::make_unique<HeadGram<double>>(std::move(gv));
    if (gq && kind != CalibrationKind::DataFree) res.query_moments = std::make_unique<HeadMoments<double>>(std::move(*gq));
  }
  return res;
}

// Removes the temporary output directory unless the run succeeded.
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

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  out.flush();
  if (!out) fail("cannot write '" + path.string() + "'");
}

void progress(const Options& o, std::size_t done, std::size_t total) {
  if (o.quiet || !::isatty(2)) return;
  const int width = 30, filled = static_cast<int>(width * done / std::max<std::size_t>(total, 1));
  std::fprintf(stderr, "\r[%s%s] %zu/%zu layers", std::string(static_cast<std::size_t>(filled), '#').c_str(),
               std::string(static_cast<std::size_t>(width - filled), ' ').c_str(), done, total);
  if (done == total) std::fprintf(stderr, "\n");
}

int run(const Options& o) {
  io::ModelCheckpoint ckpt(o.model);
  const io::ModelConfig& cfg = ckpt.config();
  if (cfg.num_kv_heads != cfg.num_heads)
    fail("model '" + o.model + "' already uses GQA (num_key_value_heads = " + std::to_string(cfg.num_kv_heads) + " for " +
         std::to_string(cfg.num_heads) + " heads); headalign-convert converts MHA checkpoints");
  if (o.kv_heads <= 0 || cfg.num_heads % o.kv_heads != 0)
    fail("--kv-heads " + std::to_string(o.kv_heads) + " does not divide num_attention_heads (" + std::to_string(cfg.num_heads) + ")");
  std::string keys = o.keys;
  if (keys == "auto") keys = cfg.has_rope ? "rope" : "orthogonal";
  if (cfg.has_rope && keys == "orthogonal")
    fail("--keys orthogonal would change a RoPE model's function (a general rotation does not commute with RoPE); use rope or none");
  if (!cfg.has_rope && keys == "rope") fail(cfg.model_type + " has no RoPE; use --keys orthogonal or none");
  const bool cos = o.criterion == "cos";

  const fs::path out(o.output);
  if (fs::exists(out)) fail("output '" + o.output + "' already exists; remove it or choose another");
  const Calibration calibration = inspect_calibration(o, cfg, cos);
  const CalibrationKind kind = calibration.kind;
  // --merge full = query- and output-aware when query statistics exist, output-aware otherwise.
  MergeOptions merge;
  std::string merge_used = o.merge;
  if (o.merge == "full" && !calibration.queries) merge_used = "output";
  if (o.merge == "query" && !calibration.queries)
    fail("--merge query needs query statistics: 'layers.{i}.query' [tokens, H·d] (pre-RoPE query projections) in the "
         "calibration file, query moments in the Gram set, or --calibration none");
  merge.weighting = merge_used == "output"  ? MergeWeighting::OutputAware
                    : merge_used == "query" ? MergeWeighting::QueryAware
                    : merge_used == "full"  ? MergeWeighting::Full
                                            : MergeWeighting::Mean;
  if (cfg.has_rope) merge.rope = cfg.rope;

  PlanOptions plan_options;
  plan_options.num_groups = o.kv_heads;
  plan_options.group_by = o.group_by == "key" ? GroupBy::Key : o.group_by == "joint" ? GroupBy::Joint
                          : o.group_by == "none" ? GroupBy::None : GroupBy::Value;
  plan_options.metric = cos ? Metric::Cosine : Metric::Distance;
  plan_options.key_alignment = parse_alignment(keys);
  plan_options.value_alignment = parse_alignment(o.values);
  plan_options.rope = cfg.rope;
  plan_options.grouping.seed = o.seed;
  plan_options.gpa.update = o.gpa == "sequential" ? GpaUpdate::Sequential : GpaUpdate::Reference;
  plan_options.grouping.method = o.grouping == "hill" ? GroupingOptions::Method::HillClimb
                                 : o.grouping == "exact" ? GroupingOptions::Method::Exact
                                                         : GroupingOptions::Method::LocalSearch;

  TempDir tmp;
  fs::path parent = out.has_parent_path() ? out.parent_path() : fs::path(".");
  if (!fs::is_directory(parent)) fail("the parent directory of --output ('" + parent.string() + "') does not exist");
  tmp.path = parent / (out.filename().string() + ".tmp." + std::to_string(::getpid()));
  fs::create_directory(tmp.path);

  // Layers in parallel: every worker opens its own readers (the readers are not shared).
  const auto start = std::chrono::steady_clock::now();
  const std::size_t layers = static_cast<std::size_t>(cfg.num_layers);
  std::vector<LayerResult> results(layers);
  std::atomic<std::size_t> next{0}, done{0};
  std::exception_ptr error;
  std::mutex mutex;
  auto worker = [&](bool use_main) {
    try {
      std::optional<io::ModelCheckpoint> own;
      if (!use_main) own.emplace(o.model);
      io::ModelCheckpoint& ck = use_main ? ckpt : *own;
      std::unique_ptr<io::SafetensorsReader> calib;
      if (kind != CalibrationKind::DataFree) calib = std::make_unique<io::SafetensorsReader>(o.calibration);
      for (std::size_t i; (i = next++) < layers;) {
        {
          std::lock_guard<std::mutex> lock(mutex);
          if (error) return;
        }
        results[i] = convert_one(o, ck, calib.get(), calibration, static_cast<Index>(i), plan_options, merge);
        std::lock_guard<std::mutex> lock(mutex);
        progress(o, ++done, layers);
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex);
      if (!error) error = std::current_exception();
    }
  };
  const int threads = std::max(1, std::min<int>(o.threads, static_cast<int>(layers)));
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(worker, false);
  worker(true);
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
  const double convert_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  // Safetensors: every shard as in the input, attention tensors replaced in their original dtype.
  std::map<std::string, std::pair<Index, char>> replaced;  // tensor name → (layer, which)
  for (Index i = 0; i < cfg.num_layers; ++i) {
    const auto n = ckpt.attention_names(i);
    const std::pair<const std::string*, char> parts[] = {{&n.q, 'q'}, {&n.k, 'k'}, {&n.v, 'v'}, {&n.o, 'o'},
                                                         {&n.q_bias, 'Q'}, {&n.k_bias, 'K'}, {&n.v_bias, 'V'}, {&n.o_bias, 'O'}};
    for (const auto& p : parts)
      if (!p.first->empty()) replaced[*p.first] = {i, p.second};
  }
  std::uint64_t total_size = 0;
  for (const std::string& shard : ckpt.shards()) {
    io::SafetensorsReader& r = ckpt.reader(shard);
    io::SafetensorsWriter writer;
    for (const auto& kv : r.metadata()) writer.set_metadata(kv.first, kv.second);
    for (const std::string& name : r.names_in_file_order()) {
      const io::TensorInfo& t = r.info(name);
      auto it = replaced.find(name);
      if (it == replaced.end()) {
        writer.add_raw(name, t.dtype, t.shape, r.read_raw(name));
        continue;
      }
      const Weights& w = results[static_cast<std::size_t>(it->second.first)].converted;
      const auto add = [&](const auto& m, std::vector<std::int64_t> shape) { writer.add_as(name, t.dtype, std::move(shape), m.data()); };
      switch (it->second.second) {
        case 'q': add(w.q, {w.q.rows(), w.q.cols()}); break;
        case 'k': add(w.k, {w.k.rows(), w.k.cols()}); break;
        case 'v': add(w.v, {w.v.rows(), w.v.cols()}); break;
        case 'o': add(w.o, {w.o.rows(), w.o.cols()}); break;
        case 'Q': add(w.q_bias, {w.q_bias.size()}); break;
        case 'K': add(w.k_bias, {w.k_bias.size()}); break;
        case 'V': add(w.v_bias, {w.v_bias.size()}); break;
        default: add(w.o_bias, {w.o_bias.size()}); break;
      }
    }
    total_size += writer.data_bytes();
    writer.write((tmp.path / shard).string());
  }
  if (ckpt.sharded()) {
    nlohmann::json index = io::detail::parse_json_file(o.model + "/model.safetensors.index.json");
    index["metadata"]["total_size"] = total_size;
    write_text(tmp.path / "model.safetensors.index.json", index.dump(2) + "\n");
  }
  nlohmann::json config = cfg.json;
  config["num_key_value_heads"] = o.aligned_only ? cfg.num_heads : o.kv_heads;
  write_text(tmp.path / "config.json", config.dump(2) + "\n");
  // The model's other files (tokenizer, generation config, pooling settings, ...), unchanged.
  std::set<std::string> written(ckpt.shards().begin(), ckpt.shards().end());
  written.insert({"config.json", "model.safetensors.index.json", "report.json"});
  for (const auto& entry : fs::directory_iterator(o.model)) {
    const std::string name = entry.path().filename().string();
    if (written.count(name)) continue;
    fs::copy(entry.path(), tmp.path / name, fs::copy_options::recursive);
  }

  nlohmann::json report;
  report["model"] = o.model;
  report["model_type"] = cfg.model_type;
  report["num_layers"] = cfg.num_layers;
  report["num_heads"] = cfg.num_heads;
  report["head_dim"] = cfg.head_dim;
  report["kv_heads"] = o.aligned_only ? cfg.num_heads : o.kv_heads;
  report["aligned_only"] = o.aligned_only;
  report["settings"] = {{"group_by", o.group_by}, {"criterion", o.criterion}, {"keys", keys}, {"values", o.values},
                        {"grouping", o.grouping}, {"gpa", o.gpa}, {"merge", o.merge}, {"merge_used", merge_used},
                        {"seed", o.seed}, {"threads", threads}};
  report["calibration"] = {{"source", o.calibration},
                           {"kind", kind == CalibrationKind::Activations ? "activations"
                                    : kind == CalibrationKind::Grams     ? "grams"
                                                                         : "data-free"},
                           {"query_statistics", calibration.queries}};
  report["seconds"] = convert_seconds;
  report["layers"] = nlohmann::json::array();
  for (const auto& r : results) report["layers"].push_back(r.report);
  write_text(tmp.path / "report.json", report.dump(2) + "\n");

  if (!o.save_grams.empty()) {
    std::vector<std::pair<std::string, const HeadGram<double>*>> grams;
    std::vector<std::pair<std::string, const HeadMoments<double>*>> moments;
    for (std::size_t i = 0; i < layers; ++i) {
      grams.emplace_back(key_name(static_cast<Index>(i)), results[i].key_gram.get());
      grams.emplace_back(value_name(static_cast<Index>(i)), results[i].value_gram.get());
      if (results[i].query_moments) moments.emplace_back(query_name(static_cast<Index>(i)), results[i].query_moments.get());
    }
    save_grams(o.save_grams, grams, moments);
  }

  fs::rename(tmp.path, out);
  tmp.keep = true;

  if (!o.quiet) {
    std::printf("%s (%s, %lld layers × %lld heads × %lld dims) → %s KV heads, group by %s, %s, keys %s, values %s, merge %s\n",
                o.model.c_str(), cfg.model_type.c_str(), static_cast<long long>(cfg.num_layers),
                static_cast<long long>(cfg.num_heads), static_cast<long long>(cfg.head_dim),
                o.aligned_only ? "aligned MHA (no merging)," : std::to_string(o.kv_heads).c_str(), o.group_by.c_str(),
                o.criterion.c_str(), keys.c_str(), o.values.c_str(), merge_used.c_str());
    std::printf("predicted merge error (share of the heads' energy lost): keys and values aligned vs plain mean-pool;\n"
                "attention logits and outputs, %s merge vs mean merge (both aligned)\n", merge_used.c_str());
    std::printf("%6s %9s %9s %9s %9s %9s %9s %9s %9s %7s %8s\n", "layer", "key", "key mean", "value", "val mean", "logit",
                "lgt mean", "output", "out mean", "GPA it", "seconds");
    auto pct = [](double v) {
      char b[32];
      if (v < 0) return std::string("-");
      std::snprintf(b, sizeof b, "%.2f%%", 100 * v);
      return std::string(b);
    };
    for (std::size_t i = 0; i < layers; ++i) {
      const auto& r = results[i];
      std::printf("%6zu %9s %9s %9s %9s %9s %9s %9s %9s %7d %8.2f%s\n", i, pct(r.key_rel).c_str(), pct(r.key_base).c_str(),
                  pct(r.value_rel).c_str(), pct(r.value_base).c_str(), pct(r.logit_rel).c_str(), pct(r.logit_mean_rel).c_str(),
                  pct(r.output_rel).c_str(), pct(r.output_mean_rel).c_str(), r.gpa_iterations, r.seconds,
                  r.converged ? "" : "  (GPA hit its cap)");
    }
    std::printf("wrote %s (%.1f s)\n", o.output.c_str(), convert_seconds);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"Convert a Hugging Face MHA checkpoint to GQA by aligning attention heads before merging them."};
  app.add_option("--model", o.model, "model directory (config.json + model.safetensors or a sharded index)")->required();
  app.add_option("--calibration", o.calibration,
                 "safetensors with layers.{i}.key / layers.{i}.value [tokens, H*d], a Gram set (--save-grams), or 'none'")
      ->required();
  app.add_option("--kv-heads", o.kv_heads, "KV heads after merging (must divide the number of heads)")->required();
  app.add_option("--output", o.output, "output directory (must not exist)")->required();
  app.add_option("--group-by", o.group_by, "similarity that groups the heads")
      ->check(CLI::IsMember({"value", "key", "joint", "none"}))->capture_default_str();
  app.add_option("--criterion", o.criterion, "cos (row-normalised, mean cosine) or dist (mean squared distance)")
      ->check(CLI::IsMember({"cos", "dist"}))->capture_default_str();
  app.add_option("--keys", o.keys, "key alignment (auto: rope for RoPE models, orthogonal otherwise)")
      ->check(CLI::IsMember({"auto", "rope", "orthogonal", "none"}))->capture_default_str();
  app.add_option("--values", o.values, "value alignment")->check(CLI::IsMember({"orthogonal", "none"}))->capture_default_str();
  app.add_option("--grouping", o.grouping, "grouping search: local (fast), hill (the reference's), exact (small H)")
      ->check(CLI::IsMember({"local", "hill", "exact"}))->capture_default_str();
  app.add_option("--gpa", o.gpa, "GPA update: sequential (one head at a time, fewer iterations) or reference (all heads onto the previous mean)")
      ->check(CLI::IsMember({"reference", "sequential"}))->capture_default_str();
  app.add_option("--seed", o.seed, "seed of the grouping search")->capture_default_str();
  app.add_option("--threads", o.threads, "layers converted in parallel")->check(CLI::Range(1, 1024))->capture_default_str();
  app.add_option("--merge", o.merge,
                 "how a group's heads merge: mean (the paper), output (values weighted by the output projection), query "
                 "(keys weighted by query statistics), full (both; output when there are no query statistics)")
      ->check(CLI::IsMember({"mean", "output", "query", "full"}))->capture_default_str();
  app.add_flag("--aligned-only", o.aligned_only, "write the aligned MHA checkpoint (same function), without merging");
  app.add_option("--save-grams", o.save_grams, "also save the accumulated Grams (a Gram set) to this file");
  app.add_flag("--quiet", o.quiet, "no summary table, no progress bar");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    return run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "headalign-convert: error: %s\n", e.what());
    return 1;
  }
}

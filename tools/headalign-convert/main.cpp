// headalign-convert: convert a Hugging Face MHA checkpoint (safetensors) to GQA by aligning
// attention heads before merging them.
//
//   headalign-convert --model DIR --calibration FILE|none --kv-heads G --output DIR
//                     [--group-by value|key|joint|none] [--criterion cos|dist]
//                     [--keys auto|rope|orthogonal|rotation|none] [--values orthogonal|rotation|none]
//                     [--grouping local|hill|exact] [--gpa reference|sequential] [--seed N] [--threads N]
//                     [--merge mean|output|query|full] [--aligned-only] [--save-grams FILE] [--quiet]
//
// The flags are headalign::io::ConvertOptions, with its defaults; the conversion is
// headalign::io::convert_checkpoint() (include/headalign/io/convert_checkpoint.hpp says what
// the calibration may be and what the output holds). This program parses, calls and prints.
#include <headalign/io/convert_checkpoint.hpp>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <map>
#include <string>

#include <unistd.h>

namespace {

using namespace headalign;
using io::option_name;

/// What --keys may say: a key alignment, or auto (io::ConvertOptions::keys unset).
enum class Keys { Auto, Rope, Orthogonal, Rotation, None };

/// A value → name map of option_names<E>() for CLI11's CheckedTransformer.
template <class E>
std::map<std::string, E> choices() {
  const auto& names = io::option_names<E>();
  return std::map<std::string, E>(names.begin(), names.end());
}

/// A one-line error: "headalign-convert: error: <message>".
int fail(std::string message) {
  std::replace(message.begin(), message.end(), '\n', ' ');
  std::fprintf(stderr, "headalign-convert: error: %s\n", message.c_str());
  return 1;
}

void add_options(CLI::App& app, io::ConvertOptions& o, Keys& keys, bool& quiet) {
  app.add_option("--model", o.model, "model directory (config.json + model.safetensors or a sharded index)")->required();
  app.add_option("--calibration", o.calibration,
                 "safetensors with layers.{i}.key / layers.{i}.value [tokens, H*d], a Gram set (--save-grams), or 'none'")
      ->required();
  app.add_option("--kv-heads", o.kv_heads, "KV heads after merging (must divide the number of heads)")->required();
  app.add_option("--output", o.output, "output directory (must not exist)")->required();
  app.add_option("--group-by", o.group_by, "similarity that groups the heads")
      ->transform(CLI::CheckedTransformer(choices<GroupBy>()))
      ->default_str(option_name(o.group_by));
  app.add_option("--criterion", o.criterion, "cos (row-normalised, mean cosine) or dist (mean squared distance)")
      ->transform(CLI::CheckedTransformer(choices<Metric>()))
      ->default_str(option_name(o.criterion));
  std::map<std::string, Keys> key_choices{{"auto", Keys::Auto},
                                          {"rope", Keys::Rope},
                                          {"orthogonal", Keys::Orthogonal},
                                          {"rotation", Keys::Rotation},
                                          {"none", Keys::None}};
  app.add_option("--keys", keys, "key alignment (auto: rope for RoPE models, orthogonal otherwise)")
      ->transform(CLI::CheckedTransformer(key_choices))
      ->default_str("auto");
  app.add_option("--values", o.values, "value alignment")
      ->transform(CLI::CheckedTransformer(choices<Alignment>()))
      ->default_str(option_name(o.values));
  app.add_option("--grouping", o.grouping, "grouping search: local (fast), hill (the reference's), exact (small H)")
      ->transform(CLI::CheckedTransformer(choices<GroupingOptions::Method>()))
      ->default_str(option_name(o.grouping));
  app.add_option("--gpa", o.gpa,
                 "GPA update: sequential (one head at a time, fewer iterations) or reference (all heads onto the previous mean)")
      ->transform(CLI::CheckedTransformer(choices<GpaUpdate>()))
      ->default_str(option_name(o.gpa));
  app.add_option("--seed", o.seed, "seed of the grouping search")->capture_default_str();
  app.add_option("--threads", o.threads, "layers converted in parallel")->check(CLI::Range(1, 1024))->capture_default_str();
  app.add_option("--merge", o.merge,
                 "how a group's heads merge: mean (the paper), output (values weighted by the output projection), query "
                 "(keys weighted by query statistics), full (both; output when there are no query statistics)")
      ->transform(CLI::CheckedTransformer(choices<MergeWeighting>()))
      ->default_str(option_name(o.merge));
  app.add_flag("--aligned-only", o.aligned_only, "write the aligned MHA checkpoint (same function), without merging");
  app.add_option("--save-grams", o.save_grams, "also save the accumulated Grams (a Gram set) to this file");
  app.add_flag("--quiet", quiet, "no summary table, no progress bar");
}

std::optional<Alignment> key_alignment(Keys k) {
  switch (k) {
    case Keys::Rope: return Alignment::Rope;
    case Keys::Orthogonal: return Alignment::Orthogonal;
    case Keys::Rotation: return Alignment::Rotation;
    case Keys::None: return Alignment::None;
    case Keys::Auto: break;
  }
  return std::nullopt;
}

/// A progress bar on a terminal's stderr.
void progress_bar(std::size_t done, std::size_t total) {
  const int width = 30, filled = static_cast<int>(width * done / std::max<std::size_t>(total, 1));
  std::fprintf(stderr, "\r[%s%s] %zu/%zu layers", std::string(static_cast<std::size_t>(filled), '#').c_str(),
               std::string(static_cast<std::size_t>(width - filled), ' ').c_str(), done, total);
  if (done == total) std::fprintf(stderr, "\n");
}

std::string percent(double v) {
  if (v < 0) return "-";
  char b[32];
  std::snprintf(b, sizeof b, "%.2f%%", 100 * v);
  return b;
}

/// The summary: what was converted how, and each layer's predicted errors.
void print_summary(const io::ConvertOptions& o, const io::ConvertReport& r) {
  const io::ModelConfig& cfg = r.model;
  const std::string merge = option_name(r.merge_used);
  std::printf("%s (%s, %lld layers × %lld heads × %lld dims) → %s KV heads, group by %s, %s, keys %s, values %s, merge %s\n",
              o.model.c_str(), cfg.model_type.c_str(), static_cast<long long>(cfg.num_layers),
              static_cast<long long>(cfg.num_heads), static_cast<long long>(cfg.head_dim),
              o.aligned_only ? "aligned MHA (no merging)," : std::to_string(o.kv_heads).c_str(), option_name(o.group_by).c_str(),
              option_name(o.criterion).c_str(), option_name(r.keys).c_str(), option_name(o.values).c_str(), merge.c_str());
  std::printf(
      "predicted merge error (share of the heads' energy lost): keys and values aligned vs plain mean-pool;\n"
      "attention logits and outputs, %s merge vs mean merge (both aligned)\n",
      merge.c_str());
  std::printf("%6s %9s %9s %9s %9s %9s %9s %9s %9s %7s %8s\n", "layer", "key", "key mean", "value", "val mean", "logit",
              "lgt mean", "output", "out mean", "GPA it", "seconds");
  for (std::size_t i = 0; i < r.layers.size(); ++i) {
    const io::LayerSummary& l = r.layers[i];
    std::printf("%6zu %9s %9s %9s %9s %9s %9s %9s %9s %7d %8.2f%s\n", i, percent(l.key_error).c_str(),
                percent(l.key_error_mean_pool).c_str(), percent(l.value_error).c_str(), percent(l.value_error_mean_pool).c_str(),
                percent(l.logit_error).c_str(), percent(l.logit_error_mean).c_str(), percent(l.output_error).c_str(),
                percent(l.output_error_mean).c_str(), l.gpa_iterations, l.seconds, l.converged ? "" : "  (GPA hit its cap)");
  }
  std::printf("wrote %s (%.1f s)\n", o.output.c_str(), r.seconds);
}

}  // namespace

int main(int argc, char** argv) {
  io::ConvertOptions o;
  Keys keys = Keys::Auto;
  bool quiet = false;
  CLI::App app{"Convert a Hugging Face MHA checkpoint to GQA by aligning attention heads before merging them."};
  add_options(app, o, keys, quiet);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    return fail(std::string(e.what()) + " (see --help)");
  }
  o.keys = key_alignment(keys);
  try {
    const io::ProgressCallback progress = quiet || !::isatty(2) ? io::ProgressCallback() : progress_bar;
    const io::ConvertReport report = io::convert_checkpoint(o, progress);
    if (!quiet) print_summary(o, report);
    return 0;
  } catch (const std::exception& e) {
    return fail(headalign::message_of(e));
  }
}

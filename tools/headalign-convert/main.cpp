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
#include <utility>
#include <vector>

#include <unistd.h>

namespace {

using namespace headalign;
using io::option_name;

/// What --keys may say: a key alignment, or auto (io::ConvertOptions::keys unset).
enum class Keys { Auto, Rope, Orthogonal, Rotation, None };

/// Adds a flag whose value is one of @p names, stored into @p target as the value it names
/// (one lookup when the flag is parsed; anything else is a parse error listing the names).
template <class E>
CLI::Option* add_choice(CLI::App& app, const std::string& flag, E& target,
                        const std::vector<std::pair<std::string, E>>& names, const std::string& help,
                        const std::string& default_name) {
  std::vector<std::string> allowed;
  for (const auto& n : names) allowed.push_back(n.first);
  const std::map<std::string, E> lookup(names.begin(), names.end());
  return app
      .add_option_function<std::string>(
          flag, [&target, lookup](const std::string& name) { target = lookup.at(name); }, help)
      ->check(CLI::IsMember(allowed))
      ->default_str(default_name);
}

template <class E>
CLI::Option* add_choice(CLI::App& app, const std::string& flag, E& target, const std::string& help) {
  return add_choice(app, flag, target, io::option_names<E>(), help, option_name(target));
}

/// A one-line error: "headalign-convert: error: <message>".
int fail(std::string message) {
  std::replace(message.begin(), message.end(), '\n', ' ');
  std::fprintf(stderr, "headalign-convert: error: %s\n", message.c_str());
  return 1;
}

void add_options(CLI::App& app, io::ConvertOptions& o, Keys& keys, bool& quiet) {
  app.add_option("--model", o.model, "model directory (config.json + model.safetensors or a sharded index)")
      ->required();
  app.add_option("--calibration", o.calibration,
                 "safetensors with layers.{i}.key / layers.{i}.value [tokens, H*d], a Gram set "
                 "(--save-grams), or 'none'")
      ->required();
  app.add_option("--kv-heads", o.kv_heads, "KV heads after merging (must divide the number of heads)")
      ->required();
  app.add_option("--output", o.output, "output directory (must not exist)")->required();
  add_choice(app, "--group-by", o.group_by, "similarity that groups the heads");
  add_choice(app, "--criterion", o.criterion,
             "cos (row-normalised, mean cosine) or dist (mean squared distance)");
  add_choice(app, "--keys", keys,
             {{"auto", Keys::Auto},
              {"rope", Keys::Rope},
              {"orthogonal", Keys::Orthogonal},
              {"rotation", Keys::Rotation},
              {"none", Keys::None}},
             "key alignment (auto: rope for RoPE models, orthogonal otherwise)", "auto");
  auto value_names = io::option_names<Alignment>();  // RoPE acts on keys only
  value_names.erase(std::remove_if(value_names.begin(), value_names.end(),
                                   [](const auto& n) { return n.second == Alignment::Rope; }),
                    value_names.end());
  add_choice(app, "--values", o.values, value_names, "value alignment", option_name(o.values));
  add_choice(app, "--grouping", o.grouping,
             "grouping search: local (fast), hill (the reference's), exact (small H)");
  add_choice(app, "--gpa", o.gpa,
             "GPA update: sequential (one head at a time, fewer iterations) or reference (all heads onto the "
             "previous mean)");
  app.add_option("--seed", o.seed, "seed of the grouping search")->capture_default_str();
  app.add_option("--threads", o.threads, "layers converted in parallel")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  add_choice(
      app, "--merge", o.merge,
      "how a group's heads merge: mean (the paper), output (values weighted by the output projection), query "
      "(keys weighted by query statistics), full (both; output when there are no query statistics)");
  app.add_flag("--aligned-only", o.aligned_only,
               "write the aligned MHA checkpoint (same function), without merging");
  app.add_option("--save-grams", o.save_grams, "also save the accumulated Grams (a Gram set) to this file");
  app.add_flag("--quiet", quiet, "no summary table, no progress bar");
}

std::optional<Alignment> key_alignment(Keys k) {
  switch (k) {
    case Keys::Rope:
      return Alignment::Rope;
    case Keys::Orthogonal:
      return Alignment::Orthogonal;
    case Keys::Rotation:
      return Alignment::Rotation;
    case Keys::None:
      return Alignment::None;
    case Keys::Auto:
      break;
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
  std::printf(
      "%s (%s, %lld layers × %lld heads × %lld dims) → %s KV heads, group by %s, %s, keys %s, values %s, "
      "merge %s\n",
      o.model.c_str(), cfg.model_type.c_str(), static_cast<long long>(cfg.num_layers),
      static_cast<long long>(cfg.num_heads), static_cast<long long>(cfg.head_dim),
      o.aligned_only ? "aligned MHA (no merging)," : std::to_string(o.kv_heads).c_str(),
      option_name(o.group_by).c_str(), option_name(o.criterion).c_str(), option_name(r.keys).c_str(),
      option_name(o.values).c_str(), merge.c_str());
  std::printf(
      "predicted merge error (share of the heads' energy lost): keys and values aligned vs plain mean-pool;\n"
      "attention logits and outputs, %s merge vs mean merge (both aligned)\n",
      merge.c_str());
  std::printf("%6s %9s %9s %9s %9s %9s %9s %9s %9s %7s %8s\n", "layer", "key", "key mean", "value",
              "val mean", "logit", "lgt mean", "output", "out mean", "GPA it", "seconds");
  for (std::size_t i = 0; i < r.layers.size(); ++i) {
    const io::LayerSummary& l = r.layers[i];
    std::printf("%6zu %9s %9s %9s %9s %9s %9s %9s %9s %7d %8.2f%s\n", i, percent(l.key_error).c_str(),
                percent(l.key_error_mean_pool).c_str(), percent(l.value_error).c_str(),
                percent(l.value_error_mean_pool).c_str(), percent(l.logit_error).c_str(),
                percent(l.logit_error_mean).c_str(), percent(l.output_error).c_str(),
                percent(l.output_error_mean).c_str(), l.gpa_iterations, l.seconds,
                l.converged ? "" : "  (GPA hit its cap)");
  }
  std::printf("wrote %s (%.1f s)\n", o.output.c_str(), r.seconds);
}

}  // namespace

int main(int argc, char** argv) {
  io::ConvertOptions o;
  Keys keys = Keys::Auto;
  bool quiet = false;
  CLI::App app{
      "Convert a Hugging Face MHA checkpoint to GQA by aligning attention heads before merging them."};
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

// Low-bit weight benchmarks on the shared real models (issue 6). Prints one JSON line per config.
//
//   lowbit_bench stories MODEL TEXT_DIR OUT_DIR CONFIG...
//     NLL per token on the real texts (tinystories_sample_cs336, wizard_of_oz_llmatoz.chunks800),
//     documents split at BOS=1, windows of up to 512 tokens; calibration: the first 32 documents of
//     the model's own samples (runc_samples_*), truncated to 256 tokens.
//   lowbit_bench eval-stories FP_MODEL QUANTIZED_MODEL TEXT_DIR
//     the same NLL figures for a model written by qtool quantize.
//   lowbit_bench imagenet MODEL IMAGE_DIR PRESET OUT_DIR CONFIG...
//     top-1 on the odd positions of the sorted image list (500), calibration on the first 64 even ones.
//
// CONFIG = bits:block:algorithm[:outlier_fraction[:format[:sym|asym[:first_last]]]][:key=value...],
// e.g. 4:32:gptq, ternary:64:rtn, 2:32:rtn:0.02, 4:32:rtn:0:mnb, 4:32:gptq:0:qdq:asym:ao=1:calib=64
// (options: see parse_config). Each quantized model is saved to OUT_DIR/<config>.onnx (its size is
// reported). Evaluation runs qtool's executor. LOWBIT_FP_NLL=tiny,wizard skips the FP32 evaluation of
// the stories mode; LOWBIT_MAX_EVAL caps the imagenet evaluation images; LOWBIT_LAYERS=1 prints the
// per-layer report on stderr.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <sys/resource.h>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "qtool/core/error.h"
#include "qtool/data/image.h"
#include "qtool/data/sample_source.h"
#include "qtool/onnx_io/onnx_io.h"
#include "qtool/quant/lowbit.h"
#include "qtool/runtime/executor.h"

namespace fs = std::filesystem;
using namespace qtool;

namespace {

std::vector<std::string> split(const std::string& s, char c) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, c)) out.push_back(item);
  return out;
}

/// Calibration size of the stories bench (documents, tokens per document); calib=N / len=N options.
size_t g_calib_docs = 32, g_calib_len = 256;
/// Tuning samples (stories documents / imagenet even images); tcal=N. 0 = the calibration set.
size_t g_tune_samples = 0;

quant::WeightOnlyConfig parse_config(const std::string& spec) {
  std::vector<std::string> p, opts;
  for (const auto& item : split(spec, ':')) (item.find('=') == std::string::npos ? p : opts).push_back(item);
  quant::WeightOnlyConfig c;
  // key=value options anywhere: ao=1 (GPTQ act order), damp=X (GPTQ dampening), gclip=1 (GPTQ grids
  // by block output error), oclip=0 (AWQ without output-error clipping), s32=1 (float32 scales),
  // calib=N / len=N (stories: calibration documents / tokens per document), threads=N (calibration and RTN).
  for (const auto& o : opts) {
    const std::string k = o.substr(0, o.find('=')), v = o.substr(o.find('=') + 1);
    if (k == "ao") c.gptq.act_order = v == "1";
    else if (k == "damp") c.gptq.percdamp = std::stod(v);
    else if (k == "gclip") c.gptq.output_clip = v == "1";
    else if (k == "oclip") c.awq.output_clip = v == "1";
    else if (k == "s32") c.fp16_scales = v != "1";
    else if (k == "seq") c.sequential = v == "1";
    else if (k == "clip") c.clip_steps = std::stoi(v);
    else if (k == "refit") c.gptq.refine_scales = v == "1";
    else if (k == "cd") c.gptq.cd_passes = std::stoi(v);
    else if (k == "duo") c.awq.duo_scaling = v == "1";
    else if (k == "dw") c.bits_depthwise = v == "same" ? "" : v;
    else if (k == "lb") c.layer_bits = quant::parse_layer_bits(v);  // lb=PATTERN=BITS[,PATTERN=BITS]
    else if (k == "calib") g_calib_docs = std::stoul(v);
    else if (k == "len") g_calib_len = std::stoul(v);
    else if (k == "threads") c.threads = std::stoi(v);
    // Distillation tuning (tune.h): tune=STEPS, tb=batch, tlr/tslr/tflr learning rates, tw/ts/tf=0|1
    // (latent weights / scales / float vectors), th=holdout share, tev=eval every, tloss=kl|mse,
    // tcal=N samples, tseed=N.
    else if (k == "tune") c.tune.steps = std::stoi(v);
    else if (k == "tb") c.tune.batch = std::stoi(v);
    else if (k == "tlr") c.tune.lr = std::stod(v);
    else if (k == "tslr") c.tune.lr_scale = std::stod(v);
    else if (k == "tflr") c.tune.lr_float = std::stod(v);
    else if (k == "tw") c.tune.tune_weights = v == "1";
    else if (k == "ts") c.tune.tune_scales = v == "1";
    else if (k == "tf") c.tune.tune_float = v == "1";
    else if (k == "th") c.tune.holdout = std::stod(v);
    else if (k == "tev") c.tune.eval_every = std::stoi(v);
    else if (k == "tloss") c.tune.loss = v;
    else if (k == "tseed") c.tune.seed = std::stoull(v);
    else if (k == "taug") c.tune.augment = v;
    else if (k == "tmix") c.tune.mixup = std::stod(v);
    else if (k == "tfeat") c.tune.feature_weight = std::stod(v);
    else if (k == "tqn") c.tune.quant_noise = std::stod(v);
    else if (k == "tst") c.tune.stages = std::stoi(v);
    else if (k == "trange") c.tune.latent_range = std::stod(v);
    else if (k == "tcal") g_tune_samples = std::stoul(v);
    else throw std::runtime_error("unknown option " + k);
  }
  c.bits = p.at(0);
  c.block_size = p.size() > 1 ? std::stoll(p[1]) : 32;
  c.algorithm = p.size() > 2 ? quant::parse_weight_algorithm(p[2]) : quant::WeightAlgorithm::kRtn;
  c.outlier_fraction = p.size() > 3 ? std::stod(p[3]) : 0.0;
  c.format = p.size() > 4 && p[4] == "mnb" ? quant::WeightLayout::kMatMulNBits : quant::WeightLayout::kQdq;
  c.cast_dequant = p.size() > 4 && p[4] == "cast";
  c.symmetric = !(p.size() > 5 && p[5] == "asym");
  if (p.size() > 6) c.bits_first_last = p[6] == "same" ? "" : p[6];
  return c;
}

/// With LOWBIT_LAYERS=1, one line per quantized weight on stderr (format, algorithm, bits, error, note).
void print_layers(const quant::WeightOnlyReport& rep) {
  if (!std::getenv("LOWBIT_LAYERS")) return;
  for (const auto& l : rep.layers)
    std::fprintf(stderr, "  %-40s %-10s %-14s %6.3f bits  rel_mse %.5f  %s\n", l.weight.c_str(), l.format.c_str(),
                 l.algorithm.c_str(), l.bits_per_weight, l.weight_rel_mse, l.note.c_str());
}

std::vector<std::vector<int32_t>> documents(const std::vector<int32_t>& toks) {
  std::vector<std::vector<int32_t>> docs;
  for (int32_t t : toks) {
    if (t == 1 || docs.empty()) docs.emplace_back();
    docs.back().push_back(t);
  }
  return docs;
}

Tensor ids_tensor(const std::vector<int32_t>& w) {
  std::vector<int64_t> v(w.begin(), w.end());
  return Tensor::from_vector<int64_t>({1, static_cast<int64_t>(v.size())}, v);
}

/// Mean NLL per predicted token over windows of up to 512 tokens of each document.
double nll(runtime::Executor& ex, const std::vector<std::vector<int32_t>>& docs) {
  double sum = 0;
  int64_t count = 0;
  for (const auto& d : docs)
    for (size_t s = 0; s + 1 < d.size(); s += 512) {
      const size_t e = std::min(d.size(), s + 512);
      std::vector<int32_t> w(d.begin() + s, d.begin() + e);
      const Tensor logits = ex.run({{"input_ids", ids_tensor(w)}}).at(0);
      const float* l = logits.data<float>();
      const int64_t v = logits.dim(-1);
      for (size_t i = 0; i + 1 < w.size(); ++i) {
        const float* row = l + i * v;
        const float mx = *std::max_element(row, row + v);
        double z = 0;
        for (int64_t j = 0; j < v; ++j) z += std::exp(static_cast<double>(row[j] - mx));
        sum += -(row[w[i + 1]] - mx - std::log(z));
        ++count;
      }
    }
  return sum / static_cast<double>(count);
}

std::string safe(const std::string& s) {
  std::string o = s;
  for (char& c : o)
    if (c == ':' || c == '/') c = '_';
  return o;
}

int stories(int argc, char** argv) {
  const std::string model_path = argv[2], text = argv[3], out_dir = argv[4];
  fs::create_directories(out_dir);
  const ir::Model fp = onnx_io::load_model(model_path);
  std::vector<std::pair<std::string, std::vector<std::vector<int32_t>>>> evals = {
      {"tinystories", documents(data::read_token_stream(text + "/tinystories_sample_cs336.tok512.i32"))},
      {"wizard_of_oz", documents(data::read_token_stream(text + "/wizard_of_oz_llmatoz.chunks800.tok512.i32"))}};
  auto calib_docs = documents(data::read_token_stream(text + "/runc_samples_t1.0_p0.9_seed1-600.tok512.i32"));
  auto make_calib = [&] {
    quant::CalibrationInputs calib;
    const size_t n = std::max(g_calib_docs, g_tune_samples);
    for (size_t i = 0; i < n && i < calib_docs.size(); ++i) {
      auto d = calib_docs[i];
      if (d.size() > g_calib_len) d.resize(g_calib_len);
      calib.samples.push_back({{"input_ids", ids_tensor(d)}});
    }
    calib.max_samples = g_calib_docs;
    return calib;
  };
  std::map<std::string, double> fp_nll;
  if (const char* known = std::getenv("LOWBIT_FP_NLL")) {  // "tinystories,wizard" from an earlier run
    const auto p = split(known, ',');
    fp_nll["tinystories"] = std::stod(p.at(0));
    fp_nll["wizard_of_oz"] = std::stod(p.at(1));
  } else {
    runtime::Executor ex(fp);
    for (auto& [name, docs] : evals) fp_nll[name] = nll(ex, docs);
  }
  const auto fp_size = fs::file_size(model_path);
  std::printf("{\"config\":\"fp\",\"file_bytes\":%ju,\"nll_tinystories\":%.5f,\"nll_wizard_of_oz\":%.5f}\n",
              static_cast<uintmax_t>(fp_size), fp_nll["tinystories"], fp_nll["wizard_of_oz"]);
  std::fflush(stdout);
  for (int i = 5; i < argc; ++i) {
    const std::string spec = argv[i];
    ir::Model m = fp.clone();
    const auto t0 = std::chrono::steady_clock::now();
    g_calib_docs = 32;
    g_calib_len = 256;
    g_tune_samples = 0;
    quant::WeightOnlyConfig cfg = parse_config(spec);
    cfg.tune.samples = g_tune_samples > 0 ? g_tune_samples : g_calib_docs;
    const quant::CalibrationInputs calib = make_calib();
    const quant::WeightOnlyReport rep = quant::apply_weight_only(m, cfg, &calib);
    const double qsec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    print_layers(rep);
    const std::string out = out_dir + "/stories260K_" + safe(spec) + ".onnx";
    onnx_io::save_model(m, out);
    runtime::Executor ex(m);
    std::printf("{\"config\":\"%s\",\"file_bytes\":%ju,\"size_pct_of_fp\":%.1f,\"main_bits_per_weight\":%.3f,"
                "\"quantize_s\":%.2f,\"tune_holdout\":[%.5g,%.5g]", spec.c_str(), static_cast<uintmax_t>(fs::file_size(out)),
                100.0 * fs::file_size(out) / fp_size, rep.main_bits_per_weight, qsec, rep.tune.holdout_before,
                rep.tune.holdout_after);
    for (auto& [name, docs] : evals) {
      const double q = nll(ex, docs);
      std::printf(",\"nll_%s\":%.5f,\"increase_pct_%s\":%.2f", name.c_str(), q, name.c_str(),
                  100.0 * (q - fp_nll[name]) / fp_nll[name]);
    }
    std::printf("}\n");
    std::fflush(stdout);
  }
  return 0;
}

/// NLL increase of a saved model (e.g. written by qtool quantize) on the two real texts.
int eval_stories(char** argv) {
  const ir::Model fp = onnx_io::load_model(argv[2]), q = onnx_io::load_model(argv[3]);
  const std::string text = argv[4];
  std::vector<std::pair<std::string, std::vector<std::vector<int32_t>>>> evals = {
      {"tinystories", documents(data::read_token_stream(text + "/tinystories_sample_cs336.tok512.i32"))},
      {"wizard_of_oz", documents(data::read_token_stream(text + "/wizard_of_oz_llmatoz.chunks800.tok512.i32"))}};
  runtime::Executor ef(fp), eq(q);
  std::printf("{\"model\":\"%s\",\"file_bytes\":%ju", argv[3], static_cast<uintmax_t>(fs::file_size(argv[3])));
  for (auto& [name, docs] : evals) {
    const double a = nll(ef, docs), b = nll(eq, docs);
    std::printf(",\"nll_%s\":%.5f,\"increase_pct_%s\":%.2f", name.c_str(), b, name.c_str(), 100.0 * (b - a) / a);
  }
  std::printf("}\n");
  return 0;
}

int argmax(const Tensor& t) {
  const float* p = t.data<float>();
  return static_cast<int>(std::max_element(p, p + t.numel()) - p);
}

int imagenet(int argc, char** argv) {
  const std::string model_path = argv[2], dir = argv[3], preset = argv[4], out_dir = argv[5];
  fs::create_directories(out_dir);
  const ir::Model fp = onnx_io::load_model(model_path);
  const size_t max_eval = std::getenv("LOWBIT_MAX_EVAL") ? std::stoul(std::getenv("LOWBIT_MAX_EVAL")) : 500;
  // labels.csv: file,wnid,class_index,label
  std::map<std::string, int> label;
  {
    std::ifstream f(dir + "/labels.csv");
    std::string line;
    std::getline(f, line);
    while (std::getline(f, line)) {
      const auto p = split(line, ',');
      if (p.size() >= 3) label[p[0]] = std::stoi(p[2]);
    }
  }
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir + "/images")) files.push_back(e.path().filename().string());
  std::sort(files.begin(), files.end());
  const data::ImagePreprocess pp = data::image_preset(preset);
  const std::string in_name = fp.graph->runtime_inputs().at(0)->name();
  auto load = [&](const std::string& f) {
    return data::preprocess_image(data::decode_image(dir + "/images/" + f), pp, f);
  };
  std::vector<std::pair<Tensor, int>> evals;
  quant::CalibrationInputs calib;
  // Calibration: the first 64 even images for GPTQ / AWQ statistics; tuning (tcal=N) may use more.
  size_t max_tune = 0;
  for (int i = 6; i < argc; ++i) {
    const std::string a = argv[i];
    const size_t k = a.find("tcal=");
    if (k != std::string::npos) max_tune = std::max<size_t>(max_tune, std::stoul(a.substr(k + 5)));
  }
  const size_t n_calib = std::max<size_t>(64, max_tune);
  for (size_t i = 0; i < files.size(); ++i) {
    if (i % 2 == 1 && evals.size() < max_eval) evals.push_back({load(files[i]), label.at(files[i])});
    if (i % 2 == 0 && calib.samples.size() < n_calib) calib.samples.push_back({{in_name, load(files[i])}});
  }
  calib.max_samples = 64;
  auto top1 = [&](const ir::Model& m, std::vector<int>* preds) {
    runtime::Executor ex(m);
    int ok = 0;
    for (const auto& [x, y] : evals) {
      const int p = argmax(ex.run({{in_name, x}}).at(0));
      preds->push_back(p);
      ok += p == y;
    }
    return 100.0 * ok / static_cast<double>(evals.size());
  };
  std::vector<int> fp_pred;
  const double fp_top1 = top1(fp, &fp_pred);
  const auto fp_size = fs::file_size(model_path);
  std::printf("{\"model\":\"%s\",\"config\":\"fp\",\"file_bytes\":%ju,\"top1\":%.1f,\"n\":%zu}\n",
              fs::path(model_path).filename().c_str(), static_cast<uintmax_t>(fp_size), fp_top1, evals.size());
  std::fflush(stdout);
  for (int i = 6; i < argc; ++i) {
    const std::string spec = argv[i];
    ir::Model m = fp.clone();
    g_tune_samples = 0;
    quant::WeightOnlyConfig cfg = parse_config(spec);
    cfg.tune.samples = g_tune_samples > 0 ? g_tune_samples : 64;
    const auto t0 = std::chrono::steady_clock::now();
    const quant::WeightOnlyReport rep = quant::apply_weight_only(m, cfg, &calib);
    const double qsec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    print_layers(rep);
    const std::string out = out_dir + "/" + fs::path(model_path).stem().string() + "_" + safe(spec) + ".onnx";
    onnx_io::save_model(m, out);
    std::vector<int> pred;
    const double t = top1(m, &pred);
    int agree = 0;
    for (size_t k = 0; k < pred.size(); ++k) agree += pred[k] == fp_pred[k];
    std::printf("{\"model\":\"%s\",\"config\":\"%s\",\"file_bytes\":%ju,\"size_pct_of_fp\":%.1f,"
                "\"main_bits_per_weight\":%.3f,\"top1\":%.1f,\"top1_pct_of_fp\":%.1f,\"agreement\":%.1f,"
                "\"quantize_s\":%.1f,\"tune_holdout\":[%.5g,%.5g]}\n",
                fs::path(model_path).filename().c_str(), spec.c_str(), static_cast<uintmax_t>(fs::file_size(out)),
                100.0 * fs::file_size(out) / fp_size, rep.main_bits_per_weight, t, 100.0 * t / fp_top1,
                100.0 * agree / static_cast<double>(pred.size()), qsec, rep.tune.holdout_before,
                rep.tune.holdout_after);
    std::fflush(stdout);
  }
  return 0;
}

/// Streaming weight-only quantization of a large model (external data, memory-mapped): wall time,
/// throughput in GB/s of FP32 weights and peak RSS.
int stream(char** argv) {
  const std::string model_path = argv[2], out = argv[3], spec = argv[4];
  const auto t0 = std::chrono::steady_clock::now();
  ir::Model m = onnx_io::load_model(model_path);
  const auto t1 = std::chrono::steady_clock::now();
  const quant::WeightOnlyReport rep = quant::apply_weight_only(m, parse_config(spec));
  const auto t2 = std::chrono::steady_clock::now();
  onnx_io::SaveOptions so;
  so.external_data = onnx_io::SaveOptions::ExternalData::kAlways;
  onnx_io::save_model(m, out, so);
  const auto t3 = std::chrono::steady_clock::now();
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  auto sec = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
  uintmax_t out_bytes = fs::file_size(out);
  if (fs::exists(out + ".data")) out_bytes += fs::file_size(out + ".data");
  std::printf("{\"config\":\"%s\",\"fp32_weight_bytes\":%lld,\"quant_weight_bytes\":%lld,\"out_bytes\":%ju,"
              "\"load_s\":%.2f,\"quantize_s\":%.2f,\"save_s\":%.2f,\"gb_per_s_quantize\":%.3f,"
              "\"gb_per_s_total\":%.3f,\"peak_rss_mb\":%.0f,\"main_bits_per_weight\":%.3f}\n",
              spec.c_str(), static_cast<long long>(rep.float_weight_bytes), static_cast<long long>(rep.quant_weight_bytes),
              out_bytes, sec(t0, t1), sec(t1, t2), sec(t2, t3), rep.float_weight_bytes / 1e9 / sec(t1, t2),
              rep.float_weight_bytes / 1e9 / sec(t0, t3), ru.ru_maxrss / 1024.0, rep.main_bits_per_weight);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  spdlog::set_default_logger(spdlog::stderr_color_mt("lowbit_bench"));
  try {
    if (argc >= 5 && std::string(argv[1]) == "stories") return stories(argc, argv);
    if (argc >= 6 && std::string(argv[1]) == "imagenet") return imagenet(argc, argv);
    if (argc == 5 && std::string(argv[1]) == "stream") return stream(argv);
    if (argc == 5 && std::string(argv[1]) == "eval-stories") return eval_stories(argv);
    std::fprintf(stderr, "usage: lowbit_bench stories MODEL TEXT_DIR OUT_DIR CONFIG... | "
                         "imagenet MODEL IMAGE_DIR PRESET OUT_DIR CONFIG...\n");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lowbit_bench: %s\n", e.what());
    return 1;
  }
}

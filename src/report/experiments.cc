// Batch experiments for `qtool quantize --config` (see experiments.h).
#include "qtool/report/experiments.h"

#include <cmath>
#include <limits>
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <set>

#include <fmt/format.h>

#include "qtool/core/error.h"
#include "qtool/core/npy.h"

#ifdef QTOOL_HAVE_YAML
#include <yaml-cpp/yaml.h>
#endif

namespace qtool::report {

namespace fs = std::filesystem;

namespace {

/// Option keys use dashes ("block-size"); configs may write underscores.
std::string normalize_key(std::string k) {
  for (char& c : k)
    if (c == '_') c = '-';
  while (!k.empty() && k.front() == '-') k.erase(k.begin());
  return k;
}

std::string scalar_str(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  if (v.is_number()) {
    std::string s = fmt::format("{}", v.get<double>());
    return s;
  }
  return v.dump();
}

/// A file-name safe version of a setting name.
std::string safe_name(const std::string& s) {
  std::string o;
  for (char c : s) o += (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' || c == '=') ? c : '_';
  return o.empty() ? "setting" : o;
}

nlohmann::json normalize_options(const nlohmann::json& obj, const std::string& what) {
  QTOOL_CHECK(obj.is_object(), ErrorCode::kConfig, "{}: expected an object of option: value", what);
  nlohmann::json out = nlohmann::json::object();
  for (const auto& [k, v] : obj.items()) {
    QTOOL_CHECK(v.is_primitive() || v.is_array(), ErrorCode::kConfig, "{}: option '{}' must be a string, number, "
                "boolean or list", what, k);
    out[normalize_key(k)] = v;
  }
  return out;
}

#ifdef QTOOL_HAVE_YAML
/// YAML -> JSON with YAML 1.2 core-schema typing of plain scalars: integers, floats, true/false,
/// null; quoted scalars stay strings.
nlohmann::json yaml_to_json(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      return nullptr;
    case YAML::NodeType::Sequence: {
      nlohmann::json a = nlohmann::json::array();
      for (const auto& e : n) a.push_back(yaml_to_json(e));
      return a;
    }
    case YAML::NodeType::Map: {
      nlohmann::json o = nlohmann::json::object();
      for (const auto& kv : n) o[kv.first.as<std::string>()] = yaml_to_json(kv.second);
      return o;
    }
    case YAML::NodeType::Scalar: {
      const std::string v = n.Scalar();
      if (n.Tag() == "!") return v;  // quoted
      if (v == "true" || v == "True" || v == "TRUE") return true;
      if (v == "false" || v == "False" || v == "FALSE") return false;
      if (v == "null" || v == "~" || v.empty()) return nullptr;
      try {
        size_t pos = 0;
        const long long i = std::stoll(v, &pos);
        if (pos == v.size()) return static_cast<int64_t>(i);
        const double d = std::stod(v, &pos);
        if (pos == v.size()) return d;
      } catch (...) {
      }
      return v;
    }
  }
  return nullptr;
}
#endif

}  // namespace

bool yaml_supported() {
#ifdef QTOOL_HAVE_YAML
  return true;
#else
  return false;
#endif
}

std::vector<std::string> ExperimentSetting::to_args() const {
  std::vector<std::string> args;
  for (const auto& [k, v] : options.items()) {
    if (k == "name") continue;
    if (v.is_boolean()) {
      if (v.get<bool>()) args.push_back("--" + k);
      continue;
    }
    if (v.is_null()) continue;
    if (v.is_array()) {
      for (const auto& e : v) {
        args.push_back("--" + k);
        args.push_back(scalar_str(e));
      }
      continue;
    }
    args.push_back("--" + k);
    args.push_back(scalar_str(v));
  }
  return args;
}

namespace {
ExperimentConfig parse_config_impl(const std::string& text, const std::string& what, const std::string& base_dir,
                                   bool yaml);
}  // namespace

ExperimentConfig parse_experiment_config(const std::string& text, const std::string& what, const std::string& base_dir,
                                         bool yaml) {
  try {
    return parse_config_impl(text, what, base_dir, yaml);
  } catch (const nlohmann::json::exception& e) {  // e.g. invalid UTF-8 in a YAML string (fuzz_config)
    fail(ErrorCode::kConfig, "{}: not a valid experiment config: {}", what, e.what());
  }
}

namespace {
ExperimentConfig parse_config_impl(const std::string& text, const std::string& what, const std::string& base_dir,
                                   bool yaml) {
  nlohmann::json j;
  if (yaml) {
#ifdef QTOOL_HAVE_YAML
    try {
      j = yaml_to_json(YAML::Load(text));
    } catch (const YAML::Exception& e) {
      fail(ErrorCode::kConfig, "{}: not valid YAML: {}", what, e.what());
    }
#else
    fail(ErrorCode::kUnsupported,
         "{}: this qtool was built without yaml-cpp (libyaml-cpp-dev); write the same keys as JSON", what);
#endif
  } else {
    try {
      j = nlohmann::json::parse(text, nullptr, true, /*ignore_comments=*/true);
    } catch (const nlohmann::json::exception& e) {  // parse errors and number overflows alike (fuzz_config)
      fail(ErrorCode::kConfig, "{}: not valid JSON: {}", what, e.what());
    }
  }
  // Every string must be valid UTF-8 (a YAML file may hold any bytes): dump() checks them all here,
  // inside parse_experiment_config's catch, instead of later in a setting's to_args() (fuzz_config).
  (void)j.dump();
  QTOOL_CHECK(j.is_object(), ErrorCode::kConfig, "{}: the top level must be an object with \"settings\" and/or \"sweep\"",
              what);
  static const std::set<std::string> kKeys = {"output_dir", "defaults", "settings", "sweep", "description"};
  for (const auto& [k, v] : j.items()) {
    QTOOL_CHECK(kKeys.count(k), ErrorCode::kConfig,
                "{}: unknown key '{}' (expected output_dir, defaults, settings, sweep, description)", what, k);
  }
  ExperimentConfig cfg;
  cfg.path = what;
  if (j.contains("output_dir")) {
    QTOOL_CHECK(j["output_dir"].is_string(), ErrorCode::kConfig, "{}: output_dir must be a string", what);
    fs::path p = j["output_dir"].get<std::string>();
    cfg.output_dir = (p.is_absolute() || base_dir.empty() ? p : fs::path(base_dir) / p).lexically_normal().string();
  } else {
    cfg.output_dir = (fs::path(base_dir.empty() ? "." : base_dir) / (fs::path(what).stem().string() + "_results"))
                         .lexically_normal()
                         .string();
  }
  const nlohmann::json defaults =
      j.contains("defaults") ? normalize_options(j["defaults"], what + ": defaults") : nlohmann::json::object();

  std::vector<nlohmann::json> raw;
  if (j.contains("settings")) {
    QTOOL_CHECK(j["settings"].is_array(), ErrorCode::kConfig, "{}: settings must be a list of objects", what);
    for (size_t i = 0; i < j["settings"].size(); ++i)
      raw.push_back(normalize_options(j["settings"][i], fmt::format("{}: settings[{}]", what, i)));
  }
  if (j.contains("sweep")) {
    const nlohmann::json sweep = normalize_options(j["sweep"], what + ": sweep");
    std::vector<nlohmann::json> combos{nlohmann::json::object()};
    for (const auto& [k, vals] : sweep.items()) {
      QTOOL_CHECK(vals.is_array() && !vals.empty(), ErrorCode::kConfig, "{}: sweep '{}' must be a non-empty list",
                  what, k);
      std::vector<nlohmann::json> next;
      for (const auto& c : combos) {
        for (const auto& v : vals) {
          nlohmann::json n = c;
          n[k] = v;
          next.push_back(std::move(n));
        }
      }
      combos = std::move(next);
    }
    // Each sweep point goes on top of every explicit setting, or alone if there are none.
    if (raw.empty()) {
      raw = combos;
    } else {
      std::vector<nlohmann::json> crossed;
      for (const auto& s : raw)
        for (const auto& c : combos) {
          nlohmann::json n = s;
          for (const auto& [k, v] : c.items()) n[k] = v;
          if (s.contains("name")) {
            std::string suffix;
            for (const auto& [k, v] : c.items()) suffix += "_" + k + "=" + scalar_str(v);
            n["name"] = scalar_str(s["name"]) + suffix;
          }
          crossed.push_back(std::move(n));
        }
      raw = std::move(crossed);
    }
  }
  QTOOL_CHECK(!raw.empty(), ErrorCode::kConfig, "{}: no settings (give \"settings\": [...] or \"sweep\": {{...}})", what);

  std::set<std::string> names;
  for (const auto& r : raw) {
    ExperimentSetting s;
    s.options = defaults;
    for (const auto& [k, v] : r.items())
      if (k != "name") s.options[k] = v;
    if (r.contains("name")) {
      s.name = safe_name(scalar_str(r["name"]));
    } else {
      std::string n;
      for (const auto& [k, v] : r.items()) n += (n.empty() ? "" : "_") + k + "=" + scalar_str(v);
      s.name = safe_name(n.empty() ? "defaults" : n);
    }
    QTOOL_CHECK(names.insert(s.name).second, ErrorCode::kConfig, "{}: two settings are named '{}'", what, s.name);
    s.output_model = (fs::path(cfg.output_dir) / (s.name + ".onnx")).string();
    cfg.settings.push_back(std::move(s));
  }
  return cfg;
}
}  // namespace

ExperimentConfig load_experiment_config(const std::string& path) {
  const std::string text = read_file(path);
  std::string ext = fs::path(path).extension().string();
  const bool yaml = ext == ".yaml" || ext == ".yml";
  return parse_experiment_config(text, path, fs::path(path).parent_path().string(), yaml);
}

std::string rows_to_csv(const nlohmann::json& rows) {
  std::vector<std::string> cols;
  std::set<std::string> seen;
  for (const auto& r : rows)
    for (const auto& [k, v] : r.items())
      if (seen.insert(k).second) cols.push_back(k);
  auto quote = [](const std::string& s) {
    if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
    std::string o = "\"";
    for (char c : s) o += c == '"' ? std::string("\"\"") : std::string(1, c);
    return o + "\"";
  };
  std::string out;
  for (size_t i = 0; i < cols.size(); ++i) {
    if (i) out += ',';
    out += quote(cols[i]);
  }
  out += "\n";
  for (const auto& r : rows) {
    for (size_t i = 0; i < cols.size(); ++i) {
      std::string cell;
      if (r.contains(cols[i]) && !r[cols[i]].is_null()) {
        const auto& v = r[cols[i]];
        cell = v.is_array() ? v.dump() : scalar_str(v);
      }
      if (i) out += ',';
      out += quote(cell);
    }
    out += "\n";
  }
  return out;
}

ExperimentOutcome run_experiments(const ExperimentConfig& config, const ExperimentRunner& run_one) {
  ExperimentOutcome outcome;
  std::error_code ec;
  fs::create_directories(config.output_dir, ec);
  QTOOL_CHECK(!ec, ErrorCode::kIo, "cannot create the experiment folder '{}': {}", config.output_dir, ec.message());
  outcome.csv_path = (fs::path(config.output_dir) / "results.csv").string();
  outcome.json_path = (fs::path(config.output_dir) / "results.json").string();
  outcome.rows = nlohmann::json::array();
  for (const auto& s : config.settings) {
    nlohmann::json row;
    row["name"] = s.name;
    for (const auto& [k, v] : s.options.items()) row[k] = v;
    row["output_model"] = s.output_model;
    const auto t0 = std::chrono::steady_clock::now();
    try {
      nlohmann::json metrics = run_one(s);
      if (metrics.is_object())
        for (const auto& [k, v] : metrics.items()) row[k] = v;
      row["status"] = "ok";
      row["error"] = "";
    } catch (const Error& e) {
      if (e.code() == ErrorCode::kInterrupted) throw;
      row["status"] = "failed";
      row["error"] = e.what();
      ++outcome.failed;
    }
    row["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    outcome.rows.push_back(std::move(row));
    // Rewritten after every setting so an interrupted sweep keeps what it finished.
    write_file_atomic(outcome.json_path, outcome.rows.dump(2) + "\n");
    write_file_atomic(outcome.csv_path, rows_to_csv(outcome.rows));
  }
  return outcome;
}

nlohmann::json setting_metrics(const QuantizeReport& r) {
  nlohmann::json m;
  m["precision"] = r.precision;
  m["size_bytes"] = r.output_file_bytes;
  const double pct = r.size_percent();
  if (std::isfinite(pct)) m["size_percent"] = std::round(pct * 100.0) / 100.0;
  m["bits_per_weight"] = std::round(r.bits_per_weight() * 1000.0) / 1000.0;
  double sqnr = std::numeric_limits<double>::infinity(), agree = 2.0;
  for (const auto& o : r.outputs) {
    if (!std::isnan(o.sqnr_db)) sqnr = std::min(sqnr, o.sqnr_db);
    if (!std::isnan(o.top1_agreement)) agree = std::min(agree, o.top1_agreement);
  }
  if (!r.outputs.empty() && std::isfinite(sqnr)) m["sqnr_db"] = std::round(sqnr * 100.0) / 100.0;
  if (agree <= 1.0) m["top1_agreement"] = agree;
  return m;
}

}  // namespace qtool::report

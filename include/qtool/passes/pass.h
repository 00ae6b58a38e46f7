// Graph passes: the one registry of rewrites that prepare a model for quantization.
//
// Every pass is a function `size_t pass(ir::Model&, const PassOptions&)` in its own file
// (src/passes/<name>.cc, header include/qtool/passes/<name>.h); the file name, the pass name
// and its option string are the same word. A pass that finds nothing to rewrite leaves the
// graph unchanged and returns 0; otherwise it returns the number of rewrites it made. A
// pattern that does not match is never an error; a malformed model is (kInvalidModel, naming
// the node).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "qtool/ir/graph.h"

namespace qtool::passes {

/// Knobs shared by the passes (each pass reads only the ones it documents).
struct PassOptions {
  /// fold_constants: a folded output with more elements than this stays a node (ConstantOfShape,
  /// Expand, Tile expansions would otherwise bloat the file).
  int64_t fold_max_elements = int64_t{1} << 20;
  /// fold_constants: when set, only the nodes it accepts are folded.
  std::function<bool(const ir::Node&)> fold_only;
  /// upgrade_opset: the ai.onnx opset the model is brought to (no-op when it is already there).
  int64_t target_opset = 13;
};

/// Signature of every pass.
using PassFn = size_t (*)(ir::Model&, const PassOptions&);

/// One registered pass.
struct PassInfo {
  std::string_view name;     ///< also the option string (`--passes fold_batchnorm,...`)
  std::string_view summary;  ///< one line for --help
  PassFn run;
};

/// Every pass, in the order the default pipeline runs them (src/passes/registry.cc is the one list).
const std::vector<PassInfo>& registered_passes();

/// The pass called `name`; throws kConfig listing the known names if there is none.
const PassInfo& find_pass(std::string_view name);

/// Runs the named passes in order and returns the total number of rewrites.
size_t run_passes(ir::Model& model, const std::vector<std::string>& names, const PassOptions& options = {});

/// The passes `qtool quantize` runs before placing Q/DQ: remove_initializer_inputs, upgrade_opset, eliminate_identity,
/// fold_constants, fold_batchnorm (and eliminate_identity again for what folding exposed).
std::vector<std::string> default_quantize_pipeline();

/// Applies fn to `g` and, recursively, to every subgraph (If/Loop/Scan bodies) of its nodes.
/// Returns the sum of what fn returned.
size_t for_each_graph(ir::Graph& g, const std::function<size_t(ir::Graph&)>& fn);

}  // namespace qtool::passes

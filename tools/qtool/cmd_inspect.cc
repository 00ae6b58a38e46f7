// qtool inspect MODEL [--json]: placeholder until onnx_io lands (see issue 2).
#include "commands.h"
#include "qtool/core/error.h"

namespace qtool::cli {
void add_inspect_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("inspect", "summarise an ONNX model");
  auto path = std::make_shared<std::string>();
  cmd->add_option("model", *path, "ONNX model file")->required();
  cmd->callback([path] { fail(ErrorCode::kUnsupported, "inspect is not implemented yet"); });
}
}  // namespace qtool::cli

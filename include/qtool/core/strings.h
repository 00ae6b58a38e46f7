// Small string helpers shared by the option parsers.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace qtool {

/// The non-empty items of a `sep`-separated list ("a,,b" -> {"a", "b"}).
std::vector<std::string> split_list(std::string_view s, char sep = ',');

}  // namespace qtool

// The committed reference fixtures (tests/data/*/reference.json) for parameterised tests.
#pragma once

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <string>
#include <vector>

namespace deltaserve::testing {

// Every fixture directory under `data_dir` that has a reference.json, sorted.
inline std::vector<std::string> FixtureDirs(const std::string& data_dir) {
  std::vector<std::string> dirs;
  for (const auto& entry : std::filesystem::directory_iterator(data_dir)) {
    if (std::filesystem::exists(entry.path() / "reference.json")) dirs.push_back(entry.path().string());
  }
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

// A fixture directory's name as a GoogleTest parameter name (letters, digits, '_').
inline std::string FixtureTestName(const std::string& dir) {
  std::string name = std::filesystem::path(dir).filename().string();
  for (char& c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return name;
}

}  // namespace deltaserve::testing

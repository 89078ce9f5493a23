// The disk tier: durable atomic part and session files, verified reads, a rebuilding scan.
#include "services/session_store/disk_tier.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/status_macros.h"
#include "services/session_store/file_io.h"
#include "services/session_store/store_names.h"
#include "spdlog/spdlog.h"

namespace deltaserve::services {
namespace {

constexpr char kSessionsDir[] = "sessions";
constexpr char kStagingDir[] = "staging";
constexpr char kTrashDir[] = "trash";
constexpr char kQuarantineDir[] = "quarantine";
constexpr char kLockFile[] = "LOCK";
constexpr char kMetaFile[] = "session.meta";
constexpr char kPartSuffix[] = ".part";
constexpr size_t kMaxMetaBytes = 36 + kMaxStoredTenantBytes + kMaxSessionIdBytes + 4;

// Lists a directory's entries before the caller renames any of them.
std::vector<std::filesystem::directory_entry> ListDir(const std::string& dir) {
  std::vector<std::filesystem::directory_entry> entries;
  std::error_code error;
  std::filesystem::directory_iterator it(dir, error);
  if (error) {
    spdlog::error("session store: cannot list '{}': {}", dir, error.message());
    return entries;
  }
  for (const auto& entry : it) entries.push_back(entry);
  return entries;
}

bool PathExists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

}  // namespace

absl::StatusOr<std::unique_ptr<DiskTier>> DiskTier::Open(const std::string& data_dir) {
  std::error_code error;
  std::filesystem::create_directories(data_dir, error);
  if (error) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create session store directory '", data_dir, "': ", error.message()));
  }
  for (const char* sub : {kSessionsDir, kStagingDir, kTrashDir, kQuarantineDir}) {
    DS_RETURN_IF_ERROR(MakeDir(absl::StrCat(data_dir, "/", sub)));
  }
  const std::string lock_path = absl::StrCat(data_dir, "/", kLockFile);
  const int lock_fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd < 0) return ErrnoError(errno, "open", lock_path);
  if (::flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
    const int flock_errno = errno;
    ::close(lock_fd);
    if (flock_errno == EWOULDBLOCK) {
      return absl::FailedPreconditionError(
          absl::StrCat("session store directory '", data_dir, "' is in use by another store"));
    }
    return ErrnoError(flock_errno, "flock", lock_path);
  }
  for (const char* sub : {kStagingDir, kTrashDir}) {
    for (const auto& entry : ListDir(absl::StrCat(data_dir, "/", sub))) {
      RemoveTreeBestEffort(entry.path().string());
    }
  }
  const std::string tag = absl::StrCat(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                           std::chrono::system_clock::now().time_since_epoch())
                                           .count(),
                                       "-", ::getpid());
  return std::unique_ptr<DiskTier>(new DiskTier(data_dir, lock_fd, tag));
}

DiskTier::DiskTier(std::string data_dir, int lock_fd, std::string instance_tag)
    : data_dir_(std::move(data_dir)), lock_fd_(lock_fd), instance_tag_(std::move(instance_tag)) {}

DiskTier::~DiskTier() { ::close(lock_fd_); }

std::string DiskTier::SessionDir(std::string_view session_id) const {
  return absl::StrFormat("%s/%s/%s", data_dir_, kSessionsDir, session_id);
}

std::string DiskTier::PartFileName(std::string_view part) const {
  return absl::StrFormat("%s%s", part, kPartSuffix);
}

std::string DiskTier::UniqueName(std::string_view stem) {
  constexpr size_t kMaxStemBytes = 200;  // keeps the name under NAME_MAX (255)
  return absl::StrFormat("%s.%s.%d", stem.substr(0, kMaxStemBytes), instance_tag_,
                         next_unique_.fetch_add(1));
}

bool DiskTier::Quarantine(const std::string& path, std::string_view label,
                          std::string_view reason) {
  const std::string dest = absl::StrCat(data_dir_, "/", kQuarantineDir, "/", UniqueName(label));
  if (::rename(path.c_str(), dest.c_str()) == 0) {
    spdlog::warn("session store: quarantined '{}' as '{}': {}", path, dest, std::string(reason));
    return true;
  }
  if (errno == ENOENT) return false;
  // Could not move it aside: remove it, so that it stops failing reads and opens.
  spdlog::error("session store: cannot quarantine '{}' ({}): {}; removing it", path,
                std::string(reason), std::strerror(errno));
  RemoveTreeBestEffort(path);
  return true;
}

absl::Status DiskTier::ClearStaleSessionDir(const std::string& dir) {
  if (!PathExists(dir)) return absl::OkStatus();
  spdlog::warn("session store: removing stale directory '{}'", dir);
  const std::string trash = absl::StrCat(data_dir_, "/", kTrashDir, "/", UniqueName("stale"));
  DS_RETURN_IF_ERROR(RenamePath(dir, trash));
  RemoveTreeBestEffort(trash);
  return absl::OkStatus();
}

absl::StatusOr<SessionMeta> DiskTier::ReadMeta(const std::string& dir,
                                               std::string_view session_id) {
  DS_ASSIGN_OR_RETURN(std::string bytes,
                      ReadWholeFile(absl::StrCat(dir, "/", kMetaFile), kMaxMetaBytes));
  DS_ASSIGN_OR_RETURN(SessionMeta meta, DecodeSessionMeta(bytes));
  if (meta.session_id != session_id) {
    return absl::DataLossError(absl::StrFormat("session metadata names session '%s', expected '%s'",
                                               meta.session_id, session_id));
  }
  if (meta.tenant.empty()) return absl::DataLossError("session metadata has an empty tenant");
  return meta;
}

absl::StatusOr<PartHeader> DiskTier::ScanPart(const std::string& path, const SessionMeta& meta,
                                              std::string_view part) {
  uint64_t file_bytes = 0;
  DS_ASSIGN_OR_RETURN(std::string head, ReadFileRange(path, 0, kMaxPartHeaderBytes, &file_bytes));
  size_t header_bytes = 0;
  DS_ASSIGN_OR_RETURN(PartHeader header, DecodePartHeader(head, &header_bytes));
  if (header.session_id != meta.session_id || header.part != part || header.tenant != meta.tenant) {
    return absl::DataLossError(absl::StrFormat(
        "header names session '%s' part '%s' (or another tenant), not its place ('%s' of '%s')",
        header.session_id, header.part, part, meta.session_id));
  }
  if (file_bytes != header_bytes + header.payload_bytes) {
    return absl::DataLossError(absl::StrCat("file has ", file_bytes, " bytes, header says ",
                                            header_bytes + header.payload_bytes));
  }
  return header;
}

DiskTier::ScanResult DiskTier::Scan() {
  ScanResult result;
  for (const auto& session_entry : ListDir(absl::StrCat(data_dir_, "/", kSessionsDir))) {
    const std::string dir = session_entry.path().string();
    const std::string id = session_entry.path().filename().string();
    std::error_code error;
    if (!session_entry.is_directory(error)) {
      if (Quarantine(dir, id, "not a session directory")) ++result.quarantined_files;
      continue;
    }
    if (!ValidateSessionId(id).ok()) {
      if (Quarantine(dir, "bad-session-id", "not a valid session id")) ++result.quarantined_files;
      continue;
    }
    const auto files = ListDir(dir);
    absl::StatusOr<SessionMeta> meta = ReadMeta(dir, id);
    if (!meta.ok()) {
      bool only_temp_files = true;
      for (const auto& file : files) {
        only_temp_files &= absl::StartsWith(file.path().filename().string(), kTempFilePrefix);
      }
      if (only_temp_files) {  // a create that never finished: nothing was acknowledged
        RemoveTreeBestEffort(dir);
      } else if (Quarantine(dir, id, absl::StrCat("session metadata: ", meta.status().message()))) {
        ++result.quarantined_files;
      }
      continue;
    }
    ScannedSession session{*std::move(meta), {}};
    for (const auto& file : files) {
      const std::string name = file.path().filename().string();
      const std::string path = file.path().string();
      if (name == kMetaFile) continue;
      if (absl::StartsWith(name, kTempFilePrefix)) {  // a write that never finished
        RemoveTreeBestEffort(path);
        continue;
      }
      const std::string label = absl::StrCat(id, "-", name);
      if (!absl::EndsWith(name, kPartSuffix) ||
          !ValidatePartName(name.substr(0, name.size() - sizeof(kPartSuffix) + 1)).ok()) {
        if (Quarantine(path, label, "unknown file in a session directory")) {
          ++result.quarantined_files;
        }
        continue;
      }
      const std::string part = name.substr(0, name.size() - sizeof(kPartSuffix) + 1);
      absl::StatusOr<PartHeader> header = ScanPart(path, session.meta, part);
      if (!header.ok()) {
        if (Quarantine(path, label, std::string(header.status().message())))
          ++result.quarantined_files;
        continue;
      }
      session.parts.push_back(*std::move(header));
    }
    result.sessions.push_back(std::move(session));
  }
  return result;
}

absl::Status DiskTier::CreateSession(const SessionMeta& meta) {
  const std::string dir = SessionDir(meta.session_id);
  DS_RETURN_IF_ERROR(ClearStaleSessionDir(dir));
  DS_RETURN_IF_ERROR(MakeDir(dir));
  absl::Status status = FsyncDir(absl::StrCat(data_dir_, "/", kSessionsDir));
  if (status.ok()) {
    const std::string meta_bytes = EncodeSessionMeta(meta);
    status = WriteFileAtomically(dir, kMetaFile, UniqueName(absl::StrCat(kTempFilePrefix, "meta")),
                                 {meta_bytes});
  }
  if (!status.ok()) RemoveTreeBestEffort(dir);
  return status;
}

absl::Status DiskTier::WritePart(const PartHeader& header, std::string_view payload) {
  const std::string header_bytes = EncodePartHeader(header);
  return WriteFileAtomically(SessionDir(header.session_id), PartFileName(header.part),
                             UniqueName(absl::StrCat(kTempFilePrefix, header.part)),
                             {header_bytes, payload});
}

absl::StatusOr<std::string> DiskTier::ReadPart(const PartHeader& expected) {
  const std::string path =
      absl::StrCat(SessionDir(expected.session_id), "/", PartFileName(expected.part));
  const std::string where =
      absl::StrCat("part '", expected.part, "' of session '", expected.session_id, "'");
  uint64_t file_bytes = 0;
  absl::StatusOr<std::string> head = ReadFileRange(path, 0, kMaxPartHeaderBytes, &file_bytes);
  if (absl::IsNotFound(head.status())) {
    return absl::DataLossError(absl::StrCat(where, ": its file is missing"));
  }
  if (!head.ok()) return head.status();
  size_t header_bytes = 0;
  absl::StatusOr<PartHeader> header = DecodePartHeader(*head, &header_bytes);
  if (!header.ok())
    return absl::DataLossError(absl::StrCat(where, ": ", header.status().message()));
  if (header->tenant != expected.tenant || header->session_id != expected.session_id ||
      header->part != expected.part || header->kind != expected.kind ||
      header->payload_bytes != expected.payload_bytes ||
      header->payload_crc32 != expected.payload_crc32) {
    return absl::DataLossError(
        absl::StrCat(where, ": file header disagrees with the index (replaced behind the store?)"));
  }
  if (file_bytes != header_bytes + header->payload_bytes) {
    return absl::DataLossError(absl::StrCat(where, ": file has ", file_bytes, " bytes, expected ",
                                            header_bytes + header->payload_bytes));
  }
  DS_ASSIGN_OR_RETURN(std::string payload,
                      ReadFileRange(path, header_bytes, header->payload_bytes, nullptr));
  if (payload.size() != header->payload_bytes) {
    return absl::DataLossError(absl::StrCat(where, ": payload is truncated"));
  }
  const uint32_t crc = Crc32(payload);
  if (crc != header->payload_crc32) {
    return absl::DataLossError(
        absl::StrFormat("%s: payload checksum mismatch: stored %08x, "
                        "computed %08x",
                        where, header->payload_crc32, crc));
  }
  return payload;
}

absl::Status DiskTier::WriteSession(
    const SessionMeta& meta, const std::vector<std::pair<PartHeader, std::string_view>>& parts) {
  const std::string staging =
      absl::StrCat(data_dir_, "/", kStagingDir, "/", UniqueName(meta.session_id));
  DS_RETURN_IF_ERROR(MakeDir(staging));
  absl::Status status = [&]() -> absl::Status {
    const std::string meta_bytes = EncodeSessionMeta(meta);
    DS_RETURN_IF_ERROR(WriteFileDurably(absl::StrCat(staging, "/", kMetaFile), {meta_bytes}));
    for (const auto& [header, payload] : parts) {
      const std::string header_bytes = EncodePartHeader(header);
      DS_RETURN_IF_ERROR(WriteFileDurably(absl::StrCat(staging, "/", PartFileName(header.part)),
                                          {header_bytes, payload}));
    }
    DS_RETURN_IF_ERROR(FsyncDir(staging));
    const std::string dir = SessionDir(meta.session_id);
    DS_RETURN_IF_ERROR(ClearStaleSessionDir(dir));
    DS_RETURN_IF_ERROR(RenamePath(staging, dir));
    return FsyncDir(absl::StrCat(data_dir_, "/", kSessionsDir));
  }();
  if (!status.ok()) RemoveTreeBestEffort(staging);
  return status;
}

absl::Status DiskTier::RemoveSession(std::string_view session_id) {
  const std::string dir = SessionDir(session_id);
  const std::string trash = absl::StrCat(data_dir_, "/", kTrashDir, "/", UniqueName(session_id));
  absl::Status moved = RenamePath(dir, trash);
  if (absl::IsNotFound(moved)) return absl::OkStatus();
  DS_RETURN_IF_ERROR(moved);
  DS_RETURN_IF_ERROR(FsyncDir(absl::StrCat(data_dir_, "/", kSessionsDir)));
  RemoveTreeBestEffort(trash);
  return absl::OkStatus();
}

bool DiskTier::QuarantinePart(std::string_view session_id, std::string_view part,
                              std::string_view reason) {
  return Quarantine(absl::StrCat(SessionDir(session_id), "/", PartFileName(part)),
                    absl::StrFormat("%s-%s", session_id, part), reason);
}

}  // namespace deltaserve::services

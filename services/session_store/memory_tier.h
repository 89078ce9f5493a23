// The memory tier: part payloads held in memory, in least-recently-used order by session and,
// within a session, by part. It holds no policy: the store decides what to evict and when.
#pragma once

#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace deltaserve::services {

// Not thread-safe: the store calls it under its own lock. Payloads are immutable and shared,
// so a reader can copy one out after the lock is released.
class MemoryTier {
 public:
  using Payload = std::shared_ptr<const std::string>;
  struct Victim {
    std::string session_id;
    std::string part;
  };

  // Inserts or replaces a payload; the part and its session become the most recently used.
  void Put(std::string_view session_id, std::string_view part, Payload payload);
  // The payload, marked most recently used with its session; null when not held.
  Payload Get(std::string_view session_id, std::string_view part);
  bool Contains(std::string_view session_id, std::string_view part) const;
  int64_t SessionBytes(std::string_view session_id) const;
  void Erase(std::string_view session_id, std::string_view part);
  void EraseSession(std::string_view session_id);
  // The least recently used part of the least recently used session other than
  // `except_session`; nullopt when there is none.
  std::optional<Victim> LeastRecentlyUsed(std::string_view except_session) const;

  int64_t bytes() const { return bytes_; }
  int64_t parts() const { return parts_; }

 private:
  struct Entry {
    Payload payload;
    std::list<std::string>::iterator lru_pos;
  };
  struct SessionSlot {
    std::list<std::string> part_lru;  // front: most recently used
    std::map<std::string, Entry, std::less<>> parts;
    int64_t bytes = 0;
    std::list<std::string>::iterator lru_pos;
  };

  void EraseEntry(SessionSlot& slot, std::string_view part);

  std::list<std::string> session_lru_;  // front: most recently used
  std::map<std::string, SessionSlot, std::less<>> sessions_;
  int64_t bytes_ = 0;
  int64_t parts_ = 0;
};

}  // namespace deltaserve::services

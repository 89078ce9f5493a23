// The memory tier's two-level LRU bookkeeping.
#include "services/session_store/memory_tier.h"

#include "base/check.h"

namespace deltaserve::services {

void MemoryTier::Put(std::string_view session_id, std::string_view part, Payload payload) {
  DS_CHECK(payload != nullptr);
  auto it = sessions_.find(session_id);
  const bool inserted = it == sessions_.end();
  if (inserted) it = sessions_.emplace(std::string(session_id), SessionSlot()).first;
  SessionSlot& slot = it->second;
  if (inserted) {
    session_lru_.emplace_front(session_id);
    slot.lru_pos = session_lru_.begin();
  } else {
    session_lru_.splice(session_lru_.begin(), session_lru_, slot.lru_pos);
    EraseEntry(slot, part);
  }
  const auto size = static_cast<int64_t>(payload->size());
  slot.part_lru.emplace_front(part);
  slot.parts.insert_or_assign(std::string(part), Entry{std::move(payload), slot.part_lru.begin()});
  slot.bytes += size;
  bytes_ += size;
  ++parts_;
}

MemoryTier::Payload MemoryTier::Get(std::string_view session_id, std::string_view part) {
  auto it = sessions_.find(session_id);
  if (it == sessions_.end()) return nullptr;
  SessionSlot& slot = it->second;
  auto entry = slot.parts.find(part);
  if (entry == slot.parts.end()) return nullptr;
  session_lru_.splice(session_lru_.begin(), session_lru_, slot.lru_pos);
  slot.part_lru.splice(slot.part_lru.begin(), slot.part_lru, entry->second.lru_pos);
  return entry->second.payload;
}

bool MemoryTier::Contains(std::string_view session_id, std::string_view part) const {
  auto it = sessions_.find(session_id);
  return it != sessions_.end() && it->second.parts.find(part) != it->second.parts.end();
}

int64_t MemoryTier::SessionBytes(std::string_view session_id) const {
  auto it = sessions_.find(session_id);
  return it == sessions_.end() ? 0 : it->second.bytes;
}

void MemoryTier::EraseEntry(SessionSlot& slot, std::string_view part) {
  auto entry = slot.parts.find(part);
  if (entry == slot.parts.end()) return;
  const auto size = static_cast<int64_t>(entry->second.payload->size());
  slot.part_lru.erase(entry->second.lru_pos);
  slot.parts.erase(entry);
  slot.bytes -= size;
  bytes_ -= size;
  --parts_;
}

void MemoryTier::Erase(std::string_view session_id, std::string_view part) {
  auto it = sessions_.find(session_id);
  if (it == sessions_.end()) return;
  EraseEntry(it->second, part);
  if (it->second.parts.empty()) {
    session_lru_.erase(it->second.lru_pos);
    sessions_.erase(it);
  }
}

void MemoryTier::EraseSession(std::string_view session_id) {
  auto it = sessions_.find(session_id);
  if (it == sessions_.end()) return;
  bytes_ -= it->second.bytes;
  parts_ -= static_cast<int64_t>(it->second.parts.size());
  session_lru_.erase(it->second.lru_pos);
  sessions_.erase(it);
}

std::optional<MemoryTier::Victim> MemoryTier::LeastRecentlyUsed(
    std::string_view except_session) const {
  for (auto it = session_lru_.rbegin(); it != session_lru_.rend(); ++it) {
    if (*it == except_session) continue;
    const SessionSlot& slot = sessions_.find(*it)->second;
    return Victim{*it, slot.part_lru.back()};
  }
  return std::nullopt;
}

}  // namespace deltaserve::services

// The CPU block arena: torch's CPU allocator on CPU runs, so that a training step reuses the pages of the
// step before instead of having the kernel fault in and zero them again (docs/performance.md, "Page faults").
//
// Blocks of at least `min_block` bytes come from one reserved address range: the smallest free block that
// fits, else the range's top; a freed block merges with its free neighbours, and a free block that ends at
// the top lowers it.  Pages stay resident after a block is freed, up to a budget: the largest total of
// blocks live at once so far.  Beyond it, the arena gives pages of free space back to the kernel
// (madvise DONTNEED): first the space above the top, from its end, then the largest free blocks.  So the
// arena's resident memory never exceeds the most memory its blocks needed at one time, and a step that
// repeats the last one's allocations touches mostly pages that are already there.  Smaller blocks, and
// any block the range has no room for, go to the allocator torch had before; when that one runs out of
// memory, the arena gives all its free pages back and it tries again.  Blocks are aligned to 64 bytes, as
// torch's own CPU blocks are.
//
// Built on first use by metagmvae/cpu_memory.py with the installed torch's headers; its entry point is
// metagmvae_use_cpu_arena().
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <map>
#include <mutex>
#include <set>
#include <unordered_map>
#include <utility>

namespace {

constexpr size_t kAlignment = 64;         // c10's CPU alignment
constexpr size_t kCommitStep = 64 << 20;  // the reserved range is made read-write this much at a time
constexpr size_t kHugePage = 2 << 20;

size_t round_up(size_t n, size_t multiple) { return (n + multiple - 1) / multiple * multiple; }
size_t round_down(size_t n, size_t multiple) { return n / multiple * multiple; }

class CpuArena final : public c10::Allocator {
 public:
  CpuArena(c10::Allocator* fallback, char* base, size_t reserved, size_t min_block, bool huge_pages)
      : fallback_(fallback), base_(base), reserved_(reserved), min_block_(min_block), huge_pages_(huge_pages),
        page_(huge_pages ? kHugePage : sysconf(_SC_PAGESIZE)) {}

  c10::DataPtr allocate(size_t nbytes) override {
    void* data = nbytes >= min_block_ ? take(round_up(nbytes, kAlignment)) : nullptr;
    if (data != nullptr) {
      c10::profiledCPUMemoryReporter().New(data, nbytes);  // what torch's own allocator reports
    } else {
      try {
        data = fallback_->raw_allocate(nbytes);
      } catch (const c10::Error&) {  // out of memory: give every free page of the arena back, try again
        {
          std::lock_guard<std::mutex> lock(mutex_);
          give_back_free_pages(SIZE_MAX);
        }
        data = fallback_->raw_allocate(nbytes);
      }
    }
    return {data, data, &release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

 private:
  static void release(void* data);

  bool owns(const void* data) const {
    auto p = static_cast<const char*>(data);
    return p >= base_ && p < base_ + reserved_;
  }

  void* take(size_t size) {
    std::lock_guard<std::mutex> lock(mutex_);
    size_t offset;
    auto fit = by_size_.lower_bound({size, 0});
    if (fit != by_size_.end()) {
      auto [free_size, free_offset] = *fit;
      erase_free(by_offset_.find(free_offset));
      if (free_size > size) insert_free(free_offset + size, free_size - size);
      offset = free_offset;
    } else {
      if (size > reserved_ - top_ || !commit(top_ + size)) return nullptr;
      offset = top_;
      top_ += size;
    }
    live_.emplace(offset, size);
    live_bytes_ += size;
    budget_ = std::max(budget_, live_bytes_);
    touch(offset, offset + size);
    return base_ + offset;
  }

  void give_back(const void* data) {
    std::lock_guard<std::mutex> lock(mutex_);
    size_t offset = static_cast<const char*>(data) - base_;
    auto block = live_.find(offset);
    size_t size = block->second;
    live_.erase(block);
    live_bytes_ -= size;
    auto next = by_offset_.find(offset + size);
    if (next != by_offset_.end()) {
      size += next->second;
      erase_free(next);
    }
    auto after = by_offset_.lower_bound(offset);
    if (after != by_offset_.begin()) {
      auto previous = std::prev(after);
      if (previous->first + previous->second == offset) {
        offset = previous->first;
        size += previous->second;
        erase_free(previous);
      }
    }
    if (offset + size == top_) {
      top_ = offset;
    } else {
      insert_free(offset, size);
    }
  }

  // The pages of [begin, end) are about to be written: count them resident, then keep the resident total
  // within the budget.
  void touch(size_t begin, size_t end) {
    size_t first = round_down(begin, page_), last = round_up(end, page_);
    released_bytes_ -= unmark_released(first, last);
    high_ = std::max(high_, last);
    size_t resident = high_ - released_bytes_;
    if (resident > round_up(budget_, page_)) give_back_free_pages(resident - round_up(budget_, page_));
  }

  // Give back up to `wanted` bytes of resident free pages: above the top first, then the largest free blocks.
  void give_back_free_pages(size_t wanted) {
    wanted -= give_pages_back(round_up(top_, page_), high_, wanted);
    for (auto block = by_size_.rbegin(); wanted > 0 && block != by_size_.rend(); ++block) {
      auto [size, offset] = *block;
      wanted -= give_pages_back(round_up(offset, page_), round_down(offset + size, page_), wanted);
    }
  }

  // Give back up to `wanted` bytes of the whole pages in [first, last), from its end; returns the bytes that
  // were resident before.
  size_t give_pages_back(size_t first, size_t last, size_t wanted) {
    size_t given = 0;
    while (given < wanted && last > first) {
      size_t begin = last - round_up(std::min(last - first, wanted - given), page_);
      madvise(base_ + begin, last - begin, MADV_DONTNEED);
      given += mark_released(begin, last);
      last = begin;
    }
    return std::min(given, wanted);
  }

  // released_ holds disjoint page ranges given back and not used since: begin -> end.
  size_t mark_released(size_t begin, size_t end) {
    size_t already = unmark_released(begin, end);
    released_.emplace(begin, end);
    released_bytes_ += end - begin - already;
    return end - begin - already;
  }

  // Remove [begin, end) from released_; returns how many of its bytes were in it.
  size_t unmark_released(size_t begin, size_t end) {
    size_t overlap = 0;
    auto range = released_.upper_bound(begin);
    if (range != released_.begin() && std::prev(range)->second > begin) --range;
    while (range != released_.end() && range->first < end) {
      auto [range_begin, range_end] = *range;
      overlap += std::min(range_end, end) - std::max(range_begin, begin);
      range = released_.erase(range);
      if (range_begin < begin) released_.emplace(range_begin, begin);
      if (range_end > end) range = released_.emplace(end, range_end).first;
    }
    return overlap;
  }

  // Make the range up to `end` read-write; false when the kernel refuses.
  bool commit(size_t end) {
    if (end <= committed_) return true;
    size_t new_committed = std::min(reserved_, round_up(end, kCommitStep));
    if (mprotect(base_ + committed_, new_committed - committed_, PROT_READ | PROT_WRITE) != 0) return false;
    if (huge_pages_) madvise(base_ + committed_, new_committed - committed_, MADV_HUGEPAGE);
    committed_ = new_committed;
    return true;
  }

  void insert_free(size_t offset, size_t size) {
    by_offset_.emplace(offset, size);
    by_size_.emplace(size, offset);
  }

  void erase_free(std::map<size_t, size_t>::iterator block) {
    by_size_.erase({block->second, block->first});
    by_offset_.erase(block);
  }

  c10::Allocator* const fallback_;
  char* const base_;
  const size_t reserved_, min_block_;
  const bool huge_pages_;
  const size_t page_;
  std::mutex mutex_;
  size_t top_ = 0;             // offsets from top_ on hold no block
  size_t committed_ = 0;       // offsets below committed_ are read-write
  size_t high_ = 0;            // pages below high_ have been written at least once
  size_t live_bytes_ = 0;      // bytes in blocks now
  size_t budget_ = 0;          // the most bytes in blocks at one time so far
  size_t released_bytes_ = 0;  // bytes in released_
  std::map<size_t, size_t> by_offset_;           // free blocks below top_: offset -> size
  std::set<std::pair<size_t, size_t>> by_size_;  // the same free blocks: (size, offset)
  std::unordered_map<size_t, size_t> live_;      // blocks in use: offset -> size
  std::map<size_t, size_t> released_;            // page ranges given back: begin -> end
};

CpuArena* arena = nullptr;  // never destroyed: tensors may be freed while the interpreter shuts down

void CpuArena::release(void* data) {
  if (data == nullptr) return;
  if (arena->owns(data)) {
    c10::profiledCPUMemoryReporter().Delete(data);
    arena->give_back(data);
  } else {
    arena->fallback_->raw_deallocate(data);
  }
}

}  // namespace

// Make the arena torch's CPU allocator, with `reserve` bytes of address space (memory only where used),
// blocks of at least `min_block` bytes, and 2 MB pages asked for when `huge_pages`.  Returns 1 when torch
// allocates through it (also when it already did), 0 when the range could not be reserved or torch kept
// another allocator.
extern "C" int metagmvae_use_cpu_arena(size_t reserve, size_t min_block, int huge_pages) {
  if (arena != nullptr) return c10::GetCPUAllocator() == arena;
  reserve = round_up(reserve, kHugePage);
  void* range = mmap(nullptr, reserve + kHugePage, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (range == MAP_FAILED) return 0;
  auto base = reinterpret_cast<char*>(round_up(reinterpret_cast<uintptr_t>(range), kHugePage));
  arena = new CpuArena(c10::GetCPUAllocator(), base, reserve, min_block, huge_pages != 0);
  c10::SetCPUAllocator(arena, /*priority=*/1);
  return c10::GetCPUAllocator() == arena;
}

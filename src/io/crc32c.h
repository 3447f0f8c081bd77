// CRC32C (Castagnoli: polynomial 0x1EDC6F41, reflected, initial value and
// final xor 0xFFFFFFFF), the checksum of iSCSI, ext4 and Btrfs, that
// safetensors files written here carry per tensor (io/safetensors.h).
//
// Crc32c uses the SSE4.2 crc32 instruction when the CPU has it, chosen once
// at run time (the library is not built with -msse4.2, so the binary still
// runs on a CPU without it), over three interleaved streams so that the
// instruction's latency does not bound the rate; otherwise a portable
// table-driven loop (slicing by 8). Both give the same values.
#pragma once

#include <cstddef>
#include <cstdint>

namespace mingpt {

// The CRC32C of data[0, n), continuing from `crc`, the value returned for
// the bytes before: Crc32c(b, nb, Crc32c(a, na)) == Crc32c of a then b.
// Crc32c(anything, 0, c) == c; the CRC of no bytes is 0.
uint32_t Crc32c(const void* data, size_t n, uint32_t crc = 0);

// The CRC32C of A then B from Crc32c(A), Crc32c(B) and B's length, without
// the bytes: for pieces of one tensor read in different places (different
// ranks), whose checksums combine into the whole tensor's.
uint32_t Crc32cCombine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);

// The two implementations behind Crc32c, for tests and benchmarks.
namespace crc32c_internal {
uint32_t Portable(const void* data, size_t n, uint32_t crc);
// True when Sse42 may be called (an x86-64 CPU with SSE4.2).
bool HaveSse42();
// Requires HaveSse42().
uint32_t Sse42(const void* data, size_t n, uint32_t crc);
}  // namespace crc32c_internal

}  // namespace mingpt

// examples/primes.hpp — the prime tests several examples share: plain trial
// division (the articles' workload: cheap for most composites, about √n/2
// divisions for a prime) and a deterministic Miller-Rabin test, used only to set
// up inputs and expected answers quickly.
#pragma once

#include <cmath>
#include <cstdint>
#include <initializer_list>

namespace examples {

/// Trial division by 2 and the odd numbers up to √n.
inline bool is_prime_trial(std::uint64_t n) {
  if (n < 2) return false;
  if (n % 2 == 0) return n == 2;
  for (std::uint64_t d = 3; d * d <= n; d += 2) {
    if (n % d == 0) return false;
  }
  return true;
}

__extension__ using u128 = unsigned __int128;  // a GCC/Clang extension: 64x64->128 multiply

inline std::uint64_t mulmod(std::uint64_t a, std::uint64_t b, std::uint64_t m) {
  return static_cast<std::uint64_t>(static_cast<u128>(a) * b % m);
}
inline std::uint64_t powmod(std::uint64_t b, std::uint64_t e, std::uint64_t m) {
  std::uint64_t r = 1;
  for (b %= m; e; e >>= 1, b = mulmod(b, b, m)) {
    if (e & 1) r = mulmod(r, b, m);
  }
  return r;
}

/// Miller-Rabin with the first twelve primes as bases: exact for every 64-bit n.
inline bool is_prime_fast(std::uint64_t n) {
  if (n < 2) return false;
  for (std::uint64_t p : {2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37}) {
    if (n % p == 0) return n == p;
  }
  std::uint64_t d = n - 1;
  int s = 0;
  for (; d % 2 == 0; d /= 2) ++s;
  for (std::uint64_t a : {2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37}) {
    std::uint64_t x = powmod(a, d, n);
    if (x == 1 || x == n - 1) continue;
    bool composite = true;
    for (int r = 1; r < s && composite; ++r) composite = (x = mulmod(x, x, n)) != n - 1;
    if (composite) return false;
  }
  return true;
}

/// The smallest prime ≥ n.
inline std::uint64_t next_prime(std::uint64_t n) {
  while (!is_prime_fast(n)) ++n;
  return n;
}

/// ⌊√n⌋, exactly (a double's square root can be off by one near 2^64).
inline std::uint64_t isqrt(std::uint64_t n) {
  auto r = static_cast<std::uint64_t>(std::sqrt(static_cast<double>(n)));
  while (r * r > n) --r;
  while ((r + 1) * (r + 1) <= n) ++r;
  return r;
}

}  // namespace examples

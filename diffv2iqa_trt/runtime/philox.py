"""A counter-based standard-normal generator specified completely here, for bit-exact ports to C++ and CUDA.

runtime/noise.py makes the sampler's noise bank with it; cpp/include/diffv2iqa/philox.hpp implements the same
specification in C++17 and tests/test_philox.py cross-checks the two.

Specification (GENERATOR names it)
==================================
Integer arithmetic is on unsigned 32-bit words (mod 2**32) unless stated. Real arithmetic is IEEE-754 binary64
(float64), round-to-nearest-even, every operation rounded on its own (no fused multiply-add, no x87 extended precision,
no -ffast-math), evaluated exactly in the order and grouping written.

1. Block function: Philox-4x32-10 (Salmon, Moraes, Dror, Shaw, SC'11, "Random123").
   Counter (c0, c1, c2, c3), key (k0, k1); mulhilo(M, x) = (high word, low word) of the 64-bit product M * x.
   M0 = 0xD2511F53, M1 = 0xCD9E8D57; Weyl key increments W0 = 0x9E3779B9, W1 = 0xBB67AE85.
   One round:  (hi0, lo0) = mulhilo(M0, c0);  (hi1, lo1) = mulhilo(M1, c2);
               (c0, c1, c2, c3) <- (hi1 ^ c1 ^ k0,  lo1,  hi0 ^ c3 ^ k1,  lo0)
   Ten rounds. Round 1 uses the key as given; before each of rounds 2..10 the key is bumped: k0 += W0, k1 += W1
   (mod 2**32). The block is the final (c0, c1, c2, c3) =: (x0, x1, x2, x3). Random123's known-answer vectors hold.

2. Streams. Seed s (0 <= s < 2**64) and row r (0 <= r < 2**32) select the stream:
       key     = (k0, k1) = (s mod 2**32, s >> 32)
       counter = (i, r, 0, 0) for block i = 0, 1, 2, ... (i < 2**32, so a row holds at most 2**34 values)
   Distinct (s, r, i) give distinct (key, counter) pairs. A noise bank (normal_bank, layout (T + 1, 3, H, W)) is rows
   0..T of one seed, each row of shape (3, H, W).

3. Values. A row of n values (C order over its shape, e.g. (3, H, W)) is the concatenation of blocks 0 .. ceil(n/4)-1,
   four values per block, the unused values of the last block discarded: value e of the row is value e % 4 of block
   e // 4. Block (x0, x1, x2, x3) gives (v0, v1) = pair(x0, x1) and (v2, v3) = pair(x2, x3).
   pair(u, w) is Box-Muller with radius sqrt(-2 ln a), a = (u + 0.5) / 2**32, and angle theta = 2 pi (w + 0.5) / 2**32;
   cos(theta) and sin(theta) come from a table at theta's top 10 bits and short polynomials in the remainder (no libm
   sin or cos):
       a   = (u + 0.5) * 2**-32          exact (u + 0.5 needs 33 bits; the scaling is a power of two); 0 < a < 1
       rho = sqrt(-2.0 * log(a))         log: the platform's float64 natural logarithm, the only libm function;
                                         -2.0 * (.) is exact; sqrt is IEEE (correctly rounded)
       j   = w >> 22                     0 .. 1023, so theta = 2 pi j / 1024 + t
       t   = ((w & 0x3FFFFF) + 0.5) * K  K = 0x1.921fb54442d18p-30 = TWO_PI * 2**-32 (exact), TWO_PI =
                                         0x1.921fb54442d18p+2 the float64 nearest 2 pi; 0 < t < 2 pi / 1024
       z   = t * t
       cl  = 1.0 + z * (C2 + z * C4)     ~ cos(t);  C2 = -0.5, C4 = 0x1.5555555555555p-5 (nearest 1/24)
       sl  = t + (t * z) * (S3 + z * S5) ~ sin(t);  S3 = -0x1.5555555555555p-3 (nearest -1/6),
                                                    S5 = 0x1.1111111111111p-7 (nearest 1/120)
       x   = CT[j] * cl - ST[j] * sl     ~ cos(theta)
       y   = ST[j] * cl + CT[j] * sl     ~ sin(theta)
       pair(u, w) = (float32(rho * x), float32(rho * y))   one float64 product each, rounded to float32 (nearest-even)
   CT[j] and ST[j] are the float64 values nearest cos(2 pi j / 1024) and sin(2 pi j / 1024), correctly rounded (exactly
   1, -1 and +0.0 at the multiples of pi/2); the sha256 of the 1024 little-endian float64 pairs (CT[0], ST[0], CT[1],
   ST[1], ...) is TABLE_SHA256 = c104095422a643a4e53ca561415e84a1645eed3cbcfd5bb575ca80f2f2c26e53. x and y are within
   3e-16 (absolute; 2.5 * 2**-53 at most over 2 million angles) of cos(theta) and sin(theta).

Reproducibility. Everything above is exact IEEE arithmetic except log, so two conforming implementations agree bit for
bit except where their float64 logs differ (glibc, CUDA and NumPy's SIMD logs are each within about one float64 ulp of
the true value; NumPy's AVX-512 log and glibc's differ on 0.35% of the a above). A one-ulp difference in log moves
rho * x by at most a few float64 ulps, which reaches the float32 value only when the product lies that close to a
float32 rounding boundary (about 1 chance in 10**8 for such a value), and then by exactly one float32 ulp. So
implementations agree within one float32 ulp everywhere and bit for bit almost everywhere (NumPy vs glibc: no
difference in 20 million values; tests/test_philox.py checks 1.3 million). The table and polynomials are part of the
generator; a port may not replace them by sin/cos. C/C++: compile without -ffast-math and with -ffp-contract=off
(philox.hpp also disables contraction for its own code on GCC and Clang); CUDA: write x, y and the polynomials with
__dmul_rn/__dadd_rn/__dsub_rn, or compile with -fmad=false.
"""

from __future__ import annotations

import hashlib
import math
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt

from ..config import check_seed

GENERATOR = "philox4x32-10-key(seed)-counter(block,row,0,0)-boxmuller-f64(log,table1024+poly)-to-f32"

M0 = 0xD2511F53
M1 = 0xCD9E8D57
W0 = 0x9E3779B9
W1 = 0xBB67AE85
ROUNDS = 10
MAX_BLOCKS = 2**32  # blocks per row: the block index is one 32-bit counter word

TWO_PI = float.fromhex("0x1.921fb54442d18p+2")  # the float64 nearest 2 pi (== 2 * math.pi)
K_ANGLE = TWO_PI * 2.0**-32  # exact: 0x1.921fb54442d18p-30
C2 = -0.5
C4 = float(Fraction(1, 24))  # the float64 nearest 1/24 (float(Fraction) rounds correctly)
S3 = float(Fraction(-1, 6))
S5 = float(Fraction(1, 120))


def _octant_table(bits: int = 200) -> tuple[list[float], list[float]]:
    """cos and sin of k * pi / 512 for k = 0 .. 128 (the first octant of the table), correctly rounded to float64.

    Fixed-point integer arithmetic with `bits` fractional bits (pi by Machin's formula, then Taylor series); each
    result's rounding is checked to be unambiguous (the value is nowhere near a float64 rounding boundary)."""
    one = 1 << bits
    guard = bits + 32

    def atan_inv(x: int) -> int:  # atan(1 / x) * 2**guard
        term = total = (1 << guard) // x
        k, sign = 1, -1
        while term:
            term //= x * x
            total += sign * (term // (2 * k + 1))
            k, sign = k + 1, -sign
        return total

    pi = (16 * atan_inv(5) - 4 * atan_inv(239)) >> 32

    def rounded(v: int) -> float:
        slack = 1 << 32  # far above the fixed-point error, far below a float64 ulp of the values (>= 6e-3)
        lo, hi = float(Fraction(v - slack, one)), float(Fraction(v + slack, one))
        if lo != hi:
            raise ArithmeticError("ambiguous rounding in the cos/sin table")  # does not happen for this table
        return lo

    cos_k, sin_k = [1.0], [0.0]
    for k in range(1, 129):
        angle = pi * k // 512
        s = c = 0
        term, n = one, 0  # term = angle**n / n!
        while term:
            if n % 2 == 0:
                c += term if n % 4 == 0 else -term
            else:
                s += term if n % 4 == 1 else -term
            n += 1
            term = term * angle // (one * n)
        cos_k.append(rounded(c))
        sin_k.append(rounded(s))
    return cos_k, sin_k


def _table() -> npt.NDArray[np.float64]:
    """(1024, 2) float64: [CT[j], ST[j]], from the first octant by the exact symmetries of cos and sin."""
    cos_k, sin_k = _octant_table()
    out = np.empty((1024, 2))
    for j in range(1024):
        o, k = j >> 7, j & 127
        if o % 2:  # odd octants are read backwards from their end: theta = (o + 1) pi / 4 - (128 - k) pi / 512
            k = 128 - k
        c, s = cos_k[k], sin_k[k]
        x, y = [(c, s), (s, c), (-s, c), (-c, s), (-c, -s), (-s, -c), (s, -c), (c, -s)][o]
        out[j] = (x + 0.0, y + 0.0)  # + 0.0 turns -0.0 into +0.0
    return out


TABLE = _table()
TABLE.setflags(write=False)
TABLE_SHA256 = hashlib.sha256(TABLE.astype("<f8").tobytes()).hexdigest()
_CT = np.ascontiguousarray(TABLE[:, 0])
_ST = np.ascontiguousarray(TABLE[:, 1])

_MASK32 = 0xFFFFFFFF
_ONE_PLUS_HALF = np.uint64(0x3FF0000000000000 | 1 << 19)  # float64 bits of 1 + 0.5 * 2**-32
_CHUNK = 65536  # most blocks per vectorised pass (~80 NumPy calls each): amortises the calls, stays in cache
_MULTS = np.array([[M1], [M0]], dtype=np.uint64)  # row 0 multiplies c2, row 1 multiplies c0 (see _rounds)

U32 = npt.NDArray[np.uint32]
U64 = npt.NDArray[np.uint64]
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


def _check_key(key: tuple[int, int]) -> tuple[int, int]:
    if len(key) != 2 or not all(_is_int(k) and 0 <= int(k) <= _MASK32 for k in key):
        raise ValueError(f"a Philox-4x32 key is two integers in [0, 2**32); got {key!r}")
    return int(key[0]), int(key[1])


def _is_int(x: object) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


def _round_keys(key: tuple[int, int]) -> list[U64]:
    """The key of each round as a (2, 1) column [[k0], [k1]]: round r (0-based) uses the key bumped r times."""
    k0, k1 = key
    return [np.array([[(k0 + r * W0) & _MASK32], [(k1 + r * W1) & _MASK32]], np.uint64) for r in range(ROUNDS)]


class _Work:
    """Preallocated (2, size) buffers for passes of up to `size` blocks; a pass of n blocks uses the first n columns.

    Philox state: c = [c0, c2] (values < 2**32); q = the last products [M1*c2, M0*c0], whose low words are [c1, c3] (the
    high words are stale and never read as such)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.c = np.zeros((2, size), np.uint64)
        self.qa = np.zeros((2, size), np.uint64)
        self.qb = np.zeros((2, size), np.uint64)
        self.u = [np.empty((2, size), np.uint64) for _ in range(2)]
        self.ct = np.empty((2, size), np.float64)  # CT[j] of each lane
        self.st = np.empty((2, size), np.float64)
        self.f = [np.empty((2, size), np.float64) for _ in range(6)]
        self.shared = np.empty((4, size), np.uint64)  # see _shared_rounds
        self.base = np.arange(size, dtype=np.uint64)


def _rounds(c: U64, qa: U64, qb: U64, keys: list[U64]) -> tuple[U64, U64]:
    """Philox rounds for (2, n) state c = [c0, c2] and qa (low words [c1, c3]), one per key; qb is scratch.

    Returns (c, q): the block is x0 = c[0], x1 = low word of q[0], x2 = c[1], x3 = low word of q[1]."""
    for key in keys:
        np.multiply(c[::-1], _MULTS, out=qb)  # [M1*c2, M0*c0] = [(hi1, lo1), (hi0, lo0)]; no overflow in 64 bits
        np.right_shift(qb, 32, out=c)  # [hi1, hi0]
        np.bitwise_xor(c, qa, out=c)  # ^ [c1, c3] (and the stale high words of qa ...)
        np.bitwise_and(c, _MASK32, out=c)  # (... dropped here)
        np.bitwise_xor(c, key, out=c)  # ^ [k0, k1]: the new [c0, c2]; the new [c1, c3] are the low words of qb
        qa, qb = qb, qa
    return c, qa


def _shared_rounds(w: _Work, n: int, start: int, keys: list[U64]) -> None:
    """The row-independent part of rounds 1..3 for blocks start .. start+n-1 of every row of a seed: into w.shared.

    With counter (i, r, 0, 0) and round keys (a0, a1), (b0, b1), (d0, d1), writing R = M0 * (r ^ a0):
      after round 1: (r ^ a0, 0, hi(M0 i) ^ a1, lo(M0 i));  P := M1 * (hi(M0 i) ^ a1), row-independent
      after round 2: (hi(P) ^ b0, lo(P), lo(M0 i) ^ hi(R) ^ b1, lo(R));  Q := M0 * (hi(P) ^ b0), row-independent
      after round 3: (hi(p) ^ lo(P) ^ d0, lo(p), hi(Q) ^ d1 ^ lo(R), lo(Q)) with p := M1 * (lo(M0 i) ^ hi(R) ^ b1)
    so each row needs only the scalars hi(R), lo(R) and the product p (_row_rounds), given the vectors
    D = lo(M0 i), E = lo(P) ^ d0, F = hi(Q) ^ d1 and G = Q (its low word lo(Q))."""
    (a0, a1), (b0, b1), (d0, d1) = ((int(k[0, 0]), int(k[1, 0])) for k in keys[:3])
    d, e, f, g = w.shared[:, :n]
    np.add(w.base[:n], start, out=g)
    np.multiply(g, M0, out=g)  # M0 * i
    np.bitwise_and(g, _MASK32, out=d)  # D
    np.right_shift(g, 32, out=f)
    np.bitwise_xor(f, a1, out=f)
    np.multiply(f, M1, out=e)  # P
    np.right_shift(e, 32, out=f)
    np.bitwise_xor(f, b0, out=f)
    np.multiply(f, M0, out=g)  # Q = G
    np.right_shift(g, 32, out=f)
    np.bitwise_xor(f, d1, out=f)  # F
    np.bitwise_and(e, _MASK32, out=e)
    np.bitwise_xor(e, d0, out=e)  # E


def _row_rounds(w: _Work, n: int, row: int, keys: list[U64]) -> tuple[U64, U64]:
    """All ten rounds of row `row` for the blocks of the last _shared_rounds call, as _rounds returns them."""
    a0, b1 = int(keys[0][0, 0]), int(keys[1][1, 0])
    r = M0 * (row ^ a0)
    c, qa, qb = w.c[:, :n], w.qa[:, :n], w.qb[:, :n]
    d, e, f, g = w.shared[:, :n]
    np.bitwise_xor(d, (r >> 32) ^ b1, out=c[1])  # c2 after round 2
    np.multiply(c[1], M1, out=qa[0])  # p: its low word is c1 after round 3
    np.right_shift(qa[0], 32, out=c[0])
    np.bitwise_xor(c[0], e, out=c[0])  # c0 after round 3
    np.bitwise_xor(f, r & _MASK32, out=c[1])  # c2 after round 3
    np.copyto(qa[1], g)  # its low word is c3 after round 3
    return _rounds(c, qa, qb, keys[3:])


def _box_muller(w: _Work, n: int, c: U64, q: U64, out_x: F32 | F64, out_y: F32 | F64) -> None:
    """pair(u, w) of the module docstring for the (2, n) words u = c and w = the low words of q: (2, n) results."""
    rho, t, z, cl, sl, tmp = (f[:, :n] for f in w.f)
    t0, t1 = w.u[0][:, :n], w.u[1][:, :n]
    # rho. a is exact, so building 1 + a from its bits and subtracting 1 gives the same float64 as (u + 0.5) * 2**-32.
    np.left_shift(c, 20, out=t0)
    np.bitwise_or(t0, _ONE_PLUS_HALF, out=t0)
    np.subtract(t0.view(np.float64), 1.0, out=rho)
    np.log(rho, out=rho)
    np.multiply(rho, -2.0, out=rho)
    np.sqrt(rho, out=rho)
    # The table entries at j = w >> 22 (q's high words are stale, hence the mask).
    np.right_shift(q, 22, out=t1)
    np.bitwise_and(t1, 0x3FF, out=t1)
    ct, st = w.ct[:, :n], w.st[:, :n]
    np.take(_CT, t1.view(np.int64), out=ct, mode="wrap")
    np.take(_ST, t1.view(np.int64), out=st, mode="wrap")
    # t, cl, sl
    np.bitwise_and(q, 0x3FFFFF, out=t0)
    np.add(t0.view(np.int64), 0.5, out=t)  # < 2**22: the int64 view converts exactly (and faster)
    np.multiply(t, K_ANGLE, out=t)
    np.multiply(t, t, out=z)
    np.multiply(z, C4, out=cl)
    np.add(cl, C2, out=cl)
    np.multiply(cl, z, out=cl)
    np.add(cl, 1.0, out=cl)
    np.multiply(z, S5, out=sl)
    np.add(sl, S3, out=sl)
    np.multiply(t, z, out=tmp)
    np.multiply(tmp, sl, out=sl)
    np.add(sl, t, out=sl)
    # x = ct * cl - st * sl -> tmp;  y = st * cl + ct * sl -> cl
    np.multiply(ct, cl, out=tmp)
    np.multiply(st, sl, out=z)
    np.subtract(tmp, z, out=tmp)
    np.multiply(st, cl, out=cl)
    np.multiply(ct, sl, out=sl)
    np.add(cl, sl, out=cl)
    np.multiply(rho, tmp, out=out_x)  # the float64 product, rounded to float32 by the store
    np.multiply(rho, cl, out=out_y)


def _pass_size(blocks: int) -> int:
    """Blocks per pass for a row of `blocks` blocks: equal passes of at most _CHUNK blocks."""
    passes = max(1, -(-blocks // _CHUNK))
    return max(1, -(-blocks // passes))


def _fill_rows(w: _Work, out: F32, seed: int, first_row: int) -> None:
    """Fill each row k of the (rows, n) float32 array out with the first n values of stream (seed, first_row + k)."""
    rows, n = out.shape
    blocks = -(-_check_count(n) // 4)
    keys = _round_keys((seed & _MASK32, seed >> 32))
    full = n // 4
    grid = out[:, : 4 * full].reshape(rows, full, 2, 2)  # [row, block, pair, x/y]
    for start in range(0, blocks, w.size):
        size = min(w.size, blocks - start)
        whole = min(size, full - start)
        _shared_rounds(w, size, start, keys)
        for k in range(rows):
            c, q = _row_rounds(w, size, first_row + k, keys)
            if whole > 0:  # whole blocks go straight into out
                dest = grid[k, start : start + whole].transpose(1, 0, 2)  # [pair, block, x/y]
                _box_muller(w, whole, c[:, :whole], q[:, :whole], dest[..., 0], dest[..., 1])
            if whole < size:  # the last block, partly used
                tail = np.empty((2, 2, 1), np.float32)  # [pair, x/y, 1]
                _box_muller(w, 1, c[:, size - 1 :], q[:, size - 1 :], tail[:, 0], tail[:, 1])
                out[k, 4 * full :] = tail.reshape(4)[: n - 4 * full]


def _check_count(n: int) -> int:
    if n > 4 * MAX_BLOCKS:
        raise ValueError(f"a row holds at most 4 * 2**32 values; got {n}")
    return n


def _check_row(row: int) -> int:
    if not _is_int(row) or not 0 <= int(row) <= _MASK32:
        raise ValueError(f"a noise row is an integer in [0, 2**32); got {row!r}")
    return int(row)


def _check_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    dims = tuple(shape)
    if not all(_is_int(d) and int(d) >= 0 for d in dims):
        raise ValueError(f"a shape is a tuple of non-negative integers; got {shape!r}")
    return tuple(int(d) for d in dims)


def philox4x32_10(counter: npt.ArrayLike, key: tuple[int, int]) -> U32:
    """Philox-4x32-10 of each row of an (N, 4) array of 32-bit counters under one key: the (N, 4) uint32 blocks."""
    ctr = np.asarray(counter)
    if ctr.ndim != 2 or ctr.shape[1] != 4:
        raise ValueError(f"counters are an (N, 4) array; got shape {ctr.shape}")
    if ctr.dtype != np.uint32:
        if ctr.dtype.kind not in "iu" or (ctr.size > 0 and (int(ctr.min()) < 0 or int(ctr.max()) > _MASK32)):
            raise ValueError("counters are integers in [0, 2**32)")
        ctr = ctr.astype(np.uint32)
    keys = _round_keys(_check_key(key))
    n = ctr.shape[0]
    out = np.empty((n, 4), np.uint32)
    step = max(1, min(n, _CHUNK))
    state = np.empty((3, 2, step), np.uint64)
    for start in range(0, n, step):
        size = min(step, n - start)
        part = ctr[start : start + size].T
        c, qa, qb = state[:, :, :size]
        c[...] = part[0::2]  # [c0, c2]
        qa[...] = part[1::2]  # [c1, c3]
        c, q = _rounds(c, qa, qb, keys)
        out[start : start + size, 0::2] = c.T
        out[start : start + size, 1::2] = (q & _MASK32).T
    return out


def normal_row(seed: int, row: int, shape: tuple[int, ...]) -> F32:
    """Stream (seed, row) as float32 standard normals of the given shape, in C order (see the module docstring)."""
    seed = check_seed(seed)
    row = _check_row(row)
    dims = _check_shape(shape)
    out = np.empty((1, _check_count(math.prod(dims))), np.float32)
    _fill_rows(_Work(_pass_size(-(-out.size // 4))), out, seed, row)
    return out.reshape(dims)


def normal_bank(seed: int, steps: int, height: int, width: int) -> F32:
    """(steps + 1, 3, H, W) float32 whose row r is normal_row(seed, r, (3, H, W)): the layout of runtime/noise.py."""
    seed = check_seed(seed)
    steps, height, width = _check_shape((steps, height, width))
    if steps > _MASK32:
        raise ValueError(f"a bank has at most 2**32 rows; got steps={steps}")
    _check_count(3 * height * width)
    bank = np.empty((steps + 1, 3, height, width), np.float32)
    flat = bank.reshape(steps + 1, -1)
    _fill_rows(_Work(_pass_size(-(-flat.shape[1] // 4))), flat, seed, 0)
    return bank


def test_vectors(seed: int, row: int, shape: tuple[int, ...]) -> dict[str, Any]:
    """Known-answer data for checking a port: the first 8 values of stream (seed, row) with the given shape (float32
    bits and decimal) and the sha256 of the whole row's little-endian float32 bytes."""
    values = normal_row(seed, row, shape)
    flat = values.reshape(-1)
    head = flat[:8]
    return {
        "generator": GENERATOR,
        "seed": int(seed),
        "row": int(row),
        "shape": list(values.shape),
        "first8_bits": [f"0x{int(b):08x}" for b in head.view(np.uint32)],
        "first8": [f"{float(v):.9g}" for v in head],
        "sha256": hashlib.sha256(flat.astype("<f4").tobytes()).hexdigest(),
    }

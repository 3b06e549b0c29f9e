"""``numpy.random.default_rng(seed).random(k)`` for many seeds at once, bit for bit.

Take-up draws seed one generator per (household, clone, variable): building each with
numpy costs about 35 us, most of a build's assembly time. Here numpy's ``SeedSequence``
(uint32 hash mixing, pool of 4) and ``PCG64`` (a 128-bit LCG with the XSL-RR output) are
replayed on arrays of seeds: the 128-bit state is a (high, low) pair of uint64 and the
64 x 64 -> 128-bit product is taken in 32-bit limbs. Only seeds below 2**64 are handled
(policyengine-us-data's are below 2**63). ``tests/test_builders_core.py`` checks it
against numpy itself.
"""

from __future__ import annotations

import numpy as np

_M32 = np.uint64(0xFFFFFFFF)
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_MULT_L, _MIX_MULT_R = np.uint32(0xCA01F9DD), np.uint32(0x4973F715)
_PCG_MULT_HIGH, _PCG_MULT_LOW = np.uint64(2549297995355413924), np.uint64(4865540595714422341)
_POOL = 4


def uniforms(seeds: np.ndarray, count: int) -> np.ndarray:
    """``(len(seeds), count)`` float64: row ``i`` is ``np.random.default_rng(seeds[i]).random(count)``."""
    seeds = np.asarray(seeds, np.uint64)
    pool = _seed_sequence_pool(seeds)
    words = _generate_state(pool, 8)  # four uint64 = eight uint32, little-endian pairs
    as64 = [words[2 * k].astype(np.uint64) | (words[2 * k + 1].astype(np.uint64) << np.uint64(32)) for k in range(4)]
    seed_high, seed_low, inc_high, inc_low = as64
    # pcg_setseq_128_srandom_r: inc = (initseq << 1) | 1; step; state += initstate; step
    inc_high = (inc_high << np.uint64(1)) | (inc_low >> np.uint64(63))
    inc_low = (inc_low << np.uint64(1)) | np.uint64(1)
    high, low = _step(np.zeros_like(seeds), np.zeros_like(seeds), inc_high, inc_low)
    high, low = _add128(high, low, seed_high, seed_low)
    high, low = _step(high, low, inc_high, inc_low)
    out = np.empty((seeds.size, count))
    for k in range(count):
        high, low = _step(high, low, inc_high, inc_low)
        out[:, k] = (_xsl_rr(high, low) >> np.uint64(11)) * (1.0 / 9007199254740992.0)
    return out


def _seed_sequence_pool(seeds: np.ndarray) -> list[np.ndarray]:
    """``SeedSequence(seed).pool`` per seed: the entropy words are the seed's low and high
    32 bits (a zero high word hashes as the absent word it replaces)."""
    entropy = [(seeds & _M32).astype(np.uint32), (seeds >> np.uint64(32)).astype(np.uint32)]
    hash_const = [_INIT_A]

    def hashmix(value: np.ndarray) -> np.ndarray:
        value = value ^ np.uint32(hash_const[0])
        hash_const[0] = (hash_const[0] * _MULT_A) & 0xFFFFFFFF
        value = value * np.uint32(hash_const[0])
        return value ^ (value >> np.uint32(16))

    def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        result = _MIX_MULT_L * x - _MIX_MULT_R * y
        return result ^ (result >> np.uint32(16))

    zero = np.zeros(seeds.size, np.uint32)
    mixer = [hashmix(entropy[i] if i < len(entropy) else zero) for i in range(_POOL)]
    for source in range(_POOL):
        for destination in range(_POOL):
            if source != destination:
                mixer[destination] = mix(mixer[destination], hashmix(mixer[source]))
    return mixer


def _generate_state(pool: list[np.ndarray], n_words: int) -> list[np.ndarray]:
    hash_const = _INIT_B
    state = []
    for i in range(n_words):
        value = pool[i % _POOL] ^ np.uint32(hash_const)
        hash_const = (hash_const * _MULT_B) & 0xFFFFFFFF
        value = value * np.uint32(hash_const)
        state.append(value ^ (value >> np.uint32(16)))
    return state


def _step(high, low, inc_high, inc_low):
    """state * PCG_MULT + inc, modulo 2**128."""
    product_high, product_low = _multiply64(low, _PCG_MULT_LOW)
    product_high = product_high + high * _PCG_MULT_LOW + low * _PCG_MULT_HIGH
    return _add128(product_high, product_low, inc_high, inc_low)


def _multiply64(a: np.ndarray, b: np.uint64) -> tuple[np.ndarray, np.ndarray]:
    """The full 128-bit product of uint64 ``a`` and ``b`` as (high, low)."""
    a0, a1 = a & _M32, a >> np.uint64(32)
    b0, b1 = b & _M32, b >> np.uint64(32)
    p00, p01, p10, p11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1
    middle = (p00 >> np.uint64(32)) + (p01 & _M32) + (p10 & _M32)
    low = (p00 & _M32) | (middle << np.uint64(32))
    high = p11 + (p01 >> np.uint64(32)) + (p10 >> np.uint64(32)) + (middle >> np.uint64(32))
    return high, low


def _add128(high, low, add_high, add_low):
    total_low = low + add_low
    return high + add_high + (total_low < low).astype(np.uint64), total_low


def _xsl_rr(high: np.ndarray, low: np.ndarray) -> np.ndarray:
    rotation = high >> np.uint64(58)
    value = high ^ low
    return (value >> rotation) | (value << ((np.uint64(64) - rotation) & np.uint64(63)))

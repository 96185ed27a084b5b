"""Named, validated parameter presets: CKKS (approximate) and ``packed`` BFV (exact integers).

Security levels follow the Homomorphic Encryption Standard (homomorphicencryption.org,
Table 1, classical attacks, ternary secret): for a ring degree ``N`` the total coefficient
modulus ``log2(q)`` (all primes, the special prime included) must not exceed the bound below.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from cifer_flwr.exceptions import ConfigError, UnknownPresetError

__all__ = [
    "PRESETS",
    "SCHEME_BFV",
    "SCHEME_CKKS",
    "CkksParams",
    "for_depth",
    "get_preset",
    "security_level",
]

#: Scheme names stored in key files and ciphertext headers.
SCHEME_CKKS = "ckks"
SCHEME_BFV = "bfv"

#: Max total ``log2(q)`` per ring degree for 128/192/256-bit classical security (HE Standard).
_HE_STANDARD_MAX_LOGQ: dict[int, dict[int, int]] = {
    1024: {128: 27, 192: 19, 256: 14},
    2048: {128: 54, 192: 37, 256: 29},
    4096: {128: 109, 192: 75, 256: 58},
    8192: {128: 218, 192: 152, 256: 118},
    16384: {128: 438, 192: 305, 256: 237},
    32768: {128: 881, 192: 611, 256: 476},
}


def security_level(poly_modulus_degree: int, coeff_mod_bit_sizes: tuple[int, ...]) -> int:
    """Return the classical security level in bits (256, 192 or 128) of a parameter set.

    Parameters
    ----------
    poly_modulus_degree : int
        Ring degree ``N``.
    coeff_mod_bit_sizes : tuple of int
        Bit sizes of the coefficient modulus primes.

    Returns
    -------
    int
        The highest level of 256, 192, 128 the set reaches; 0 when it is below 128 bits.

    """
    bounds = _HE_STANDARD_MAX_LOGQ.get(poly_modulus_degree)
    if bounds is None:
        return 0
    total = sum(coeff_mod_bit_sizes)
    for level in (256, 192, 128):
        if total <= bounds[level]:
            return level
    return 0


@dataclass(frozen=True)
class CkksParams:
    """A validated CKKS parameter set.

    Parameters
    ----------
    name : str
        Preset name, stored in key files and ciphertext headers.
    poly_modulus_degree : int
        Ring degree ``N`` (a power of two); one ciphertext holds ``N / 2`` values.
    coeff_mod_bit_sizes : tuple of int
        Primes of the coefficient modulus; the first is the data prime that bounds the
        value range, the last is the special prime used for key switching.
    scale_bits : int
        ``log2`` of the CKKS scale; the fixed-point precision of every value.
    description : str
        What the preset is for.
    scheme : str
        ``"ckks"`` (approximate real arithmetic) or ``"bfv"`` (exact integers modulo
        ``plain_modulus``, batched: ``N`` values per ciphertext). For BFV, values are
        fixed-point with step ``2**-scale_bits`` (docs/design.md §4.7).
    plain_modulus : int
        BFV only (0 for CKKS): the batching prime ``t`` (``t = 1 mod 2N``); sums live in
        ``(-t/2, t/2)``.
    max_summands : int
        BFV only: the largest cohort whose sum never wraps when each summand uses its
        ``1 / max_summands`` share of the range (docs/design.md §4.7).

    """

    name: str
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int
    description: str = ""
    scheme: str = SCHEME_CKKS
    plain_modulus: int = 0
    max_summands: int = 1000

    def __post_init__(self) -> None:
        n = self.poly_modulus_degree
        if n < 1024 or n & (n - 1):
            raise ConfigError(f"poly_modulus_degree must be a power of two >= 1024, got {n}.")
        if len(self.coeff_mod_bit_sizes) < 2:
            raise ConfigError(
                "coeff_mod_bit_sizes needs a data prime and a special prime, "
                f"got {list(self.coeff_mod_bit_sizes)}."
            )
        if any(not 20 <= b <= 60 for b in self.coeff_mod_bit_sizes):
            raise ConfigError(
                f"every prime must have 20..60 bits, got {list(self.coeff_mod_bit_sizes)}."
            )
        if self.security_bits < 128:
            raise ConfigError(
                f"preset {self.name!r}: N={n} with a {sum(self.coeff_mod_bit_sizes)}-bit "
                f"modulus is below 128-bit security (HE Standard allows at most "
                f"{_HE_STANDARD_MAX_LOGQ.get(n, {}).get(128, 0)} bits); raise N or use fewer bits."
            )
        if self.scheme == SCHEME_BFV:
            self._check_bfv()
        elif self.scheme != SCHEME_CKKS or self.plain_modulus != 0:
            raise ConfigError(
                f"scheme must be {SCHEME_CKKS!r} (with plain_modulus 0) or {SCHEME_BFV!r}, "
                f"got {self.scheme!r:.40} with plain_modulus {self.plain_modulus}."
            )
        if not 20 <= self.scale_bits < self.coeff_mod_bit_sizes[0] - 1:
            raise ConfigError(
                f"scale_bits must be at least 20 and below the data prime "
                f"({self.coeff_mod_bit_sizes[0]} bits) minus one, got {self.scale_bits}."
            )

    def _check_bfv(self) -> None:
        t, n = self.plain_modulus, self.poly_modulus_degree
        if isinstance(t, bool) or not isinstance(t, int) or not 2**20 < t < 2**60:
            raise ConfigError(
                f"BFV plain_modulus must be an integer of 21..60 bits, got {t!r:.40}."
            )
        if t % (2 * n) != 1 or not _is_prime(t):
            raise ConfigError(
                f"BFV plain_modulus {t} is not a batching prime for N={n} "
                f"(a prime = 1 mod {2 * n}); use sealapi.PlainModulus.Batching."
            )
        if t.bit_length() + 20 > self.coeff_mod_bit_sizes[0]:
            raise ConfigError(
                f"BFV plain_modulus of {t.bit_length()} bits leaves less than 20 bits of noise "
                f"budget under a {self.coeff_mod_bit_sizes[0]}-bit data prime."
            )
        if not 1 <= self.max_summands <= 2**20 or (t // 2) // self.max_summands < 2**10:
            raise ConfigError(
                f"max_summands must be 1..2**20 and leave each summand at least 2**10 "
                f"quantization steps, got {self.max_summands} for a {t.bit_length()}-bit t."
            )

    @property
    def is_bfv(self) -> bool:
        """Whether this is the exact integer scheme (``packed`` preset)."""
        return self.scheme == SCHEME_BFV

    @property
    def quantized(self) -> bool:
        """Whether values are quantized to exact integers (BFV; Paillier's params say so too)."""
        return self.is_bfv

    @property
    def slots(self) -> int:
        """Number of values one ciphertext holds (``N / 2`` for CKKS, ``N`` for BFV)."""
        if self.is_bfv:
            return self.poly_modulus_degree
        return self.poly_modulus_degree // 2

    def summand_bound(self, summands: int) -> int:
        """BFV: largest integer one of ``summands`` quantized values may take (no wrap).

        ``floor(((t - 1) / 2) / summands)``: the sum of ``summands`` values within it stays
        in the signed range of ``t`` (docs/design.md §4.7).
        """
        return ((self.plain_modulus - 1) // 2) // max(1, summands)

    @property
    def security_bits(self) -> int:
        """Classical security level per the HE Standard (128, 192 or 256)."""
        return security_level(self.poly_modulus_degree, self.coeff_mod_bit_sizes)

    @property
    def depth(self) -> int:
        """Number of rescalings (plaintext or ciphertext multiplications) available."""
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def max_abs(self) -> float:
        """Largest magnitude a value (or a sum of values) may take without wrapping around.

        The data prime ``q0`` holds values up to ``q0 / 2 / scale``; one bit of headroom
        is kept for noise and rounding. BFV: ``((t - 1) / 2) * 2**-scale_bits`` (exact).
        """
        if self.is_bfv:
            return self.summand_bound(1) * self.precision
        return float(2 ** (self.coeff_mod_bit_sizes[0] - 2 - self.scale_bits))

    @property
    def precision(self) -> float:
        """Nominal fixed-point step ``2**-scale_bits``."""
        return math.ldexp(1.0, -self.scale_bits)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (the inverse of :meth:`from_dict`).

        CKKS sets omit the BFV fields, so their key files and headers are unchanged.
        """
        data = asdict(self)
        data["coeff_mod_bit_sizes"] = list(self.coeff_mod_bit_sizes)
        if not self.is_bfv:
            for name in ("scheme", "plain_modulus", "max_summands"):
                data.pop(name)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CkksParams:
        """Build parameters from :meth:`to_dict` output, validating them."""
        try:
            bits = data["coeff_mod_bit_sizes"]
            if not isinstance(bits, (list, tuple)) or len(bits) > 64:
                raise TypeError("coeff_mod_bit_sizes must be a list of at most 64 integers")
            for name in ("name", "description"):
                if not isinstance(data.get(name, ""), str) or len(data.get(name, "")) > 1024:
                    raise TypeError(f"{name} must be a string of at most 1024 characters")
            return cls(
                name=data["name"],
                poly_modulus_degree=_strict_int(data["poly_modulus_degree"]),
                coeff_mod_bit_sizes=tuple(_strict_int(b) for b in bits),
                scale_bits=_strict_int(data["scale_bits"]),
                description=data.get("description", ""),
                scheme=_strict_str(data.get("scheme", SCHEME_CKKS)),
                plain_modulus=_strict_int(data.get("plain_modulus", 0)),
                max_summands=_strict_int(data.get("max_summands", 1000)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"malformed CKKS parameters {data!r:.200}: {exc}") from exc


def _strict_str(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 16:
        raise TypeError(f"expected a short string, got {value!r:.40}")
    return value


def _is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin for n < 3.3e24 (more than the 60 bits allowed)."""
    if n < 2:
        return False
    bases = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
    for p in bases:
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in bases:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _strict_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r:.40}")
    return value


PRESETS: dict[str, CkksParams] = {
    p.name: p
    for p in (
        CkksParams(
            "default",
            4096,
            (50, 59),
            38,
            "Relative error of a 1000-client sum about 8e-8 (a 13x margin on 1e-6) and values "
            "up to +-1024, so a poor first guess of the example counts cannot overflow; "
            "about 3.6x fp32 upload (seeded), 7.2x download. Additions only. 128-bit security.",
        ),
        CkksParams(
            "compact",
            4096,
            (45, 60),
            36,
            "Smallest set that keeps the relative error of a 1000-client sum <= 1e-6 "
            "(about 3e-7, benchmarks/presets.py); values up to +-128; about 3.4x fp32 "
            "upload, 6.75x download. Additions only. 128-bit security.",
        ),
        CkksParams(
            "precise",
            4096,
            (60, 49),
            40,
            "About 1e-9 relative error, values up to 2**18; about 4x fp32 upload, 8x download. "
            "Additions only. 128-bit security.",
        ),
        CkksParams(
            "packed",
            4096,
            (54, 55),
            21,
            "BFV with batching (4096 values per ciphertext): exact integer sums of weighted "
            "updates quantized with unbiased stochastic rounding to steps of 2**-21; each of "
            "K <= 1000 summands gets 1/K of the +-256 range, so sums never wrap; values "
            "beyond a summand's share are clipped and counted. About 1.9x fp32 upload "
            "(seeded), 3.8x download. Additions only. 128-bit security.",
            scheme=SCHEME_BFV,
            plain_modulus=1073692673,
        ),
        CkksParams(
            "nvflare",
            8192,
            (60, 40, 40),
            40,
            "NVIDIA FLARE's default TenSEAL parameters, kept as the comparison baseline; "
            "one plaintext multiplication. 128-bit security.",
        ),
    )
}


def get_preset(name: str) -> CkksParams:
    """Return the preset called ``name``.

    Raises
    ------
    UnknownPresetError
        When no preset has that name; the message lists the valid names.

    """
    try:
        return PRESETS[name]
    except KeyError:
        raise UnknownPresetError(
            f"unknown CKKS preset {name!r}; choose one of {sorted(PRESETS)}."
        ) from None


def for_depth(depth: int, *, scale_bits: int = 40, name: str | None = None) -> CkksParams:
    """Return the smallest 128-bit-secure parameter set with ``depth`` multiplications.

    The modulus is ``[scale_bits + 20] + [scale_bits] * depth + [scale_bits + 20]``
    (capped at 60 bits per prime), and ``N`` is the smallest degree that keeps it secure.

    Raises
    ------
    UnsupportedOperationError
        When no ring degree up to 32768 supports that depth at 128-bit security.

    """
    from cifer_flwr.exceptions import UnsupportedOperationError

    if depth < 0:
        raise ConfigError(f"depth must be >= 0, got {depth}.")
    outer = min(scale_bits + 20, 60)
    coeffs = (outer, *([scale_bits] * depth), outer)
    for n in sorted(_HE_STANDARD_MAX_LOGQ):
        if n >= 4096 and sum(coeffs) <= _HE_STANDARD_MAX_LOGQ[n][128]:
            return CkksParams(
                name or f"depth{depth}",
                n,
                coeffs,
                scale_bits,
                f"{depth} multiplicative levels at 2**{scale_bits} scale.",
            )
    max_depth = (_HE_STANDARD_MAX_LOGQ[32768][128] - 2 * outer) // scale_bits
    raise UnsupportedOperationError(
        f"{depth} multiplicative levels need a {sum(coeffs)}-bit modulus, above the "
        f"128-bit-secure limit of ring degree 32768; at most {max_depth} levels fit at "
        f"scale 2**{scale_bits}. Ask for fewer iterations or lower the scale."
    )

"""Named, validated CKKS parameter presets.

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
    "CkksParams",
    "for_depth",
    "get_preset",
    "security_level",
]

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

    """

    name: str
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int
    description: str = ""

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
        if not 20 <= self.scale_bits < self.coeff_mod_bit_sizes[0] - 1:
            raise ConfigError(
                f"scale_bits must be at least 20 and below the data prime "
                f"({self.coeff_mod_bit_sizes[0]} bits) minus one, got {self.scale_bits}."
            )

    @property
    def slots(self) -> int:
        """Number of real values one ciphertext holds (``N / 2``)."""
        return self.poly_modulus_degree // 2

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
        is kept for noise and rounding.
        """
        return float(2 ** (self.coeff_mod_bit_sizes[0] - 2 - self.scale_bits))

    @property
    def precision(self) -> float:
        """Nominal fixed-point step ``2**-scale_bits``."""
        return math.ldexp(1.0, -self.scale_bits)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (the inverse of :meth:`from_dict`)."""
        data = asdict(self)
        data["coeff_mod_bit_sizes"] = list(self.coeff_mod_bit_sizes)
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
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"malformed CKKS parameters {data!r:.200}: {exc}") from exc


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
            "about 7.2x fp32. Additions only. 128-bit security.",
        ),
        CkksParams(
            "compact",
            4096,
            (45, 60),
            36,
            "Smallest set that keeps the relative error of a 1000-client sum <= 1e-6 "
            "(about 3e-7, benchmarks/presets.py); values up to +-128; about 6.75x fp32. "
            "Additions only. 128-bit security.",
        ),
        CkksParams(
            "precise",
            4096,
            (60, 49),
            40,
            "About 1e-9 relative error, values up to 2**18; about 8x fp32. "
            "Additions only. 128-bit security.",
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

import pytest

from cifer_flwr.crypto import PRESETS, CkksParams, for_depth, get_preset
from cifer_flwr.crypto.params import security_level
from cifer_flwr.exceptions import ConfigError, UnknownPresetError, UnsupportedOperationError


def test_every_preset_is_128_bit_secure_and_round_trips():
    assert {"default", "nvflare"} <= set(PRESETS)
    for p in PRESETS.values():
        assert p.security_bits >= 128
        assert CkksParams.from_dict(p.to_dict()) == p


def test_nvflare_preset_is_flares_default():
    p = get_preset("nvflare")
    assert (p.poly_modulus_degree, p.coeff_mod_bit_sizes, p.scale_bits) == (8192, (60, 40, 40), 40)
    assert p.depth == 1


def test_unknown_preset_lists_choices():
    with pytest.raises(UnknownPresetError, match="default"):
        get_preset("fast")


@pytest.mark.parametrize(
    ("n", "coeffs", "scale"),
    [(3000, (40, 60), 30), (4096, (60, 60), 40), (4096, (40,), 30), (4096, (40, 60), 45)],
)
def test_invalid_parameters_are_refused(n, coeffs, scale):
    with pytest.raises(ConfigError):
        CkksParams("bad", n, coeffs, scale)


def test_security_table_matches_he_standard():
    assert security_level(4096, (60, 49)) == 128
    assert security_level(4096, (60, 50)) == 0
    assert security_level(8192, (60, 40, 40, 60)) == 128
    assert security_level(8192, (50, 50)) == 256


def test_for_depth_picks_smallest_secure_ring():
    assert for_depth(1).poly_modulus_degree == 8192
    assert for_depth(7).poly_modulus_degree == 16384
    assert for_depth(8).poly_modulus_degree == 32768
    assert for_depth(8).depth == 8
    with pytest.raises(UnsupportedOperationError, match="at most"):
        for_depth(40)

"""Official architecture names map to configurations; bad names are refused with a hint."""

import pytest

from cka_lab.errors import CkaLabError
from cka_lab.models import config_from_name, create_edt, parse_name


@pytest.mark.parametrize(
    "name,expected",
    [
        ("SRx2x3x4_EDTT", ((2, 3, 4), (), (), "T", False)),
        ("SRx2_EDTL", ((2,), (), (), "L", False)),
        ("DNg15_EDTBSF", ((), (15,), (), "B", True)),
        ("SRx2x3DNg15_EDTB", ((2, 3), (15,), (), "B", False)),
        ("DRlshs_EDTB", ((), (), ("L", "H"), "B", False)),
        ("SRx2_EDTB_Div2kFlickr2K__SRx2_ImageNet200K", ((2,), (), (), "B", False)),
        ("DNg50_EDTB_D4__DNg15g25g50_ImageNet200K", ((), (50,), (), "B", False)),
    ],
)
def test_official_names_parse_into_tasks_size_and_variant(name, expected):
    assert parse_name(name) == expected


def test_the_canonical_name_drops_dataset_suffixes():
    assert config_from_name("SRx2_EDTT_Div2kFlickr2K__SRx2x3x4_ImageNet200K").name == "SRx2_EDTT"
    assert config_from_name("DNg25_EDTBSF_D4").name == "DNg25_EDTBSF"


def test_upsampler_and_patch_size_follow_the_official_configs():
    assert config_from_name("SRx2_EDTT").upsampler == "pixelshuffledirect"
    assert config_from_name("SRx2x3x4_EDTT").upsampler == "pixelshuffle"
    assert config_from_name("SRx2_EDTB").upsampler == "pixelshuffle"
    assert config_from_name("DNg15_EDTBSF").image_size == 144
    assert config_from_name("DNg15_EDTB").image_size == 48


def test_tasks_and_padding_multiples():
    cfg = config_from_name("SRx2x3DNg15_EDTB")
    assert cfg.tasks == ("x2", "x3", "g15")
    assert [cfg.pad_multiple(t) for t in cfg.tasks] == [24, 24, 96]


@pytest.mark.parametrize("bad", ["EDT", "SRx5_EDTT", "SRx2_EDTX", "XYx2_EDTT", "SRx2x2_EDTT", "srx2_edtt", ""])
def test_unknown_architecture_names_are_refused_in_one_line(bad):
    with pytest.raises(CkaLabError) as err:
        create_edt(bad)
    assert "\n" not in str(err.value)


def test_a_near_miss_name_gets_a_suggestion():
    with pytest.raises(CkaLabError, match="did you mean SRx2_EDTT"):
        parse_name("SRx2_EDTTT")


def test_sf_models_have_no_sr_heads():
    with pytest.raises(CkaLabError, match="no SR heads"):
        config_from_name("SRx2_EDTBSF")

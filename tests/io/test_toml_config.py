"""One TOML reader for training configs and study files: the same ${VAR} rule, checks and one-line errors."""

from __future__ import annotations

import pytest

from cka_lab.errors import CkaLabError
from cka_lab.io.toml_config import check_scalar, close_match, expand_env, read_toml
from cka_lab.study.spec import parse_study
from cka_lab.train.config import parse_config


def test_set_but_empty_counts_as_unset_like_a_shell(monkeypatch):
    monkeypatch.setenv("CKA_LAB_T_EMPTY", "")
    monkeypatch.setenv("CKA_LAB_T_SET", "x")
    monkeypatch.delenv("CKA_LAB_T_UNSET", raising=False)
    assert expand_env("${CKA_LAB_T_EMPTY:-d}/${CKA_LAB_T_SET:-d}/${CKA_LAB_T_UNSET:-d}", "f") == "d/x/d"
    for name in ("CKA_LAB_T_EMPTY", "CKA_LAB_T_UNSET"):
        with pytest.raises(CkaLabError, match=r"f: environment variable \$\{" + name + r"\} is not set"):
            expand_env("${" + name + "}", "f")


@pytest.mark.parametrize("value, tp, message", [
    ("1", int, "must be an integer"), (True, int, "must be an integer"), (float("nan"), float, "must be a finite number"),
    ("x", float, "must be a number"), (1, bool, "must be true or false"), (1, str, "must be a string"),
])
def test_scalar_checks_are_one_line(value, tp, message):
    with pytest.raises(CkaLabError, match=f"^k {message}, got") as err:
        check_scalar(value, tp, "k")
    assert "\n" not in str(err.value)


def test_helpers():
    assert check_scalar(3, float, "k") == 3.0 and isinstance(check_scalar(3, float, "k"), float)
    assert close_match("sede", ["seed", "size"]) == " (did you mean 'seed'?)" and close_match("zzz", ["seed"]) == ""
    with pytest.raises(CkaLabError, match="^f.toml is not valid TOML: ") as err:
        read_toml("[a\n", "f.toml")
    assert "\n" not in str(err.value)


def test_train_and_study_share_the_reader():
    for parse in (parse_config, parse_study):
        with pytest.raises(CkaLabError, match="is not valid TOML"):
            parse("[broken\n")

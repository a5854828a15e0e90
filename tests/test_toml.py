import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trainlab import _toml

scalars = st.one_of(st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False), st.text())
tables = st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True),
                         st.one_of(scalars, st.lists(st.integers(-100, 100), max_size=4)), max_size=5)


@given(st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), st.one_of(scalars, tables), max_size=5))
def test_dumps_is_read_back_by_tomllib(config):
    assert _toml.loads(_toml.dumps(config)) == config


def test_nan_is_written_as_toml_nan():
    assert math.isnan(_toml.loads(_toml.dumps({"x": math.nan}))["x"])


@given(st.dictionaries(st.text(min_size=1, max_size=8), st.one_of(scalars, st.dictionaries(st.text(max_size=8), scalars,
                                                                                         max_size=3)), max_size=4))
def test_any_key_is_written_so_that_it_reads_back(config):
    assert _toml.loads(_toml.dumps(config)) == config


@pytest.mark.parametrize("value", ["\udcff", "a\ud800b"])
def test_a_string_that_is_not_utf8_is_refused_not_written_broken(value):
    with pytest.raises(ValueError, match="not UTF-8 text"):
        _toml.dumps({"name": value})

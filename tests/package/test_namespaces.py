"""Public modules hold public names only: an internal helper is private (leading underscore) or in a private module."""

import types

import pytest

import mha


@pytest.mark.parametrize("module", ["functional", "masks"])
def test_public_modules_expose_no_internal_helpers(module):
    # Internal functions skip argument checks; reachable by a public name, a caller would get
    # silent wrong answers (band(2, 2, -1, None) was all False) or a math domain error (slopes(0, None)).
    namespace = vars(getattr(mha, module))
    functions = {
        name
        for name, value in namespace.items()
        if isinstance(value, types.FunctionType) and not name.startswith("_") and value.__module__.startswith("mha")
    }
    assert functions == set(namespace["__all__"]) & functions
    for internal in ("attend_unchecked", "prepare_mask", "prepared_weights", "zero_blocked", "Pattern"):
        assert internal not in namespace
    for internal in ("causal", "band", "slopes", "runs", "check_document_ids", "document_positions"):
        assert internal not in namespace

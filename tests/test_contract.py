"""The conformance contract covers every format lowbit defines."""

import pathlib

from lowbit.testing.contract import missing_conformance


def test_every_registered_format_has_a_conformance_suite():
    missing = missing_conformance(pathlib.Path(__file__).parent)
    assert not missing, f"formats without a FormatConformance test class (tensor_cls = ...): {missing}"

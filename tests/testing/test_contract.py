"""The conformance contract covers every format lowbit defines."""

import pathlib

from lowbit.testing.contract import missing_conformance


def test_every_registered_format_has_a_conformance_suite():
    tests_dir = next(p for p in pathlib.Path(__file__).resolve().parents if p.name == "tests")
    missing = missing_conformance(tests_dir)
    assert not missing, f"formats without a FormatConformance test class (tensor_cls = ...): {missing}"

import lowbit
from lowbit.ops import _ext


def test_env_report_text_and_dict():
    text = lowbit.env_report()
    assert "DA8W4 kernel:" in text and "CPU flags:" in text and "CPU class:" in text
    info = lowbit.env_report(as_dict=True)
    assert info["cpu_extension"]["attempted"] is True
    assert set(info["cpu_flags"]) >= {"avx2", "avx512_vnni", "amx_tile"}
    st = _ext.cpu_extension_status()
    if st.loaded:
        assert info["da8w4_kernel"] in ("scalar C++", "AVX2 (vpmaddubsw/vpmaddwd)", "AVX512-VNNI (vpdpbusd)")
        if info["cpu_flags"]["avx2"] and not info["cpu_flags"]["avx512_vnni"]:
            assert info["da8w4_kernel"].startswith("AVX2")
    else:
        assert st.reason and st.reason in info["da8w4_kernel"]


def test_env_report_without_build_does_not_raise():
    assert isinstance(lowbit.env_report(build=False), str)


def test_extension_builds_where_a_toolchain_exists():
    # CI has g++ and ninja: a broken build must fail here, not just skip the kernel tests.
    import os
    import platform
    import shutil

    import pytest

    if os.environ.get("LOWBIT_DISABLE_EXT", "") not in ("", "0"):
        pytest.skip("LOWBIT_DISABLE_EXT is set")
    if platform.machine().lower() not in ("x86_64", "amd64") or not shutil.which("c++") or not shutil.which("ninja"):
        pytest.skip("no x86-64 C++ toolchain (c++ and ninja) on this machine")
    assert _ext.load_cpu_extension(), _ext.cpu_extension_status().build_log

"""The int8 instruction set recorded beside every fused int8 score, and the reduce_range rule it drives."""

from __future__ import annotations

import pytest

from edgetl.portable.isa import cpu_int8_isa, describe_isa


@pytest.mark.parametrize("arch, flags, isa, saturates", [
    ("x86_64", {"sse4_2", "avx2", "fma"}, "x86 AVX2, no VNNI", True),  # vpmaddubsw's int16 pairs saturate
    ("x86_64", {"avx2", "avx512f", "avx512_vnni"}, "x86 AVX-512 with VNNI (avx512_vnni)", False),
    ("x86_64", {"avx2", "avx_vnni"}, "x86 AVX2 with VNNI (avx_vnni)", False),
    ("aarch64", {"asimd", "asimddp", "i8mm"}, "ARM64 with dot product (asimddp, i8mm)", False),
    ("aarch64", {"asimd"}, "ARM64, no dot product", False),
])
def test_isa_names_and_saturation(arch, flags, isa, saturates):
    got = describe_isa(arch, flags)
    assert got["isa"] == isa and got["int8_saturates"] is saturates and got["arch"] == arch


def test_this_machine_has_a_named_isa():
    assert cpu_int8_isa()["isa"] and isinstance(cpu_int8_isa()["int8_saturates"], bool)

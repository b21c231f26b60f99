from engine import cpu_features


def test_native_bf16_reads_the_cpu_flags(monkeypatch):
    for flags, expected in [({"avx2", "avx512f"}, False), ({"avx512f", "avx512_bf16"}, True),
                            ({"amx_bf16", "amx_tile"}, True), (None, None)]:
        monkeypatch.setattr(cpu_features, "cpu_flags",
                            lambda f=flags: None if f is None else frozenset(f))
        assert cpu_features.native_bf16() is expected


def test_this_machine_has_flags():
    flags = cpu_features.cpu_flags()
    assert flags is None or "fpu" in flags  # on Linux x86 every CPU lists fpu

"""The machine line names the vector extensions, so results from two CPUs with one model name stay apart."""

from remoe.machine import machine_description, vector_extensions


def test_vector_extensions_name_the_aten_level_and_the_kernel_flags_present() -> None:
    flags = {"sse2", "avx2", "avx512f", "avx512_bf16", "avx512_vnni"}
    assert vector_extensions(flags, "AVX512") == "ATen AVX512; AVX512-BF16, AVX512-VNNI"
    assert vector_extensions({"sse2", "avx2"}, "AVX2") == "ATen AVX2; none"


def test_machine_description_says_what_aten_dispatches_to() -> None:
    import torch

    assert f"ATen {torch.backends.cpu.get_cpu_capability()};" in machine_description()

"""The operator's C-heap helpers: effective on glibc, harmless no-ops elsewhere."""

import platform

import pytest

from neuronplace.operator import heap

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt/malloc_trim are glibc's")


@glibc
def test_glibc_takes_the_arena_limit():
    assert heap.limit_arenas() is True


@glibc
def test_free_pages_go_back_after_a_large_free():
    # 64 MB in 64 KB blocks (below glibc's mmap threshold, so they live in the heap); every other
    # one is freed, so the free pages sit between live blocks where glibc never trims on its own.
    blocks = [bytearray(64 * 1024) for _ in range(1024)]
    kept = blocks[::2]
    del blocks
    assert heap.return_free_memory() is True
    del kept


def test_without_a_c_library_both_do_nothing(monkeypatch):
    monkeypatch.setattr(heap, "_LIBC", None)
    assert heap.limit_arenas() is False
    assert heap.return_free_memory() is False

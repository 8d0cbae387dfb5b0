"""The TensorRT output allocator's memory logic (runtimes/tensorrt.py: OutputBuffer), driven the
way TensorRT drives an IOutputAllocator: byte sizes that may be 0 or not a multiple of the
element size, then the real shape; one buffer grows and is reused across steps."""

from __future__ import annotations

import pytest
import torch

from ftp_export.errors import FTPError
from ftp_export.runtimes.tensorrt import OutputBuffer


def test_empty_output_with_a_positive_byte_size():
    """A decode step where a routed block keeps no token: N = 0 rows, TensorRT still asks for bytes."""
    buf = OutputBuffer(torch.int64, "cpu")
    assert buf.reserve(8) == buf.buffer.data_ptr()
    buf.set_shape((0,))
    assert buf.result().shape == (0,)
    buf.reserve(0)  # a zero-byte request still gets an address
    assert buf.buffer.numel() >= 1 and buf.result().numel() == 0


@pytest.mark.parametrize("dtype,size,elements", [(torch.int64, 12, 2), (torch.float16, 7, 4), (torch.float32, 4097, 1025)])
def test_sizes_not_a_multiple_of_the_element_size_round_up(dtype, size, elements):
    buf = OutputBuffer(dtype, "cpu")
    buf.reserve(size)
    assert buf.buffer.numel() == elements
    buf.set_shape((elements,))
    assert buf.result().dtype == dtype and buf.result().numel() == elements


def test_buffer_grows_then_is_reused_and_results_are_views_of_the_shape():
    buf = OutputBuffer(torch.float32, "cpu")
    small = buf.reserve(4 * 6)
    big = buf.reserve(4 * 100)  # grows
    assert buf.buffer.numel() == 100 and small != 0
    again = buf.reserve(4 * 30)  # smaller request: same buffer
    assert again == big and buf.buffer.numel() == 100
    buf.buffer.copy_(torch.arange(100, dtype=torch.float32))
    buf.set_shape((3, 2, 5))
    out = buf.result()
    assert out.shape == (3, 2, 5) and out.data_ptr() == big and float(out[2, 1, 4]) == 29.0


def test_a_shape_larger_than_the_allocation_is_an_error_not_garbage():
    buf = OutputBuffer(torch.float32, "cpu")
    buf.reserve(16)
    buf.set_shape((5,))
    with pytest.raises(FTPError, match="allocated only 4"):
        buf.result()

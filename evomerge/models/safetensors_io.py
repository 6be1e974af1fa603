"""Direct safetensors reads and streaming writes.

Why not `safe_open`: it memory-maps the whole file, and every page a merge touches stays
resident (and counted in RSS) until the handle closes, so peak memory grows with model size.
Here each tensor is read with `pread` into its own buffer and dropped after use, and an output
shard is written tensor by tensor behind a header computed up front, so the merge holds only
the tensors in use. The format is the published one (8-byte little-endian header length, JSON
header, raw little-endian data); files written here load with `safetensors` and transformers.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    """A safetensors file that cannot be read as promised; the message names the file."""


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lies in its file and what it holds, known from the header alone."""
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int

    @property
    def numel(self) -> int:
        """Number of elements, to check the header's byte count against the shape."""
        n = 1
        for d in self.shape:
            n *= d
        return n


class SafetensorsFile:
    """One .safetensors file: header parsed and checked against the file size, tensors read
    on demand. Thread-safe (`os.pread` has no shared file position)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise SafetensorsError(f"{self.path}: cannot open: {exc.strerror}") from None
        size = os.fstat(self._fd).st_size
        head = os.pread(self._fd, 8, 0)
        if len(head) < 8:
            raise SafetensorsError(f"{self.path}: truncated (no header length)")
        (hlen,) = struct.unpack("<Q", head)
        if hlen > _MAX_HEADER or 8 + hlen > size:
            raise SafetensorsError(
                f"{self.path}: truncated or not safetensors (header of {hlen} bytes, "
                f"file of {size})"
            )
        try:
            header = json.loads(os.pread(self._fd, hlen, 8))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SafetensorsError(f"{self.path}: header is not valid JSON ({exc})") from None
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        data_start = 8 + hlen
        data_size = size - data_start
        self.entries: dict[str, TensorEntry] = {}
        for name, info in header.items():
            try:
                dtype = DTYPES[info["dtype"]]
                shape = tuple(int(d) for d in info["shape"])
                begin, end = (int(x) for x in info["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise SafetensorsError(
                    f"{self.path}: tensor {name}: malformed header entry {info!r}"
                ) from None
            entry = TensorEntry(name, dtype, shape, data_start + begin, end - begin)
            expected = entry.numel * torch.empty((), dtype=dtype).element_size()
            if end - begin != expected:
                raise SafetensorsError(
                    f"{self.path}: tensor {name}: {end - begin} bytes for shape {list(shape)} "
                    f"{info['dtype']} (expected {expected})"
                )
            if end > data_size:
                raise SafetensorsError(
                    f"{self.path}: truncated: tensor {name} ends at byte {data_start + end} "
                    f"but the file has {size} bytes"
                )
            self.entries[name] = entry

    def read(self, name: str) -> torch.Tensor:
        """Read one tensor's bytes from disk into a new CPU tensor (safe from many threads)."""
        entry = self.entries[name]
        buf = torch.empty(entry.nbytes, dtype=torch.uint8)
        view = memoryview(buf.numpy())
        done = 0
        while done < entry.nbytes:
            n = os.preadv(self._fd, [view[done:]], entry.start + done)
            if n <= 0:
                raise SafetensorsError(f"{self.path}: truncated while reading tensor {name}")
            done += n
        return buf.view(entry.dtype).reshape(entry.shape)

    def close(self) -> None:
        """Close the file descriptor; safe to call twice."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


class ShardWriter:
    """Writes one shard whose tensor list is known up front: header first, then each tensor's
    bytes as it arrives, in the planned order. Nothing is buffered beyond one tensor."""

    def __init__(self, path: Path, planned: list[tuple[str, torch.dtype, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None):
        self.path = path
        header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
        offset = 0
        self._order: list[tuple[str, int]] = []
        for name, dtype, shape in planned:
            n = torch.empty((), dtype=dtype).element_size()
            for d in shape:
                n *= d
            header[name] = {
                "dtype": DTYPE_NAMES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + n],
            }
            self._order.append((name, n))
            offset += n
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        self._f: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._f.write(struct.pack("<Q", len(blob)))
        self._f.write(blob)
        self._next = 0
        self.nbytes = offset

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append the next planned tensor's bytes; one out of plan order or size is an error."""
        expected_name, nbytes = self._order[self._next]
        if name != expected_name:
            raise RuntimeError(f"{self.path}: expected tensor {expected_name}, got {name}")
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        if data.numel() != nbytes:
            raise RuntimeError(f"{self.path}: tensor {name} has {data.numel()} bytes, "
                               f"planned {nbytes}")
        self._f.write(memoryview(data.numpy()))
        self._next += 1

    @property
    def complete(self) -> bool:
        """Whether every planned tensor has been written (else the shard is unfinished)."""
        return self._next == len(self._order)

    def close(self) -> None:
        """Flush, fsync and close the shard so it is durable on disk."""
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()

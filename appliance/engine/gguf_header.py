"""A GGUF header read with bounds, before llama.cpp's own parser sees an uploaded file.

llama.cpp's GGUF reader has had memory-safety bugs on hostile counts and
lengths, so an uploaded model is first read here, in pure Python: every count,
length and tensor extent is checked against sane limits and the file's size.
Only the small values are kept; token lists are walked, not stored.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Dict, List, Tuple

from appliance.errors import UserError

MAGIC = b"GGUF"
VERSIONS = (2, 3)
MAX_TENSORS = 65_536
MAX_METADATA = 65_536
MAX_STRING = 16 << 20  # a long chat template is ~10 KB; a token is a few bytes
MAX_ARRAY = 4 << 20  # a 256k vocabulary, with room
MAX_DIMS = 4
MAX_HEADER = 256 << 20  # bytes of header walked before the tensor data starts
KEEP_STRING = 1 << 20  # strings longer than this are checked, not kept

# value type -> struct format (GGUF is little-endian)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class HeaderError(UserError):
    """The file is not a GGUF llama.cpp should be given; the message says what is wrong."""


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: Tuple[int, ...]
    ggml_type: int
    offset: int  # from the start of the tensor data
    nbytes: int


@dataclass
class Header:
    version: int
    metadata: Dict[str, Any] = field(default_factory=dict)
    tensors: List[Tensor] = field(default_factory=list)
    data_start: int = 0
    file_size: int = 0

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_value(self, key: str, default: Any = None) -> Any:
        """A `<architecture>.<key>` value such as block_count or context_length."""
        return self.metadata.get(f"{self.architecture}.{key}", default)


class _Reader:
    def __init__(self, f: BinaryIO, path: Path):
        self.f, self.path = f, path

    def fail(self, problem: str) -> HeaderError:
        return HeaderError(f"{self.path}: {problem}")

    def take(self, n: int) -> bytes:
        if self.f.tell() + n > MAX_HEADER:
            raise self.fail(f"header larger than {MAX_HEADER >> 20} MiB: not a model we accept")
        data = self.f.read(n)
        if len(data) != n:
            raise self.fail("truncated inside its header: copy the file again")
        return data

    def skip(self, n: int) -> None:
        if self.f.tell() + n > MAX_HEADER:
            raise self.fail(f"header larger than {MAX_HEADER >> 20} MiB: not a model we accept")
        self.f.seek(n, os.SEEK_CUR)

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def count(self, what: str, limit: int) -> int:
        n = self.scalar("<Q")
        if n > limit:
            raise self.fail(f"claims {n} {what} (at most {limit} make sense): a corrupt or "
                            "hostile file")
        return n

    def string(self, keep: bool = True) -> str:
        n = self.count("bytes in a string", MAX_STRING)
        if not keep and n > KEEP_STRING:
            self.skip(n)
            return ""
        raw = self.take(n)
        try:
            return raw.decode("utf-8") if keep else ""
        except UnicodeDecodeError:
            raise self.fail("a metadata string is not UTF-8: a corrupt file") from None

    def value(self, vtype: int, keep: bool = True) -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string(keep)
        if vtype == _ARRAY:
            item = self.scalar("<I")
            n = self.count("array items", MAX_ARRAY)
            if item == _ARRAY:
                raise self.fail("nested metadata arrays: not a model file we accept")
            if item in _SCALARS:  # skip fixed-size items without unpacking them
                self.skip(n * struct.calcsize(_SCALARS[item]))
                return n
            if item != _STRING:
                raise self.fail(f"unknown metadata type {item}: a corrupt file")
            for _ in range(n):
                self.string(keep=False)
            return n  # arrays are only counted (a vocabulary is the size that matters)
        raise self.fail(f"unknown metadata type {vtype}: a corrupt file")


def is_gguf(path: Path) -> bool:
    """Whether the file starts with GGUF's magic (OSError when it cannot be read)."""
    with open(path, "rb") as f:
        return f.read(4) == MAGIC


def read_header(path: Path) -> Header:
    """Parse and bound-check a GGUF header; raise HeaderError naming the first problem."""
    path = Path(path)
    try:
        size = path.stat().st_size
        f = open(path, "rb")
    except OSError as e:
        raise HeaderError(f"{path}: cannot be read ({e.strerror})") from None
    with f:
        r = _Reader(f, path)
        if r.take(4) != MAGIC:
            raise HeaderError(f"{path}: not a GGUF model (wrong magic): build it with "
                              "`typewriter persona build` or convert it with llama.cpp")
        header = Header(version=r.scalar("<I"), file_size=size)
        if header.version not in VERSIONS:
            raise r.fail(f"GGUF version {header.version} (supported: 2, 3): convert it again "
                         "with a current llama.cpp")
        n_tensors = r.count("tensors", MAX_TENSORS)
        n_kv = r.count("metadata entries", MAX_METADATA)
        for _ in range(n_kv):
            key = r.string()
            vtype = r.scalar("<I")
            header.metadata[key] = r.value(vtype)
        for _ in range(n_tensors):
            header.tensors.append(_tensor(r))
        if f.tell() > size:
            raise r.fail("truncated inside its header: copy the file again")
        align = header.metadata.get("general.alignment", 32)
        if not isinstance(align, int) or align <= 0 or align & (align - 1) or align > 1 << 16:
            raise r.fail(f"general.alignment {align!r} is not a small power of two")
        header.data_start = -(-f.tell() // align) * align
    _check_extents(header, path, align)
    return header


def _tensor(r: _Reader) -> Tensor:
    from gguf import GGML_QUANT_SIZES  # 3 MB resident: only where a header is read

    name = r.string()
    n_dims = r.scalar("<I")
    if not 1 <= n_dims <= MAX_DIMS:
        raise r.fail(f"tensor {name!r} has {n_dims} dimensions: a corrupt file")
    shape = tuple(r.scalar("<Q") for _ in range(n_dims))
    ggml_type = r.scalar("<I")
    offset = r.scalar("<Q")
    if ggml_type not in GGML_QUANT_SIZES:
        raise r.fail(f"tensor {name!r} has unknown type {ggml_type}: convert the model with "
                     "a current llama.cpp")
    block, type_size = GGML_QUANT_SIZES[ggml_type]
    elements = 1
    for dim in shape:
        if dim == 0 or dim > 1 << 40:
            raise r.fail(f"tensor {name!r} has a dimension of {dim}: a corrupt file")
        elements *= dim
    if shape[0] % block:
        raise r.fail(f"tensor {name!r}: row of {shape[0]} is not a whole number of blocks")
    return Tensor(name, shape, ggml_type, offset, elements // block * type_size)


def _check_extents(header: Header, path: Path, align: int) -> None:
    for t in header.tensors:
        if t.offset % align:
            raise HeaderError(f"{path}: tensor {t.name!r} is not aligned: a corrupt file")
        if header.data_start + t.offset + t.nbytes > header.file_size:
            raise HeaderError(f"{path}: truncated: tensor {t.name!r} runs past the end of the "
                              f"file ({header.file_size} bytes); copy the file again")

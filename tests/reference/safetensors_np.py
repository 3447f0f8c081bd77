"""Minimal safetensors reader/writer on numpy (no `safetensors` package needed).

Format (https://github.com/huggingface/safetensors):
  8 bytes      little-endian u64 N, the size of the JSON header
  N bytes      JSON: {"__metadata__": {str: str}, name: {"dtype": "F32",
               "shape": [...], "data_offsets": [begin, end]}, ...}
               (padded with spaces to a multiple of 8 bytes)
  rest         the tensors' bytes, little-endian, row-major; offsets are
               relative to the start of this section.
Supported dtypes: F64, F32, F16, BF16 (read only), I64, I32, I16, I8, U8, BOOL.
"""

import json
import struct

import numpy as np

_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NAMES = {v: k for k, v in _DTYPES.items()}


def save_file(tensors, path, metadata=None):
    """Writes {name: np.ndarray} (F64/F32/F16/I64/I32/... arrays) to `path`.

    Tensors are laid out in sorted name order, as the reference implementation does.
    """
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        key = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        if key not in _NAMES:
            raise ValueError(f"{name}: unsupported dtype {a.dtype}")
        data = np.ascontiguousarray(a, dtype=key).tobytes()
        header[name] = {"dtype": _NAMES[key], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def load_file(path, with_metadata=False):
    """Reads `path` into {name: np.ndarray}; with_metadata also returns __metadata__."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    base = 8 + n
    metadata = header.pop("__metadata__", {}) or {}
    out = {}
    for name, info in header.items():
        dtype = info["dtype"]
        begin, end = info["data_offsets"]
        buf = raw[base + begin:base + end]
        shape = tuple(info["shape"])
        if dtype == "BF16":
            u16 = np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16
            out[name] = u16.view(np.float32).reshape(shape)
        elif dtype in _DTYPES:
            out[name] = np.frombuffer(buf, dtype=_DTYPES[dtype]).reshape(shape).copy()
        else:
            raise ValueError(f"{name}: unsupported dtype {dtype}")
    return (out, metadata) if with_metadata else out

"""Message encodings of the robot link: fleetrl's safe format, and the legacy Bridge format by explicit opt-in.

**Safe format** (between fleetrl processes): msgpack, with numpy arrays as ``{"__nd__": dtype, "shape": [...],
"data": bytes}``. Decoding never runs code chosen by the peer: only plain msgpack types and arrays of a fixed set
of dtypes come out, sizes are bounded, and anything else is a :class:`WireError` naming what was wrong.

**Bridge format** (a legacy ``widowx_envs`` robot server): ``lz4.frame.compress(pickle.dumps(obj))``. Unpickling
runs code chosen by the peer, so :func:`decode_bridge` exists only for a client that was told to trust its server
(``legacy_pickle``); a fleetrl server never unpickles. fleetrl pins numpy < 2, so its pickled arrays name
``numpy.core`` and the robot's numpy 1.x loads them (numpy 2's ``numpy._core`` would not import there).
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

#: Largest message either side accepts (a 4-camera 256x256 float observation is ~3 MB).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: Largest array (elements) a message may carry.
MAX_ARRAY_ELEMENTS = 4 * 1024 * 1024
ALLOWED_DTYPES = ("bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64")
_ND = "__nd__"
_PICKLE_MAGIC = (b"\x80", b"\x04\x22\x4d\x18")  # a raw pickle, or an lz4 frame (what a Bridge client sends)


class WireError(ValueError):
    """A message could not be decoded or is not allowed; the text names what (field, type, size)."""


def _pack_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.name not in ALLOWED_DTYPES:
            raise WireError(f"array dtype {obj.dtype} cannot be sent (allowed: {', '.join(ALLOWED_DTYPES)})")
        return {_ND: obj.dtype.name, "shape": list(obj.shape), "data": np.ascontiguousarray(obj).tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise WireError(f"cannot encode a {type(obj).__name__}")


def encode(message: dict[str, Any]) -> bytes:
    """One message in the safe format."""
    data = msgpack.packb(message, default=_pack_default, use_bin_type=True)
    if len(data) > MAX_MESSAGE_BYTES:
        raise WireError(f"message of {len(data)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
    return data


def _array(obj: dict[str, Any]) -> np.ndarray:
    dtype, shape, data = obj.get(_ND), obj.get("shape"), obj.get("data")
    if dtype not in ALLOWED_DTYPES:
        raise WireError(f"array dtype {dtype!r} is not allowed (allowed: {', '.join(ALLOWED_DTYPES)})")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape) or len(shape) > 8:
        raise WireError(f"array shape {shape!r} is not a list of at most 8 non-negative ints")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if count > MAX_ARRAY_ELEMENTS:
        raise WireError(f"array of {count} elements exceeds the {MAX_ARRAY_ELEMENTS}-element limit")
    if not isinstance(data, bytes) or len(data) != count * np.dtype(dtype).itemsize:
        raise WireError(f"array data is not {count} x {dtype} bytes")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def _unpack_hook(obj: dict[Any, Any]) -> Any:
    if _ND in obj:
        return _array(obj)
    return obj


def decode(data: bytes) -> dict[str, Any]:
    """A message in the safe format; raises :class:`WireError` for anything else (a pickle included)."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise WireError(f"message of {len(data)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
    if data.startswith(_PICKLE_MAGIC):
        raise WireError("this looks like a pickle (or an lz4-compressed one); this server never unpickles: use "
                        "fleetrl's msgpack format")
    try:
        message = msgpack.unpackb(data, object_hook=_unpack_hook, raw=False, strict_map_key=True,
                                  max_bin_len=MAX_MESSAGE_BYTES, max_str_len=1 << 20, max_array_len=1 << 16,
                                  max_map_len=1 << 12, max_ext_len=0)
    except WireError:
        raise
    except Exception as exc:  # noqa: BLE001 - msgpack raises several types for malformed input
        raise WireError(f"not a valid message ({type(exc).__name__}: {exc})") from None
    if not isinstance(message, dict):
        raise WireError(f"a message must be a map, got {type(message).__name__}")
    return message


def encode_bridge(obj: Any) -> bytes:
    """A request to a legacy Bridge server: lz4-compressed pickle, protocol 4 (the server's Python 3.8 reads it)."""
    import pickle

    import lz4.frame

    return lz4.frame.compress(pickle.dumps(obj, protocol=4))


def decode_bridge(data: bytes) -> Any:
    """A reply from a legacy Bridge server. Runs the peer's pickle: only for a trusted server (explicit opt-in)."""
    import pickle

    import lz4.frame

    try:
        return pickle.loads(lz4.frame.decompress(data))  # noqa: S301 - opt-in legacy path, see the module docstring
    except Exception as exc:  # noqa: BLE001
        raise WireError(f"not a Bridge reply ({type(exc).__name__}: {exc})") from None


"""Shared by the property tests (importable as ``_properties``: pytest puts
this folder on ``sys.path``)."""
from hypothesis import settings

#: ``max_examples`` of the ``vistok`` profile (tests/conftest.py), the scale
#: every count below is relative to
BASE_EXAMPLES = 20


def examples(count: int) -> settings:
    """``settings`` running ``count`` examples under the default profile,
    scaled with the profile's ``max_examples`` (``--hypothesis-profile=
    vistok-thorough`` runs 10x as many)."""
    scale = settings.default.max_examples / BASE_EXAMPLES
    return settings(max_examples=max(1, round(count * scale)))


def flip_bit(data: bytes, position: int, bit: int) -> bytes:
    """``data`` with bit ``bit`` (0 = least significant) of byte
    ``position`` inverted."""
    damaged = bytearray(data)
    damaged[position] ^= 1 << bit
    return bytes(damaged)

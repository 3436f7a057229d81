"""Helpers shared by the token storage formats (:mod:`.seit_format`,
:mod:`.compact_format`, :mod:`.token_convert`): reading a collection of
images' codes in chunks, and the format-independent content hash."""
import hashlib
from typing import Iterable, Iterator, Tuple

import numpy as np


def iter_image_chunks(images, chunk: int) -> Iterator[Tuple[int, object]]:
    """``(first, part)`` over ``images`` ``chunk`` images at a time.

    ``images`` is an object with ``iter_chunks(chunk)`` (a token file or a
    conversion source: its chunks are passed through), an ``(N, ...)``
    integer array (``part`` is a slice of it) or a sequence of per-image
    arrays (``part`` is a list of them; sizes may differ)."""
    if hasattr(images, 'iter_chunks'):
        yield from images.iter_chunks(chunk)
        return
    for first in range(0, len(images), chunk):
        stop = min(first + chunk, len(images))
        if isinstance(images, np.ndarray):
            yield first, images[first:stop]
        else:
            yield first, [np.asarray(images[i]) for i in range(first, stop)]


def tokens_sha256(chunks: Iterable) -> str:
    """sha256 of images' codes as little-endian ``uint32``, image after
    image, each flattened row-major (levels concatenated in order): equal
    codes give equal hashes whatever format stores them. ``chunks`` yields
    ``(n, tokens_per_image)`` arrays, single images or lists of images."""
    digest = hashlib.sha256()
    for chunk in chunks:
        if isinstance(chunk, (list, tuple)):
            for image in chunk:
                digest.update(np.ascontiguousarray(image,
                                                   dtype='<u4').tobytes())
        else:
            digest.update(np.ascontiguousarray(chunk, dtype='<u4').tobytes())
    return digest.hexdigest()

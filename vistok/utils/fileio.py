"""Small file utilities shared by datasets, tools and metrics."""
import hashlib


def sha256_file(path: str, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of the bytes of the file at ``path`` (read in chunks of
    ``chunk_bytes``)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(chunk_bytes), b''):
            digest.update(chunk)
    return digest.hexdigest()

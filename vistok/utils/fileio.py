"""Small file utilities shared by datasets, tools and metrics."""
import hashlib
import json


def sha256_file(path: str, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of the bytes of the file at ``path`` (read in chunks of
    ``chunk_bytes``)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(chunk_bytes), b''):
            digest.update(chunk)
    return digest.hexdigest()


def config_sha256(cfg) -> str:
    """Hex SHA-256 of a config dict (an mmengine ``ConfigDict``: anything
    with ``to_dict()``) dumped as JSON with sorted keys (values JSON cannot
    hold as their ``repr``)."""
    text = json.dumps(cfg.to_dict(), sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()

"""Compatibility of mmengine 0.10.7 with current setuptools, in one place.

mmengine resolves ``pkg::`` config bases and ``mim`` packages through
``pkg_resources``, which new setuptools no longer ships. ``apply()`` points
those helpers at :mod:`importlib.metadata` instead. It is idempotent and only
replaces the two functions in the modules that imported them.

Since torch 2.6, ``torch.load`` defaults to ``weights_only=True`` and
mmengine's local checkpoint loader cannot read its own training state.
``apply()`` registers :func:`vistok.utils.checkpoint.load_checkpoint_file`
as mmengine's loader for local paths: safe by default, it also rebuilds the
objects vistok's runner stores as plain tensors (see that module).

The other mmengine breakages are handled where they occur: CPU distributed
set-up in
:mod:`vistok.utils.dist`, bf16 autocast on CPU in
:mod:`vistok.engine.optimizers`.
"""
import importlib.metadata
import importlib.util
import os.path as osp

_applied = False


def is_installed(package: str) -> bool:
    """Whether ``package`` (a distribution or module name) is importable."""
    try:
        importlib.metadata.distribution(package)
        return True
    except importlib.metadata.PackageNotFoundError:
        spec = importlib.util.find_spec(package)
        return spec is not None and spec.origin is not None


def get_installed_path(package: str) -> str:
    """Directory of the installed module ``package`` (or of its distribution's
    top-level module when the names differ, e.g. ``mmcv-lite`` -> ``mmcv``)."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        top = (dist.read_text('top_level.txt') or '').split()
        module = top[0] if top else package.replace('-', '_')
        spec = importlib.util.find_spec(module)
    else:
        spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f'package {package!r} is not installed')
    return osp.dirname(spec.origin)


def apply() -> None:
    global _applied
    if _applied:
        return
    import mmengine.config.config as config_module
    import mmengine.utils as utils_module
    import mmengine.utils.package_utils as package_utils
    from mmengine.runner.checkpoint import CheckpointLoader

    from .checkpoint import load_checkpoint_file
    for module in (package_utils, utils_module, config_module):
        module.is_installed = is_installed
        module.get_installed_path = get_installed_path
    CheckpointLoader.register_scheme(
        prefixes='', loader=load_checkpoint_file, force=True)
    _applied = True

"""Every registry of vistok, in one file (DESIGN §3).

* A child of **every** mmengine root registry, each with ``scope='vistok'``
  (the scope equals the package name so mmengine can auto-import it) and
  ``locations`` naming modules that exist, so building a loop / hook /
  optimizer under ``default_scope='vistok'`` never logs scope warnings.
* Family registries for the parts an algorithm builds itself
  (``QUANTIZERS``, ``BACKBONES``, ...). They have **no parent**: mmengine
  allows one child per scope under ``MODELS`` and that one is vistok's
  ``MODELS``.

A name that is not registered raises a ``KeyError`` naming the registry, the
closest registered names and, when the name exists in another vistok
registry, that registry (e.g. a backbone given to ``QUANTIZERS``).
"""
import difflib

from mmengine.registry import DATA_SAMPLERS as MMENGINE_DATA_SAMPLERS
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import EVALUATOR as MMENGINE_EVALUATOR
from mmengine.registry import FUNCTIONS as MMENGINE_FUNCTIONS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import INFERENCERS as MMENGINE_INFERENCERS
from mmengine.registry import LOG_PROCESSORS as MMENGINE_LOG_PROCESSORS
from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import (
    OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
)
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import OPTIMIZERS as MMENGINE_OPTIMIZERS
from mmengine.registry import PARAM_SCHEDULERS as MMENGINE_PARAM_SCHEDULERS
from mmengine.registry import (
    RUNNER_CONSTRUCTORS as MMENGINE_RUNNER_CONSTRUCTORS,
)
from mmengine.registry import RUNNERS as MMENGINE_RUNNERS
from mmengine.registry import STRATEGIES as MMENGINE_STRATEGIES
from mmengine.registry import TASK_UTILS as MMENGINE_TASK_UTILS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import VISBACKENDS as MMENGINE_VISBACKENDS
from mmengine.registry import VISUALIZERS as MMENGINE_VISUALIZERS
from mmengine.registry import (
    WEIGHT_INITIALIZERS as MMENGINE_WEIGHT_INITIALIZERS,
)
from mmengine.registry import Registry

from .utils import mmengine_compat

mmengine_compat.apply()

SCOPE = 'vistok'

#: every vistok registry by its public name, for cross-family suggestions
ALL_REGISTRIES = {}


class VistokRegistry(Registry):
    """An mmengine ``Registry`` whose failed look-ups explain themselves.

    ``get`` raises ``KeyError`` (instead of returning ``None``) when a plain
    name is found neither here nor in a parent; the message names this
    registry, the closest registered names and any other vistok registry
    holding that exact name. ``name in registry`` keeps returning a bool.
    """

    def __init__(self, public_name, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.public_name = public_name
        ALL_REGISTRIES[public_name] = self

    def get(self, key):
        obj = super().get(key)
        if obj is None and isinstance(key, str):
            raise KeyError(self.explain_missing(key))
        return obj

    def __contains__(self, key):
        try:
            return super().get(key) is not None
        except RuntimeError:
            return False

    def build_or_take(self, cfg, default=None):
        """The one "build from config unless already built" rule: a module
        (any non-dict object) is returned as is, a config dict is built, and
        ``None`` builds ``default`` (a config; ``None`` stays ``None``).
        Parts accept either so they can be used without a config."""
        if cfg is None:
            if default is None:
                return None
            cfg = default
        return self.build(cfg) if isinstance(cfg, dict) else cfg

    def registered_names(self):
        """Names visible from this registry (its own and its parents')."""
        self.import_from_location()
        names = set(self._module_dict)
        parent = self.parent
        while parent is not None:
            names.update(parent._module_dict)
            parent = parent.parent
        return sorted(names)

    def explain_missing(self, key):
        names = self.registered_names()
        close = difflib.get_close_matches(key, names, n=5, cutoff=0.5)
        if not close:
            lowered = {n.lower(): n for n in names}
            close = [lowered[n] for n in difflib.get_close_matches(
                key.lower(), list(lowered), n=5, cutoff=0.4)]
        msg = (f'`{key}` is not registered in vistok\'s {self.public_name} '
               f'registry (scope "{self.scope}").')
        msg += (f' Closest registered names: {", ".join(close)}.'
                if close else ' No registered name is close to it.')
        elsewhere = []
        for name, reg in ALL_REGISTRIES.items():
            if reg is self:
                continue
            reg.import_from_location()
            if key in reg._module_dict:
                elsewhere.append(name)
        if elsewhere:
            msg += (f' `{key}` is registered in {", ".join(elsewhere)}: it '
                    f'belongs to another family than {self.public_name}.')
        msg += (' If it lives in a plugin, import it with custom_imports = '
                "dict(imports=['your.package'], allow_failed_imports=False).")
        return msg


def _child(public_name, parent, locations):
    return VistokRegistry(
        public_name,
        parent.name,
        parent=parent,
        scope=SCOPE,
        locations=locations)


# --- children of mmengine's root registries ---------------------------------
RUNNERS = _child('RUNNERS', MMENGINE_RUNNERS, ['vistok.engine.runner'])
RUNNER_CONSTRUCTORS = _child('RUNNER_CONSTRUCTORS',
                             MMENGINE_RUNNER_CONSTRUCTORS,
                             ['vistok.engine.runner'])
LOOPS = _child('LOOPS', MMENGINE_LOOPS, ['vistok.engine.loops'])
HOOKS = _child('HOOKS', MMENGINE_HOOKS, ['vistok.engine.hooks'])
STRATEGIES = _child('STRATEGIES', MMENGINE_STRATEGIES, ['vistok.engine'])
DATASETS = _child('DATASETS', MMENGINE_DATASETS, ['vistok.datasets'])
DATA_SAMPLERS = _child('DATA_SAMPLERS', MMENGINE_DATA_SAMPLERS,
                       ['vistok.datasets.samplers'])
TRANSFORMS = _child('TRANSFORMS', MMENGINE_TRANSFORMS,
                    ['vistok.datasets.transforms'])
MODELS = _child('MODELS', MMENGINE_MODELS, ['vistok.models'])
MODEL_WRAPPERS = _child('MODEL_WRAPPERS', MMENGINE_MODEL_WRAPPERS,
                        ['vistok.engine'])
WEIGHT_INITIALIZERS = _child('WEIGHT_INITIALIZERS',
                             MMENGINE_WEIGHT_INITIALIZERS, ['vistok.models'])
OPTIMIZERS = _child('OPTIMIZERS', MMENGINE_OPTIMIZERS,
                    ['vistok.engine.optimizers'])
OPTIM_WRAPPERS = _child('OPTIM_WRAPPERS', MMENGINE_OPTIM_WRAPPERS,
                        ['vistok.engine.optimizers'])
OPTIM_WRAPPER_CONSTRUCTORS = _child('OPTIM_WRAPPER_CONSTRUCTORS',
                                    MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
                                    ['vistok.engine.optimizers'])
PARAM_SCHEDULERS = _child('PARAM_SCHEDULERS', MMENGINE_PARAM_SCHEDULERS,
                          ['vistok.engine.optimizers'])
METRICS = _child('METRICS', MMENGINE_METRICS, ['vistok.evaluation'])
EVALUATOR = _child('EVALUATOR', MMENGINE_EVALUATOR, ['vistok.evaluation'])
TASK_UTILS = _child('TASK_UTILS', MMENGINE_TASK_UTILS, ['vistok.models'])
VISUALIZERS = _child('VISUALIZERS', MMENGINE_VISUALIZERS, ['vistok.engine'])
VISBACKENDS = _child('VISBACKENDS', MMENGINE_VISBACKENDS, ['vistok.engine'])
LOG_PROCESSORS = _child('LOG_PROCESSORS', MMENGINE_LOG_PROCESSORS,
                        ['vistok.engine'])
INFERENCERS = _child('INFERENCERS', MMENGINE_INFERENCERS, ['vistok.apis'])
FUNCTIONS = _child('FUNCTIONS', MMENGINE_FUNCTIONS, ['vistok.datasets'])


# --- family registries for parts (no parent, DESIGN §3) ---------------------
def _family(public_name, name, locations):
    return VistokRegistry(
        public_name, name, scope=SCOPE, locations=locations)


QUANTIZERS = _family('QUANTIZERS', 'quantizer', ['vistok.models.quantizers'])
BACKBONES = _family('BACKBONES', 'backbone', ['vistok.models.backbones'])
HEADS = _family('HEADS', 'head', ['vistok.models.heads'])
LOSSES = _family('LOSSES', 'loss', ['vistok.models.losses'])
DISCRIMINATORS = _family('DISCRIMINATORS', 'discriminator',
                         ['vistok.models.discriminators'])
#: image feature extractors for FID / IS / KID (Inception flavours,
#: test stand-ins)
FEATURE_EXTRACTORS = _family('FEATURE_EXTRACTORS', 'feature extractor',
                             ['vistok.evaluation'])
#: token samplers of the generators (temperature, top-k/p, guidance)
SAMPLERS = _family('SAMPLERS', 'token sampler', ['vistok.models.generators'])
#: segmentation post-processing (watershed, agglomeration, multicut)
POSTPROCESSORS = _family('POSTPROCESSORS', 'post-processor',
                         ['vistok.models.segmentors'])

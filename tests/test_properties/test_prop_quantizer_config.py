"""Config keys of the wrong type, for every quantizer built through the
registry from a dict (issue 17, item 5): a ``ValueError`` naming the key
(``codebook_size='4096'``, ``levels=8``, ``embed_dim=3.5``, ``None`` where
an int is required, ``use_l2_norm='no'``, ...), never a ``TypeError`` from
deep inside, a silently truncated float or a truthy string taken as
``True``. And the right types still build, including the ones a config
may reasonably hold (numpy integers, an int for a float).

``OPTION_KINDS`` is this test's own statement of each key's type, from the
constructors' documented arguments; a test fails when a quantizer gains a
key the table does not cover.
"""
import inspect
import math

import numpy as np
import pytest
from _properties import examples
from hypothesis import given
from hypothesis import strategies as st

import vistok.models.quantizers as quantizers
from vistok.registry import QUANTIZERS

VQ = dict(type='VectorQuantizer', codebook_size=8, embed_dim=4)
#: a valid config of each quantizer
BASE = dict(
    VectorQuantizer=dict(codebook_size=8, embed_dim=4),
    FiniteScalarQuantizer=dict(levels=[3, 4]),
    LookupFreeQuantizer=dict(codebook_bits=3),
    ResidualQuantizer=dict(quantizer=VQ, depth=2),
    ProductQuantizer=dict(quantizer=VQ, num_branches=2),
    MultiScaleResidualQuantizer=dict(scales=[1, 2], quantizer=VQ),
    HierarchicalQuantizer=dict(
        top_quantizer=dict(VQ, embed_dim=16), bottom_quantizer=VQ))
#: every constructor key's type ('?': None allowed, '|': either)
OPTION_KINDS = dict(
    VectorQuantizer=dict(
        codebook_size='int', embed_dim='int', in_channels='int?',
        use_l2_norm='bool', l2_norm_output='bool?',
        commitment_weight='real', codebook_weight='real',
        frozen_codebook='bool', ema_decay='real?', ema_eps='real',
        gradient_estimator='str', restart_threshold='real?',
        restart_decay='real', restart_interval='int', kmeans_init='bool',
        kmeans_iters='int', use_external_codebook='bool',
        external_codebook_path='str?', mix_mode='str',
        external_codebook_key='str?', external_num_codes='int?',
        external_codebook_in_checkpoint='bool', latent_norm_stat='str?',
        latent_norm_cap='real', latent_norm_decay='real',
        cap_latent_norm='bool'),
    FiniteScalarQuantizer=dict(levels='ints', in_channels='int?',
                               bound_eps='real'),
    LookupFreeQuantizer=dict(
        codebook_bits='int', in_channels='int?', spherical='bool',
        temperature='real', entropy_weight='real', diversity_gamma='real',
        commitment_weight='real', entropy_loss_mode='str',
        codebook_entropy_exact_max_bits='int'),
    ResidualQuantizer=dict(
        quantizer='quantizer', depth='int', shared_codebook='bool',
        depth_scales='str|reals?', dropout_prob='real',
        dropout_min_depth='int', depth_loss_reduction='str',
        per_depth_loss='bool', depth_loss_space='str'),
    ProductQuantizer=dict(quantizer='quantizer|quantizers',
                          num_branches='int?', in_channels='int?',
                          share_dropout='bool'),
    MultiScaleResidualQuantizer=dict(
        scales='ints', quantizer='config?', use_phi='bool', num_phi='int',
        phi_ratio='real', phi_kernel_size='int', commitment_weight='real',
        codebook_weight='real', commitment_reduction='str',
        dropout_ratio='real', dropout_mode='str', start_scale='int'),
    HierarchicalQuantizer=dict(
        top_quantizer='quantizer', bottom_quantizer='quantizer?',
        shared_codebook='bool', token_order='str', combine='str'))

#: per kind, the wrong values a config most plausibly holds (a number as
#: a string, a truncatable float, a truthy string, a scalar for a list,
#: None where a value is required)
CONFUSABLE = dict(
    int=['4', 3.5, True, [4]], real=['0.5', True, math.nan, [0.5]],
    bool=['no', 0, 1.0], str=[5, ['abc'], True],
    path=[5, ['a.pth'], True], ints=[8, '8', [2, 3.5], [2, True]],
    reals=[0.5, 'pow2x', [1, 'x'], [True]],
    config=['VectorQuantizer', dict(codebook_size=8), [dict(VQ)], 4],
    quantizer=['VectorQuantizer', dict(codebook_size=8), 4])
#: generated values of a kind (drawn when the kind refuses them)
GENERATED = dict(
    int=st.integers(-3, 3), fraction=st.one_of(
        st.integers(-9, 9).map(lambda i: i + 0.5),
        st.sampled_from([math.nan, math.inf, -math.inf])),
    bool=st.booleans(),
    str=st.text(max_size=5), none=st.none(),
    int_list=st.lists(st.integers(1, 4), max_size=3),
    fraction_list=st.lists(st.floats(0.1, 0.9), min_size=1, max_size=3),
    text_list=st.lists(st.text(max_size=3), min_size=1, max_size=3),
    dict_without_type=st.dictionaries(st.sampled_from(['a', 'size']),
                                      st.integers(), max_size=2))
#: the generated groups each part of a kind accepts
ACCEPTED_BY = dict(int={'int'}, real={'int', 'fraction'}, bool={'bool'},
                   str={'str'}, path={'str'}, ints={'int_list'},
                   reals={'int_list', 'fraction_list'}, config=set(),
                   quantizer=set(), quantizers=set())


def parts(kind: str):
    return kind.rstrip('?').split('|')


def refused_confusables(kind: str) -> list:
    """The confusable values of ``kind``'s parts that no part accepts."""
    values = [v for part in parts(kind) for v in CONFUSABLE.get(part, [])]
    if not kind.endswith('?'):
        values.append(None)
    accepted = set().union(*(ACCEPTED_BY[p] for p in parts(kind)))
    if 'str' in accepted:  # e.g. depth_scales='pow2x' is a string
        values = [v for v in values if not isinstance(v, str)]
    if 'int_list' in accepted or 'fraction_list' in accepted:
        values = [v for v in values if not (
            isinstance(v, list) and all(
                isinstance(x, (int, float)) and not isinstance(x, bool)
                for x in v)
            and ('fraction_list' in accepted or all(
                isinstance(x, int) for x in v)))]
    return values


def build_error(name: str, key: str, value) -> str:
    cfg = dict(BASE[name], type=name, **{key: value})
    with pytest.raises(ValueError) as err:
        QUANTIZERS.build(cfg)
    return str(err.value)


def names_key(message: str, key: str) -> bool:
    return f'`{key}`' in message or f'{key} must' in message


def test_the_table_covers_every_quantizer_and_key():
    classes = {name: cls for name, cls in vars(quantizers).items()
               if inspect.isclass(cls) and issubclass(
                   cls, quantizers.BaseQuantizer)
               and not inspect.isabstract(cls)}
    assert set(classes) == set(OPTION_KINDS)
    for name, cls in classes.items():
        keys = list(inspect.signature(cls.__init__).parameters)[1:]
        assert keys == list(OPTION_KINDS[name]), name
        assert QUANTIZERS.get(name) is cls


@pytest.mark.parametrize('name', sorted(OPTION_KINDS))
def test_every_key_refuses_confusable_values_naming_itself(name):
    """Every key, every confusable wrong value (exhaustive: ~300 builds)."""
    for key, kind in OPTION_KINDS[name].items():
        for value in refused_confusables(kind):
            message = build_error(name, key, value)
            assert names_key(message, key), f'{name}.{key}={value!r}: ' \
                f'{message}'


KEYS = [(name, key, kind) for name, kinds in OPTION_KINDS.items()
        for key, kind in kinds.items()]


@st.composite
def wrong_settings(draw):
    """A key and a generated value of a type it refuses."""
    name, key, kind = draw(st.sampled_from(KEYS))
    accepted = set().union(*(ACCEPTED_BY[p] for p in parts(kind)))
    if kind.endswith('?'):
        accepted.add('none')
    group = draw(st.sampled_from(sorted(set(GENERATED) - accepted)))
    return name, key, draw(GENERATED[group])


@examples(150)
@given(setting=wrong_settings())
def test_a_generated_value_of_the_wrong_type_is_named(setting):
    name, key, value = setting
    message = build_error(name, key, value)
    assert names_key(message, key), f'{name}.{key}={value!r}: {message}'


#: values of the right type, equal to a valid setting, per key
RIGHT_TYPES = [
    ('VectorQuantizer', dict(codebook_size=np.int64(8), embed_dim=4)),
    ('VectorQuantizer', dict(commitment_weight=1, ema_decay=np.float64(0.9),
                             in_channels=4, l2_norm_output=None)),
    ('VectorQuantizer', dict(external_codebook_path='table.pth',
                             restart_threshold=1)),
    ('FiniteScalarQuantizer', dict(levels=(3, np.int64(4)), bound_eps=1e-3,
                                   in_channels=5)),
    ('LookupFreeQuantizer', dict(temperature=1, entropy_weight=0,
                                 spherical=True)),
    ('ResidualQuantizer', dict(depth_scales='pow2', dropout_prob=0)),
    ('ResidualQuantizer', dict(depth_scales=[1, 0.5])),
    ('ProductQuantizer', dict(quantizer=[VQ, dict(VQ, codebook_size=4)],
                              num_branches=None)),
    ('MultiScaleResidualQuantizer', dict(scales=(1, 2), quantizer=None,
                                         phi_ratio=1)),
    ('HierarchicalQuantizer', dict(top_quantizer=dict(VQ, embed_dim=16),
                                   bottom_quantizer=None,
                                   shared_codebook=True)),
]


@pytest.mark.parametrize('name,options', RIGHT_TYPES)
def test_right_types_build(name, options):
    QUANTIZERS.build(dict(BASE[name], type=name, **options))

"""UniCode image token ids: the ``<vistok>`` text format, code ids <-> LLM
vocabulary ids, and flat-sequence token exports that undo exactly.

The LLM-codebook vector quantizer is stood in for by
:class:`StandInLLMVectorQuantizer` (a plain VectorQuantizer with a
``selected_llm_indices`` buffer), so these tests only rely on that buffer,
the interface of the LLM-codebook option of ``VectorQuantizer``."""
import json
import runpy

import pytest
import torch
import torch.nn as nn
from test_tools_export_tokens import export_args, make_tokenizer, source_images

from _helpers import REPO_ROOT, torch_threads
from projects.UniCode.unicode import (
    format_image_ids,
    ids_to_codes,
    ids_to_images,
    images_to_ids,
    parse_image_ids,
    split_image_spans,
)
from vistok.apis.tokenize import detokenize, load_tokenizer, tokenize
from vistok.datasets.token_convert import convert_tokens
from vistok.datasets.token_shards import TokenShardDataset
from vistok.models.quantizers import (
    HierarchicalQuantizer,
    ResidualQuantizer,
    VectorQuantizer,
)
from vistok.models.utils.token_ids import (
    codes_to_llm_ids,
    from_token_sequence,
    llm_id_table,
    llm_ids_to_codes,
    table_sha256,
    to_token_sequence,
)
from vistok.registry import QUANTIZERS

STAND_IN = 'UniCodeStandInLLMVectorQuantizer'
LLM_VOCABULARY = 300  # ids of the stand-in "LLM"
TOP_CODES = 48


class StandInLLMVectorQuantizer(VectorQuantizer):
    """A VectorQuantizer whose codes carry LLM vocabulary ids
    ``llm_ids`` in the buffer ``selected_llm_indices``."""

    def __init__(self, llm_ids, **kwargs):
        super().__init__(**kwargs)
        self.register_buffer('selected_llm_indices',
                             torch.tensor(llm_ids, dtype=torch.long))


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is as fast and does not stall on a
    busy shared machine."""
    with torch_threads(1):
        yield


@pytest.fixture(scope='module', autouse=True)
def stand_in_registered():
    """Configs of this module name the stand-in; it leaves the registry
    as it found it."""
    QUANTIZERS.register_module(name=STAND_IN, module=StandInLLMVectorQuantizer,
                               force=True)
    yield
    QUANTIZERS._module_dict.pop(STAND_IN, None)


def subset(size, start=0, vocabulary=LLM_VOCABULARY):
    """``size`` distinct LLM ids, sorted (as the official subset): entries
    ``start .. start + size - 1`` of one fixed permutation, so subsets at
    different ``start`` are disjoint."""
    generator = torch.Generator().manual_seed(0)
    permutation = torch.randperm(vocabulary, generator=generator)
    return permutation[start:start + size].sort()[0]


def hq_config(token_order='interleaved', shared=True, llm_ids=None):
    """UniCode's HQ layout on the tiny tokenizer (16x16 latent of 8
    channels): top 8x8 on the pixel-unshuffled 32 channels; the top codes
    carry ``llm_ids`` (default :func:`subset`)."""
    llm_ids = subset(TOP_CODES) if llm_ids is None else llm_ids
    top = dict(type=STAND_IN, codebook_size=TOP_CODES, embed_dim=32,
               llm_ids=[int(i) for i in llm_ids])
    cfg = dict(_delete_=True, type='HierarchicalQuantizer', top_quantizer=top,
               shared_codebook=shared, token_order=token_order)
    if not shared:
        cfg['bottom_quantizer'] = dict(type=STAND_IN, codebook_size=40,
                                       embed_dim=8,
                                       llm_ids=subset(40, TOP_CODES).tolist())
    return cfg


def test_vistok_text_writer_and_parser_round_trip():
    # the official format (data/process.py): '-'-joined decimal ids
    assert format_image_ids([5, 17, 3]) == '<vistok>5-17-3</vistok>'
    assert format_image_ids(torch.tensor([0])) == '<vistok>0</vistok>'
    assert format_image_ids([]) == '<vistok></vistok>'
    generator = torch.Generator().manual_seed(0)
    for length in (1, 2, 64, 320):
        ids = torch.randint(0, 32000, (length, ), generator=generator)
        text = f"Draw 'a cat'. {format_image_ids(ids)}."
        assert parse_image_ids(text) == [ids.tolist()]
    text = ('q <vistok>1-22</vistok> mid <vistok></vistok>'
            '<vistok>333</vistok>.')
    assert split_image_spans(text) == ['q ', [1, 22], ' mid ', [], '',
                                       [333], '.']
    assert parse_image_ids('no image') == []
    for bad, match in [('<vistok>1-x</vistok>', "'1-x'"),
                       ('<vistok>1--2</vistok>', "'1--2'"),
                       ('<vistok>1 2</vistok>', "'1 2'"),
                       ('<vistok>-1</vistok>', "'-1'"),
                       ('a <vistok>1-2', 'unbalanced <vistok>'),
                       ('1</vistok> b', 'unbalanced </vistok>'),
                       ('<vistok>1<vistok>2</vistok></vistok>', "'1<vistok")]:
        with pytest.raises(ValueError, match=match):
            split_image_spans(bad)
    with pytest.raises(ValueError, match=r'\[-3\]'):
        format_image_ids([1, -3])
    with pytest.raises(ValueError, match='1-D integer'):
        format_image_ids(torch.zeros(2, 3, dtype=torch.long))


def test_code_ids_map_to_llm_ids_and_back():
    top_ids, bottom_ids = subset(TOP_CODES), subset(40, TOP_CODES)
    separate = HierarchicalQuantizer(
        top_quantizer=StandInLLMVectorQuantizer(
            top_ids.tolist(), codebook_size=TOP_CODES, embed_dim=32),
        bottom_quantizer=StandInLLMVectorQuantizer(
            bottom_ids.tolist(), codebook_size=40, embed_dim=8))
    shared = HierarchicalQuantizer(
        top_quantizer=StandInLLMVectorQuantizer(
            top_ids.tolist(), codebook_size=TOP_CODES, embed_dim=32),
        shared_codebook=True)
    # joint vocabulary: top ids, then bottom ids (bottom_offset = 48)
    assert torch.equal(llm_id_table(separate), torch.cat([top_ids,
                                                          bottom_ids]))
    assert torch.equal(llm_id_table(shared), top_ids)

    generator = torch.Generator().manual_seed(0)
    top = torch.randint(0, TOP_CODES, (2, 4, 4), generator=generator)
    bottom = torch.randint(0, 40, (2, 8, 8), generator=generator)
    mapped = codes_to_llm_ids((top, bottom), separate)
    assert isinstance(mapped, tuple)
    for level, codes, table in zip(mapped, (top, bottom),
                                   (top_ids, bottom_ids)):
        expected = torch.tensor([table[c].item() for c in codes.flatten()])
        assert torch.equal(level.flatten(), expected)
        assert level.max() < LLM_VOCABULARY and level.min() >= 0
    # back: through the joint table, level by level
    table = llm_id_table(separate)
    assert torch.equal(llm_ids_to_codes(mapped[0], table), top)
    assert torch.equal(llm_ids_to_codes(mapped[1], table) - 48, bottom)
    # a flat sequence of joint ids maps and comes back whole
    sequence, layout = to_token_sequence(separate, (top, bottom))
    back = from_token_sequence(separate,
                               llm_ids_to_codes(table[sequence], table),
                               layout)
    assert torch.equal(back[0], top) and torch.equal(back[1], bottom)

    # an id outside the selected subset is named
    outside = int(next(i for i in range(LLM_VOCABULARY)
                       if i not in table.tolist()))
    ids = table[sequence].clone()
    ids[1, 7] = outside
    with pytest.raises(ValueError, match=rf'LLM id {outside} \(flat '
                       rf'position {sequence.shape[1] + 7} .*not in the '
                       rf'selected vocabulary subset \(88 ids'):
        llm_ids_to_codes(ids, table)
    with pytest.raises(ValueError, match='LLM id 100000 '):
        llm_ids_to_codes(torch.tensor([100000]), table)
    # two codes on one LLM id: ids -> codes is ambiguous
    with pytest.raises(ValueError, match='ambiguous'):
        llm_ids_to_codes(ids, torch.tensor([3, 5, 3]))
    # quantizers without the table, or without a joint vocabulary
    plain = HierarchicalQuantizer(
        top_quantizer=VectorQuantizer(codebook_size=8, embed_dim=32),
        shared_codebook=True)
    with pytest.raises(ValueError, match=r'quantizer\.top \(VectorQuantizer'
                       r'\) has no selected_llm_indices'):
        llm_id_table(plain)
    per_depth = ResidualQuantizer(
        StandInLLMVectorQuantizer(top_ids.tolist(), codebook_size=TOP_CODES,
                                  embed_dim=8), depth=2)
    with pytest.raises(ValueError, match='one codebook per depth'):
        llm_id_table(per_depth)
    rq = ResidualQuantizer(per_depth.quantizers[0], depth=4,
                           shared_codebook=True)
    assert torch.equal(llm_id_table(rq), top_ids)
    unset = StandInLLMVectorQuantizer([-1] * 4, codebook_size=4, embed_dim=8)
    with pytest.raises(ValueError, match='not set'):
        llm_id_table(unset)


@pytest.mark.parametrize('order',
                         ['interleaved', 'grouped', 'legacy_raster_children'])
def test_flat_llm_id_export_undoes_through_from_sequence(tmp_path, order):
    tool = runpy.run_path(f'{REPO_ROOT}/tools/export_tokens.py')
    config, checkpoint = make_tokenizer(tmp_path, 'vq',
                                        quantizer=hq_config(order))
    out = tmp_path / 'ids'
    manifest = tool['main'](export_args(config, checkpoint, out,
                                        '--flat-sequence', '--llm-ids'))
    model = load_tokenizer(config, checkpoint)
    table = llm_id_table(model.quantizer)
    assert torch.equal(table, subset(TOP_CODES))
    assert manifest['token_order'] == order
    assert manifest['sequence'] == dict(structure='tuple',
                                        shapes=[[8, 8], [16, 16]])
    assert manifest['id_map'] == dict(kind='llm',
                                      source='selected_llm_indices',
                                      num_codes=TOP_CODES,
                                      sha256=table_sha256(table))
    assert manifest['structure'] == 'tensor'
    assert manifest['levels'] == [dict(name='indices', shape=[320])]
    assert manifest['codebook_size'] == int(table.max()) + 1
    assert manifest['dtype'] == 'uint16'
    # the other formats cannot record the order / id map: refused, not lost
    with pytest.raises(ValueError, match='token_order / id_map export'):
        convert_tokens(out, tmp_path / 'ids.vtok', 'compact')

    dataset = TokenShardDataset(str(out), verify=True)
    stored = torch.stack([dataset[i]['indices'] for i in range(4)])
    images = source_images(config)[:4]
    top, bottom = tokenize(model, images)
    # hand-written sequence: each top token then its 2x2 children in raster
    # order of the block (interleaved), or all tops first (grouped); the
    # released layout gives top token k the bottom raster positions 4k ..
    # 4k + 3 (data/process.py: codes_b.reshape(64, 4))
    expected = []
    for b in range(4):
        tops, children = [], []
        for i in range(8):
            for j in range(8):
                tops.append(top[b, i, j])
                if order == 'legacy_raster_children':
                    k = 8 * i + j
                    children.append(list(bottom[b].flatten()[4 * k:4 * k
                                                              + 4]))
                else:
                    children.append([bottom[b, 2 * i + di, 2 * j + dj]
                                     for di in (0, 1) for dj in (0, 1)])
        if order != 'grouped':
            codes = [c for t, kids in zip(tops, children) for c in [t, *kids]]
        else:
            codes = tops + [c for kids in children for c in kids]
        expected.append(table[torch.stack(codes)])
    assert torch.equal(stored, torch.stack(expected))
    assert set(stored.unique().tolist()) <= set(table.tolist())

    # undo: LLM ids -> codes -> from_sequence -> the tokenizer's indices
    codes = ids_to_codes(model, stored, manifest['sequence'],
                         manifest['id_map'])
    assert torch.equal(codes[0], top) and torch.equal(codes[1], bottom)
    decoded = ids_to_images(model, stored, manifest['sequence'])
    assert decoded.shape == images.shape and decoded.dtype == torch.uint8
    assert torch.equal(decoded, detokenize(model, (top, bottom)))
    # images -> ids without an export gives the stored ids
    direct, layout = images_to_ids(model, images)
    assert torch.equal(direct, stored) and layout == manifest['sequence']

    # a foreign id is named; another tokenizer's ids are refused
    bad = stored.clone()
    outside = next(i for i in range(LLM_VOCABULARY)
                   if i not in table.tolist())
    bad[2, 5] = outside
    with pytest.raises(ValueError, match=f'LLM id {outside} '):
        ids_to_images(model, bad, manifest['sequence'])
    with pytest.raises(ValueError, match='another tokenizer'):
        ids_to_codes(model, stored, manifest['sequence'],
                     dict(manifest['id_map'], sha256='0' * 64))
    # a resumed export must keep the options
    with pytest.raises(ValueError, match='id_map'):
        tool['main'](export_args(config, checkpoint, out, '--flat-sequence'))


def test_llm_ids_are_refused_without_the_table(tmp_path):
    tool = runpy.run_path(f'{REPO_ROOT}/tools/export_tokens.py')
    config, checkpoint = make_tokenizer(tmp_path, 'vq')
    with pytest.raises(ValueError, match=r'--llm-ids .*selected_llm_indices'
                       r'.*quantizer \(VectorQuantizer\) has no'):
        tool['main'](export_args(config, checkpoint, tmp_path / 'ids',
                                 '--llm-ids'))
    assert not (tmp_path / 'ids').exists()
    for flags in (['--llm-ids', '--format', 'seit'],
                  ['--flat-sequence', '--format', 'compact'],
                  ['--llm-ids', '--signed-ids']):
        with pytest.raises(SystemExit):
            tool['parse_args']([config, checkpoint, '--data', 'val', '--out',
                                str(tmp_path), *flags])


def test_raster_layout_of_a_single_index_tensor():
    """Without to_sequence a tensor is flattened row-major; the layout is
    plain JSON that from_token_sequence takes back."""
    quantizer = nn.Identity()
    indices = torch.arange(24).reshape(2, 3, 4)
    sequence, layout = to_token_sequence(quantizer, indices)
    assert json.loads(json.dumps(layout)) == layout == dict(
        structure='tensor', shapes=[[3, 4]])
    assert torch.equal(sequence, indices.reshape(2, 12))
    assert torch.equal(from_token_sequence(quantizer, sequence, layout),
                       indices)
    with pytest.raises(ValueError, match=r'\(B, 12\)'):
        from_token_sequence(quantizer, sequence[:, :5], layout)

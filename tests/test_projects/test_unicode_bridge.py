"""UniCode's MLLM bridge on a tiny local "LLM": ``<vistok>`` markers as
real added tokens, LLaVA-style sequences and labels, the official visual
scaling, a tiny Llama learning image-token sequences and generating ids
that decode to an image.

The LLM is a ``LlamaForCausalLM`` built from a ``LlamaConfig`` here and
saved with ``save_pretrained`` next to a tokenizer trained with the
``tokenizers`` library (wrapped in ``PreTrainedTokenizerFast``): that
folder is the local LLM, read back with ``AutoTokenizer`` /
``AutoModelForCausalLM``. The visual tokenizer is the tiny HQ tokenizer
(shared codebook, 8x8 + 16x16 ids) whose top quantizer is a
``VectorQuantizer(mix_mode='unicode')`` reading its codebook from that
folder: code dimension = the LLM's hidden size, as in UniCode."""
import math
import runpy
import sys
from types import SimpleNamespace

import pytest
import torch
import transformers
from mmengine.config import Config
from test_tools_export_tokens import (
    NUM_IMAGES,
    export_args,
    make_tokenizer,
    source_images,
)

from _helpers import REPO_ROOT, torch_threads
from projects.UniCode.unicode import (
    DECOMPRESSION_PROMPTS,
    IGNORE_INDEX,
    TEXT_TO_IMAGE_PROMPTS,
    VICUNA_V1,
    UniCodeBridge,
    add_vistok_tokens,
    build_annotations,
    format_image_ids,
    ids_to_codes,
    ids_to_images,
    input_ids_to_text,
    load_annotations,
    load_llm_tokenizer,
    make_record,
    official_visual_scale,
    parse_image_ids,
    quantizer_visual_scale,
    require_transformers,
    text_to_input_ids,
    write_annotations,
)
from vistok.apis.tokenize import detokenize, load_tokenizer
from vistok.datasets.token_shards import TokenShardDataset
from vistok.models.utils import prepare_tokenizer
from vistok.models.utils.token_ids import llm_id_table
from vistok.registry import MODELS

SPECIALS = ['<unk>', '<s>', '</s>', '<pad>']
CAPTIONS = [f'{size} {color} {shape}' for size in ('a small', 'a big')
            for color in ('red', 'green', 'blue', 'yellow', 'white')
            for shape in ('circle', 'square')]
IMAGE_TOKENS = 320  # 8x8 top + 16x16 bottom ids of the tiny HQ tokenizer
TOP_CODES = 48  # codebook size: the LLM vocabulary subset
HIDDEN = 32  # the LLM's hidden size = the top quantizer's code dimension
#: scales the tiny Llama's embedding table (init std 0.02, row norms ~0.1)
#: so that its row norms straddle 1, as a real LLM's do: the subset rule
#: (norm >= 1) then has rows to choose from
EMBED_SCALE = 10.0
EMBEDDING_KEY = 'model.embed_tokens.weight'


def tiny_tokenizer():
    """A BPE tokenizer (Llama-style: Metaspace, BOS prepended) trained on
    the prompts and captions, as a ``PreTrainedTokenizerFast``."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    corpus = [*TEXT_TO_IMAGE_PROMPTS, *DECOMPRESSION_PROMPTS, *CAPTIONS,
              VICUNA_V1.system, 'USER: ASSISTANT:']
    backend = Tokenizer(models.BPE(unk_token='<unk>'))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, show_progress=False))
    backend.post_processor = processors.TemplateProcessing(
        single='<s> $A', special_tokens=[('<s>', SPECIALS.index('<s>'))])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token='<unk>', bos_token='<s>',
        eos_token='</s>', pad_token='<pad>')


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is as fast and does not stall on a
    busy shared machine."""
    with torch_threads(1):
        yield


@pytest.fixture(scope='module')
def llm(tmp_path_factory):
    """The local LLM folder and the vocabulary subset of the codebook."""
    folder = tmp_path_factory.mktemp('llm')
    tokenizer = tiny_tokenizer()
    tokenizer.save_pretrained(str(folder))
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=1024, bos_token_id=1, eos_token_id=2,
        pad_token_id=3)
    lm = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        lm.get_input_embeddings().weight.mul_(EMBED_SCALE)
    lm.save_pretrained(str(folder))
    # UniCode's subset, by hand: rows of norm >= 1, the TOP_CODES smallest
    # such norms, re-sorted by token id
    norms = lm.get_input_embeddings().weight.detach().norm(dim=-1)
    eligible = (norms >= 1).nonzero()[:, 0]
    selected = eligible[norms[eligible].argsort()[:TOP_CODES]].sort()[0]
    return SimpleNamespace(folder=str(folder), selected=selected,
                           vocabulary=len(tokenizer))


def hq_quantizer(llm_folder):
    """UniCode's HQ layout on the tiny tokenizer (16x16 latent of 8
    channels): a shared codebook of LLM rows on the pixel-unshuffled 32
    channels, top 8x8 then bottom 16x16 through 1x1 up / down convs."""
    top = dict(type='VectorQuantizer', codebook_size=TOP_CODES,
               embed_dim=HIDDEN, ema_decay=0.99, mix_mode='unicode',
               latent_norm_stat='sample', external_codebook_key=EMBEDDING_KEY,
               external_codebook_path=llm_folder)
    return dict(_delete_=True, type='HierarchicalQuantizer',
                top_quantizer=top, shared_codebook=True,
                token_order='interleaved')


@pytest.fixture(scope='module')
def export(llm, tmp_path_factory):
    """The tiny HQ tokenizer over the LLM subset and its flat LLM-id
    export of the tiny dataset (20 images of 32x32)."""
    tmp = tmp_path_factory.mktemp('export')
    config, checkpoint = make_tokenizer(tmp, 'vq',
                                        quantizer=hq_quantizer(llm.folder))
    # random weights, with the LLM table read in (what training starts from)
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(config).model)
    model.quantizer.top.init_weights()
    torch.save(dict(state_dict=model.state_dict(), meta=dict(iter=1)),
               checkpoint)
    out = tmp / 'ids'
    tool = runpy.run_path(f'{REPO_ROOT}/tools/export_tokens.py')
    manifest = tool['main'](export_args(config, checkpoint, out,
                                        '--flat-sequence', '--llm-ids'))
    return SimpleNamespace(config=config, checkpoint=checkpoint, out=str(out),
                           manifest=manifest)


def text_ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)['input_ids']


def test_vistok_markers_are_added_special_tokens(llm, tmp_path,
                                                 monkeypatch):
    with open(f'{llm.folder}/tokenizer.json', 'rb') as f:
        files_before = f.read()
    plain = transformers.AutoTokenizer.from_pretrained(llm.folder)
    size = len(plain)
    assert plain.convert_tokens_to_ids('<vistok>') == plain.unk_token_id
    tokenizer, (start, end) = load_llm_tokenizer(llm.folder)
    assert (start, end) == (size, size + 1) and len(tokenizer) == size + 2
    assert tokenizer.convert_tokens_to_ids(['<vistok>', '</vistok>']) == [
        start, end]
    pieces = tokenizer.tokenize("kite'.<vistok>12-3</vistok>.")
    assert pieces.count('<vistok>') == pieces.count('</vistok>') == 1
    encoded = tokenizer('a <vistok>7</vistok>')['input_ids']
    assert encoded.count(start) == encoded.count(end) == 1
    assert add_vistok_tokens(tokenizer) == (start, end)  # idempotent
    assert len(tokenizer) == size + 2
    with open(f'{llm.folder}/tokenizer.json', 'rb') as f:
        assert f.read() == files_before  # the folder is only read
    tokenizer.save_pretrained(str(tmp_path / 'saved'))
    again = transformers.AutoTokenizer.from_pretrained(str(tmp_path / 'saved'))
    assert again.convert_tokens_to_ids(['<vistok>', '</vistok>']) == [
        start, end]
    # the codebook's ids are tokens of the LLM's own vocabulary
    assert llm.selected.max() < size
    tokens = tokenizer.convert_ids_to_tokens(llm.selected.tolist())
    assert all(isinstance(t, str) for t in tokens)

    # the input-id parser: text outside the markers tokenized, ids as they
    # are, the markers as the added tokens; and back to the same text ids
    ids = llm.selected[[5, 0, 47, 5]].tolist()
    prompt = TEXT_TO_IMAGE_PROMPTS[0].format(CAPTIONS[3])
    text = f'{prompt} {format_image_ids(ids)}.'
    input_ids = text_to_input_ids(text, tokenizer, (start, end),
                                  add_bos=True)
    assert input_ids == [tokenizer.bos_token_id,
                         *text_ids(tokenizer, f'{prompt} '), start, *ids,
                         end, *text_ids(tokenizer, '.')]
    back = input_ids_to_text(input_ids[1:], tokenizer, (start, end))
    assert parse_image_ids(back) == [ids]
    assert text_to_input_ids(back, tokenizer, (start, end)) == input_ids[1:]
    # the official parser drops the markers
    assert text_to_input_ids(text, tokenizer) == [
        i for i in input_ids[1:] if i not in (start, end)]
    with pytest.raises(ValueError, match='no </vistok> id'):
        input_ids_to_text([start, 5], tokenizer, (start, end))

    with pytest.raises(FileNotFoundError, match='llm_path='):
        load_llm_tokenizer(str(tmp_path / 'missing'))
    monkeypatch.setitem(sys.modules, 'transformers', None)
    with pytest.raises(ImportError, match=r'pip install vistok\[llm\]'):
        require_transformers()
    with pytest.raises(ImportError, match=r'pip install vistok\[llm\]'):
        UniCodeBridge.from_pretrained(llm.folder, llm.selected)


def test_sequences_labels_and_the_official_scaling(llm, export):
    bridge = UniCodeBridge.from_pretrained(llm.folder, llm.selected)
    tokenizer = bridge.tokenizer
    start, end = bridge.marker_ids
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    table = bridge.lm.get_input_embeddings().weight.detach()
    assert table.shape[0] == llm.vocabulary + 2  # resized for the markers
    # the tokenizer's codebook is the LLM's subset; at lambda = 1 its codes
    # are s * E_LLM[ids], s = r * 30 * mean norm of the subset's rows
    quantizer = load_tokenizer(export.config, export.checkpoint).quantizer
    assert torch.equal(llm_id_table(quantizer), llm.selected)
    quantizer.top.set_mix_weight(1.0)
    quantizer.top.latent_ratio.fill_(0.37)  # r as a training run records it
    scale = quantizer_visual_scale(quantizer)
    norms = table[llm.selected].norm(dim=-1)
    assert scale == pytest.approx(official_visual_scale(0.37, norms),
                                  rel=1e-6)
    assert official_visual_scale(0.37, norms) == pytest.approx(
        0.37 * 30 * norms.double().mean().item(), rel=1e-12)
    scaled = UniCodeBridge(bridge.lm, tokenizer, llm.selected,
                           visual_scale=scale)

    ids = llm.selected[[3, 9, 9, 40, 1]].tolist()
    t2i = make_record('text_to_image', '0', ids, TEXT_TO_IMAGE_PROMPTS[2],
                      CAPTIONS[0])
    dec = make_record('image_decompression', '1', ids,
                      DECOMPRESSION_PROMPTS[1])
    answer = [start, *ids, end, *text_ids(tokenizer, '.'), eos]
    # text to image: <s> + system + USER: prompt ASSISTANT: (ignored), then
    # the answer and </s> (learned), as LLaVA's preprocess_v1
    human = (f'{VICUNA_V1.system} USER: '
             f'{TEXT_TO_IMAGE_PROMPTS[2].format(CAPTIONS[0])} ASSISTANT:')
    encoded = bridge.encode_record(t2i)
    prefix = [bos, *text_ids(tokenizer, human)]
    assert encoded['input_ids'] == prefix + answer
    assert encoded['labels'] == [IGNORE_INDEX] * len(prefix) + answer
    assert not any(encoded['visual'])
    # image decompression: <image> -> the ids as visual inputs (ignored)
    before = f'{VICUNA_V1.system} USER: '
    after = f'\n{DECOMPRESSION_PROMPTS[1]} ASSISTANT:'
    encoded = bridge.encode_record(dec)
    prefix = [bos, *text_ids(tokenizer, before), *ids,
              *text_ids(tokenizer, after)]
    assert encoded['input_ids'] == prefix + answer
    assert encoded['labels'] == [IGNORE_INDEX] * len(prefix) + answer
    first = 1 + len(text_ids(tokenizer, before))
    assert [k for k, v in enumerate(encoded['visual']) if v] == list(
        range(first, first + len(ids)))
    with pytest.raises(ValueError, match='no visual_tokens'):
        bridge.encode_record(dict(dec, visual_tokens=None))

    batch = bridge.collate([t2i, dec])
    lengths = batch['attention_mask'].sum(1)
    assert batch['labels'][0, lengths[0]:].eq(IGNORE_INDEX).all()
    # default: exactly the LM's own embedding of the ids; official: s times
    # that at visual inputs, the same elsewhere
    plain = bridge.embed(batch['input_ids'], batch['visual'])
    assert torch.equal(plain,
                       bridge.lm.get_input_embeddings()(batch['input_ids']))
    official = scaled.embed(batch['input_ids'], batch['visual'])
    visual = batch['visual']
    assert visual.sum() == len(ids)
    assert torch.equal(official[visual], plain[visual] * scale)
    assert torch.equal(official[~visual], plain[~visual])
    ratio = official[visual] / plain[visual]
    assert torch.allclose(ratio, torch.full_like(ratio, scale))
    # ... which is the tokenizer's own z_q of those ids
    codes = torch.searchsorted(llm.selected, torch.tensor(ids))
    z_q = quantizer.top.decode(codes.reshape(1, 1, -1))[0, :, 0].T
    assert torch.allclose(official[visual], z_q, rtol=1e-5, atol=1e-6)
    out, out_scaled = bridge(batch), scaled(batch)
    assert out['visual_scale'] is None and out_scaled['visual_scale'] == scale
    assert out['loss'] != out_scaled['loss']
    # without visual inputs the two are the same model
    text_only = bridge.collate([t2i])
    assert torch.equal(bridge(text_only)['loss'], scaled(text_only)['loss'])


def test_tiny_llama_loss_falls_on_image_token_sequences(llm, export,
                                                        tmp_path):
    files = {task: str(tmp_path / f'{task}.json')
             for task in ('text_to_image', 'image_decompression')}
    write_annotations(export.out, files['text_to_image'], 'text_to_image',
                      captions=CAPTIONS, seed=0)
    write_annotations(export.out, files['image_decompression'],
                      'image_decompression', seed=0)
    with pytest.raises(ValueError, match='needs captions'):
        build_annotations(export.out, 'text_to_image')
    with pytest.raises(KeyError, match='sample_idx 19 '):
        build_annotations(export.out, 'text_to_image',
                          captions=CAPTIONS[:19])
    t2i = load_annotations(files['text_to_image'])
    dec = load_annotations(files['image_decompression'])
    dataset = TokenShardDataset(export.out)
    assert len(t2i) == len(dec) == NUM_IMAGES
    for k in (0, NUM_IMAGES - 1):
        ids = dataset[k]['indices'].tolist()
        assert len(ids) == IMAGE_TOKENS
        assert parse_image_ids(t2i[k]['conversations'][1]['value']) == [ids]
        assert CAPTIONS[k] in t2i[k]['conversations'][0]['value']
        assert dec[k]['visual_tokens'] == ids
        assert dec[k]['conversations'][0]['value'].startswith('<image>\n')

    table = llm_id_table(load_tokenizer(export.config,
                                        export.checkpoint).quantizer)
    assert torch.equal(table, llm.selected)
    # the codebook (input embeddings) stays frozen; the random head of a
    # tiny LM has to learn (a pretrained LLM's head already reads its
    # vocabulary: the official recipe freezes it too)
    bridge = UniCodeBridge.from_pretrained(llm.folder, table,
                                           freeze_lm_head=False)
    records = [r for pair in zip(t2i, dec) for r in pair]
    evaluation = bridge.collate(records[:8])
    trained = [p for p in bridge.parameters() if p.requires_grad]
    assert not bridge.lm.get_input_embeddings().weight.requires_grad
    optimizer = torch.optim.AdamW(trained, lr=1e-2)

    def evaluation_loss():
        with torch.no_grad():
            return bridge(evaluation)['loss'].item()

    torch.manual_seed(0)
    before = evaluation_loss()
    for step in range(30):
        batch = bridge.collate([records[(4 * step + k) % len(records)]
                                for k in range(4)])
        loss = bridge(batch)['loss']
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = evaluation_loss()
    # the best context-free guess: the entropy of the learned tokens' own
    # frequencies in the evaluation batch
    labels = evaluation['labels'][:, 1:]
    _, counts = labels[labels != IGNORE_INDEX].unique(return_counts=True)
    p = counts / counts.sum()
    unigram = -(p * p.log()).sum().item()
    print(f'tiny Llama loss on LLaVA-style image-token sequences: '
          f'{before:.3f} -> {after:.3f} after 30 steps (unigram entropy '
          f'{unigram:.3f})')
    # measured: 5.997 (~ln 402 = 6.00, uniform over the vocabulary) ->
    # 0.462, below the evaluation tokens' unigram entropy 2.898 (the best
    # context-free guess) and ln 48 = 3.87 (uniform over the codebook)
    assert before > math.log(llm.vocabulary) - 0.5
    assert after < 0.5 * before and after < unigram - 1


def test_generation_gives_subset_ids_that_decode_to_an_image(llm, export):
    bridge = UniCodeBridge.from_pretrained(llm.folder, llm.selected)
    start, end = bridge.marker_ids
    records = [make_record('text_to_image', str(k), [],
                           TEXT_TO_IMAGE_PROMPTS[k], CAPTIONS[k])
               for k in range(2)]
    out = bridge.generate_image_ids(records, IMAGE_TOKENS)
    tokens, image_ids = out['tokens'], out['image_ids']
    assert tokens.shape == (2, IMAGE_TOKENS + 1)
    assert torch.isin(tokens[:, :IMAGE_TOKENS], llm.selected).all()
    assert tokens[:, IMAGE_TOKENS].eq(end).all()
    assert torch.equal(image_ids, tokens[:, :IMAGE_TOKENS])

    manifest = export.manifest
    frozen = prepare_tokenizer(export.config, export.checkpoint, freeze=True)
    images = ids_to_images(frozen, image_ids, manifest['sequence'],
                           manifest['id_map'])
    assert images.dtype == torch.uint8
    assert images.shape == (2, *source_images(export.config).shape[1:])
    reference = detokenize(load_tokenizer(export.config, export.checkpoint),
                           ids_to_codes(frozen, image_ids,
                                        manifest['sequence']))
    assert torch.equal(images, reference)

    # official layout without markers: ids only, exactly num_tokens
    plain = UniCodeBridge(bridge.lm, bridge.tokenizer, llm.selected,
                          markers=False)
    tokens = plain.generate_image_ids(records[:1], 16)['tokens']
    assert tokens.shape == (1, 16) and torch.isin(tokens, llm.selected).all()


def test_hub_ids_are_refused_not_downloaded(tmp_path, monkeypatch):
    """A Hugging Face hub id (or a missing folder) is an error naming the
    key and how to get the folder: nothing is fetched at run time."""
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    for where in ('lmsys/vicuna-7b-v1.5', str(tmp_path / 'missing')):
        with pytest.raises(FileNotFoundError,
                           match=r'llm_path=.*no config.json.*hf download'):
            UniCodeBridge.from_pretrained(where, torch.arange(4))
        with pytest.raises(FileNotFoundError,
                           match=r'llm_path=.*not a directory'):
            load_llm_tokenizer(where)

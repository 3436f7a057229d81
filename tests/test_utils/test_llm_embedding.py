"""The LLM codebook source (UniCode, issue 16): reading one embedding table
from local files / Hugging Face folders, the vocabulary subset, the hash."""
import hashlib
import json

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import save_file

from vistok.utils.llm_embedding import (
    read_llm_embedding,
    select_llm_rows,
    table_sha256,
)
from vistok.utils.weights import MissingWeightsError

KEY = 'model.embed_tokens.weight'
CONFIG_KEY = 'model.quantizer.external_codebook_path'


def write_two_shard_folder(folder, table):
    """A Hugging Face folder: the embedding in shard 1, the rest in shard 2,
    whose bytes are then corrupted."""
    folder.mkdir()
    shard1, shard2 = ('model-00001-of-00002.safetensors',
                      'model-00002-of-00002.safetensors')
    save_file({KEY: table, 'model.norm.weight': torch.ones(table.shape[1])},
              str(folder / shard1))
    save_file({'model.layers.0.mlp.up_proj.weight': torch.randn(4, 3),
               'lm_head.weight': torch.randn_like(table)},
              str(folder / shard2))
    weight_map = {KEY: shard1, 'model.norm.weight': shard1,
                  'model.layers.0.mlp.up_proj.weight': shard2,
                  'lm_head.weight': shard2}
    (folder / 'model.safetensors.index.json').write_text(json.dumps(
        dict(metadata=dict(total_size=0), weight_map=weight_map)))
    (folder / shard2).write_bytes(b'\xff' * 64)  # unreadable from now on
    return folder / shard2


def test_sharded_folder_reads_only_the_shard_holding_the_key(tmp_path):
    table = torch.randn(10, 6).half()
    corrupt = write_two_shard_folder(tmp_path / 'llm', table)
    read = read_llm_embedding(str(tmp_path / 'llm'))
    assert read.dtype == torch.float32 and read.device.type == 'cpu'
    assert torch.equal(read, table.float())
    # The other shard really is unreadable: opening it would have failed.
    with pytest.raises(ValueError, match='cannot read the safetensors'):
        read_llm_embedding(str(corrupt), 'lm_head.weight')
    with pytest.raises(ValueError, match='model-00002-of-00002'):
        read_llm_embedding(str(tmp_path / 'llm'), 'lm_head.weight')


def test_single_file_layouts_give_the_same_table(tmp_path):
    table = torch.randn(12, 8)
    other = {'lm_head.weight': torch.randn(12, 8),
             'model.norm.weight': torch.ones(8)}
    save_file({KEY: table, **other}, str(tmp_path / 'llm.safetensors'))
    (tmp_path / 'hf').mkdir()
    save_file({KEY: table, **other}, str(tmp_path / 'hf/model.safetensors'))
    torch.save({KEY: table, **other}, tmp_path / 'llm.pth')
    torch.save({'state_dict': {KEY: table, **other}}, tmp_path / 'wrap.bin')
    torch.save(table, tmp_path / 'bare.pt')  # the official llmcodebook file
    torch.save({'tok.weight': table.clone()}, tmp_path / 'custom.pth')
    for path, key in (('llm.safetensors', KEY), ('hf', KEY), ('llm.pth', KEY),
                      ('wrap.bin', KEY), ('bare.pt', KEY),
                      ('custom.pth', 'tok.weight')):
        read = read_llm_embedding(str(tmp_path / path), key)
        assert read.dtype == torch.float32, path
        assert torch.equal(read, table), path


def test_real_transformers_folder(tmp_path):
    """A folder written by transformers' save_pretrained (sharded): the
    table equals the model's input embeddings; every other shard is
    corrupted first."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=48, hidden_size=16, intermediate_size=32,
        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(tmp_path, max_shard_size='4KB')
    weight_map = json.loads(
        (tmp_path / 'model.safetensors.index.json').read_text())['weight_map']
    shards = set(weight_map.values())
    assert len(shards) > 1
    for shard in shards - {weight_map[KEY]}:
        (tmp_path / shard).write_bytes(b'\0' * 16)
    read = read_llm_embedding(str(tmp_path))
    assert torch.equal(read, model.get_input_embeddings().weight.detach())


def hand_made_table():
    """Rows of chosen L2 norms (exact in fp32). L1 norms order rows 3 and 6
    the other way (6 vs 7), and row 8 is negative."""
    rows = [[0.3, 0.4],    # 0: 0.5, below min_norm
            [1.5, 2.0],    # 1: 2.5
            [1.0, 0.0],    # 2: 1.0, exactly min_norm: eligible
            [6.0, 0.0],    # 3: 6.0
            [0.0, 2.5],    # 4: 2.5, ties row 1
            [0.99, 0.0],   # 5: 0.99, below min_norm
            [3.0, 4.0],    # 6: 5.0
            [0.75, 1.0],   # 7: 1.25
            [-2.0, 0.0]]   # 8: 2.0
    return torch.tensor(rows)
# Eligible by (norm, id): 2 (1.0), 7 (1.25), 8 (2.0), 1 (2.5), 4 (2.5),
# 6 (5.0), 3 (6.0).


@pytest.mark.parametrize('num_codes, min_norm, expected', [
    (1, 1.0, [2]),
    (4, 1.0, [1, 2, 7, 8]),            # the tie at 2.5: row 1 beats row 4
    (5, 1.0, [1, 2, 4, 7, 8]),
    (6, 1.0, [1, 2, 4, 6, 7, 8]),      # an L1 norm would take 3, not 6
    (7, 1.0, [1, 2, 3, 4, 6, 7, 8]),
    (2, 2.0, [1, 8]),
    (None, 1.0, list(range(9))),       # the full table: no norm filter
    (9, 1.0, list(range(9))),          # num_codes == V is the full table
])
def test_subset_rule_on_hand_made_table(num_codes, min_norm, expected):
    ids = select_llm_rows(hand_made_table(), num_codes, min_norm)
    assert ids.dtype == torch.long
    assert ids.tolist() == expected


def test_subset_rule_matches_brute_force_with_ties():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(40, 5, generator=gen) * 0.6
    # Permuted copies of rows: many exact ties in norm between far ids.
    table = torch.cat([base, base[:, torch.randperm(5, generator=gen)]])
    norms = [float(np.linalg.norm(row.double().numpy())) for row in table]
    for num_codes in (1, 7, 20):
        eligible = sorted((n, i) for i, n in enumerate(norms) if n >= 1.0)
        expected = sorted(i for _, i in eligible[:num_codes])
        assert select_llm_rows(table, num_codes).tolist() == expected


def test_subset_errors_name_the_numbers_and_config_key():
    table = hand_made_table()
    with pytest.raises(ValueError) as err:
        select_llm_rows(table, 8, config_key='model.quantizer.num_codes')
    message = str(err.value)
    assert '`model.quantizer.num_codes` = 8' in message
    assert 'only 7 of the 9 rows' in message
    for bad in (0, 10, 2.5):
        with pytest.raises(ValueError, match='external_num_codes.*got'):
            select_llm_rows(table, bad)
    with pytest.raises(ValueError, match=r'2-D.*\(9,\)'):
        select_llm_rows(table.norm(dim=1), 3)
    table[5, 1] = float('nan')
    with pytest.raises(ValueError, match=r'1 rows with non-finite.*\[5\]'):
        select_llm_rows(table, 3)


def test_missing_file_or_folder_names_path_and_config_key(tmp_path):
    missing = str(tmp_path / 'vicuna-7b')
    with pytest.raises(MissingWeightsError) as err:
        read_llm_embedding(missing, config_key=CONFIG_KEY)
    assert isinstance(err.value, FileNotFoundError)
    for part in (missing, CONFIG_KEY, 'hf download lmsys/vicuna-7b-v1.5'):
        assert part in str(err.value)
    (tmp_path / 'empty').mkdir()
    with pytest.raises(MissingWeightsError,
                       match='model.safetensors.index.json'):
        read_llm_embedding(str(tmp_path / 'empty'), config_key=CONFIG_KEY)
    # An index naming a shard that was not downloaded.
    write_two_shard_folder(tmp_path / 'llm', torch.randn(4, 3))
    (tmp_path / 'llm/model-00001-of-00002.safetensors').unlink()
    with pytest.raises(MissingWeightsError) as err:
        read_llm_embedding(str(tmp_path / 'llm'), config_key=CONFIG_KEY)
    assert 'model-00001-of-00002.safetensors' in str(err.value)
    assert CONFIG_KEY in str(err.value)


def test_missing_key_names_key_file_and_similar_keys(tmp_path):
    state = {'model.model.embed_tokens.weight': torch.randn(5, 3),
             'model.layers.0.mlp.up_proj.weight': torch.randn(2, 3)}
    save_file(state, str(tmp_path / 'llava.safetensors'))
    torch.save({'state_dict': state}, tmp_path / 'llava.pth')
    folder = tmp_path / 'hf'
    write_two_shard_folder(folder, torch.randn(4, 3))
    cases = [(tmp_path / 'llava.safetensors', KEY, 'llava.safetensors',
              'model.model.embed_tokens.weight'),
             (tmp_path / 'llava.pth', KEY, 'llava.pth',
              'state_dict.model.model.embed_tokens.weight'),
             (folder, 'model.embed_tokens.weights',
              'model.safetensors.index.json', KEY)]
    for path, key, file_name, similar in cases:
        with pytest.raises(KeyError) as err:
            read_llm_embedding(str(path), key)
        message = str(err.value)
        assert repr(key) in message and file_name in message
        assert repr(similar) in message
        assert 'mlp.up_proj' not in message


def test_non_2d_table_is_an_error(tmp_path):
    save_file({KEY: torch.randn(2, 3, 4)}, str(tmp_path / 'llm.safetensors'))
    with pytest.raises(ValueError, match=r'2-D.*\(2, 3, 4\)'):
        read_llm_embedding(str(tmp_path / 'llm.safetensors'),
                           config_key=CONFIG_KEY)


def test_table_hash(tmp_path):
    table = torch.randn(6, 4)
    digest = table_sha256(table)
    # The format: the shape, then fp32 little-endian C-order bytes.
    expected = hashlib.sha256(b'float32-le shape=6,4;' + np.asarray(
        table.numpy(), dtype='<f4').tobytes()).hexdigest()
    assert digest == expected
    save_file({KEY: table}, str(tmp_path / 'llm.safetensors'))
    torch.save(table.double(), tmp_path / 'llm.pt')
    assert table_sha256(read_llm_embedding(
        str(tmp_path / 'llm.safetensors'))) == digest
    assert table_sha256(read_llm_embedding(
        str(tmp_path / 'llm.pt'))) == digest
    changed = table.clone()
    changed[3, 2] = torch.nextafter(changed[3, 2], torch.tensor(np.inf))
    assert not torch.equal(changed, table)
    assert table_sha256(changed) != digest
    assert table_sha256(table.reshape(4, 6)) != digest  # same bytes
    square = torch.randn(5, 5)
    assert table_sha256(square.t()) != table_sha256(square)
    assert table_sha256(square.t()) == table_sha256(square.t().contiguous())
